/**
 * Plumbing for the live detection tests (test/integration/detection-*.test.ts): loopback origins
 * (sink, echo, refusing ports), a raw CONNECT client from a chosen source address (connected first,
 * from a port the kernel picked, so an agent report can name the client before its request), agent
 * reports through the real admin route, and a bounded wait for alerts.
 */
import { once } from 'node:events';
import { type AddressInfo, type Server, type Socket, connect, createServer } from 'node:net';
import type { AlertStore } from '../../gateway/alerts/alert-store.ts';
import type { FlowTable } from '../../gateway/flow/flow-table.ts';
import type { Alert } from '../../policy/detectors/types.ts';

export const MiB = 1024 * 1024;
/**
 * The local attributor's wait (LocalAttributor timeoutMs) in tests whose assertions need the process
 * named: longer than any test may run (vitest's testTimeout is 30 s), so admission always waits for
 * the lookup's own answer however slowly a loaded machine scans /proc, and a lookup that never ends
 * fails the test by its timeout, not by a missing name. Not a duration under test (the scan takes
 * milliseconds when the machine is idle). A guard shorter than that is one a loaded machine can
 * outrun: 2 s let a renamed curl through unattributed (200 instead of 403) with a dozen test files
 * running at once, 4 s a download recorded without its curl.
 */
export const ATTRIBUTION_GUARD_MS = 120_000;

export const AGENT_TOKEN = 'detection-agent-token-0123456789';

/** identity.agents entry for the tests' agent: may speak for every loopback source. */
export const testAgent = { name: 'det-agent', token: AGENT_TOKEN, sources: ['127.0.0.0/8'] };

export interface TcpOrigin {
  server: Server;
  host: string;
  port: number;
  /** Every accepted connection, in order. */
  conns: Socket[];
  close(): Promise<void>;
}

/** A TCP server on `host`:0 calling `onConn` per connection; close() destroys what it accepted. */
export async function tcpOrigin(host: string, onConn: (s: Socket) => void = () => undefined): Promise<TcpOrigin> {
  const conns: Socket[] = [];
  const server = createServer((s) => {
    conns.push(s);
    s.on('error', () => undefined);
    onConn(s);
  });
  server.listen(0, host);
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    host,
    port,
    conns,
    close: async () => {
      for (const s of conns) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** An origin that echoes every byte back (a symmetric relay peer). */
export function echoOrigin(host: string): Promise<TcpOrigin> {
  return tcpOrigin(host, (s) => s.pipe(s));
}

/** `n` distinct ports on `host` that refuse connections: bound on port 0, then closed. */
export async function refusingPorts(host: string, n: number): Promise<number[]> {
  const servers: Server[] = [];
  for (let i = 0; i < n; i++) {
    const s = createServer();
    s.listen(0, host);
    await once(s, 'listening');
    servers.push(s);
  }
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

export interface ConnectAnswer {
  status: number;
  headers: Record<string, string>;
  /** The refusal body (empty on 200). */
  body: string;
  /** The tunnel socket on 200 (destroyed otherwise). */
  socket: Socket;
}

/**
 * A TCP connection to the proxy from `localAddress`, connected and nothing sent yet, from a source
 * port the kernel picked when it connected (`socket.localPort`): for a client an agent report names
 * in advance (connectsReportedAhead). The gateway opens a flow at a request's head,
 * not when it accepts, so such a report still arrives before the flow is judged (its answer says
 * pending). Never a port taken first (bound on port 0 and closed) and bound again later: the kernel
 * picks a port for bind at random among the free ones of ip_local_port_range, so a port taken and
 * closed can be taken again, and two sockets bound to one address and port (libuv sets SO_REUSEADDR
 * on a bound client) are one 4-tuple to the same gateway: the second connect fails EADDRNOTAVAIL
 * (seen in CI). A port picked at connect is the connection's until it closes.
 */
async function connectFrom(proxy: { host: string; port: number }, localAddress: string, timeoutMs = 5000): Promise<Socket> {
  return connected(proxy, { localAddress }, timeoutMs);
}

async function connected(proxy: { host: string; port: number }, from: { localAddress?: string; localPort?: number }, timeoutMs: number): Promise<Socket> {
  const socket = connect({ host: proxy.host, port: proxy.port, ...from });
  socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`connect to ${proxy.host}:${proxy.port}: not connected in ${timeoutMs} ms`)));
  await once(socket, 'connect');
  socket.setTimeout(0);
  return socket;
}

/**
 * `CONNECT target` to the HTTP proxy on a raw socket, optionally from a chosen source address (and
 * port: only where the test owns the port range, test/helpers/port-shortage-child.ts; for a port an
 * agent report names in advance, connectsReportedAhead). Resolves with the status line and
 * headers; on 200 the socket is the tunnel.
 */
export async function httpConnect(
  proxy: { host: string; port: number },
  target: string,
  from: { localAddress?: string; localPort?: number } = {},
  timeoutMs = 5000,
): Promise<ConnectAnswer> {
  return sendConnect(await connected(proxy, from, timeoutMs), target, timeoutMs);
}

/** `CONNECT target` on a socket connected to the HTTP proxy; answers as httpConnect does. */
async function sendConnect(socket: Socket, target: string, timeoutMs = 5000): Promise<ConnectAnswer> {
  socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`CONNECT ${target}: no answer in ${timeoutMs} ms`)));
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  let buf = Buffer.alloc(0);
  let headEnd = -1;
  while (headEnd < 0) {
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    buf = Buffer.concat([buf, chunk]);
    headEnd = buf.indexOf('\r\n\r\n');
    if (buf.length > 65_536) throw new Error('CONNECT answer head too large');
  }
  socket.pause();
  const lines = buf.subarray(0, headEnd).toString('latin1').split('\r\n');
  const status = Number(lines[0]?.split(' ')[1]);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  let rest = buf.subarray(headEnd + 4);
  socket.setTimeout(0);
  if (status === 200) {
    if (rest.length > 0) socket.unshift(rest);
    return { status, headers, body: '', socket };
  }
  const want = Number(headers['content-length'] ?? 0);
  socket.resume();
  while (rest.length < want && !socket.readableEnded && !socket.destroyed) {
    const got = await Promise.race([
      once(socket, 'data').then(([c]) => c as Buffer),
      once(socket, 'close').then(() => null),
    ]);
    if (!got) break;
    rest = Buffer.concat([rest, got]);
  }
  socket.destroy();
  return { status, headers, body: rest.toString('utf8'), socket };
}

/** Write `data` to a tunnel and read exactly as many bytes back (an echo round trip). */
export async function echoRoundTrip(socket: Socket, data: Buffer, timeoutMs = 5000): Promise<void> {
  let got = 0;
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`echo: ${got}/${data.length} bytes back in ${timeoutMs} ms`)), timeoutMs);
    const onData = (c: Buffer): void => {
      got += c.length;
      if (got >= data.length) {
        clearTimeout(timer);
        socket.off('data', onData);
        resolve();
      }
    };
    socket.on('data', onData);
    socket.once('close', () => {
      clearTimeout(timer);
      if (got < data.length) reject(new Error(`echo: tunnel closed after ${got}/${data.length} bytes`));
    });
  });
  socket.resume();
  socket.write(data);
  await done;
}

/** The first alert (already stored or arriving within `timeoutMs`) that matches `pred`. */
export async function waitForAlert(alerts: AlertStore<Alert>, pred: (a: Alert) => boolean, timeoutMs = 5000): Promise<Alert> {
  const have = alerts.list({ limit: 100_000 }).find(pred);
  if (have) return have;
  return new Promise<Alert>((resolve, reject) => {
    const timer = setTimeout(() => {
      unsubscribe();
      const seen = alerts.list({ limit: 100_000 }).map((a) => `${a.detector}/${a.action}`);
      reject(new Error(`no matching alert within ${timeoutMs} ms; alerts: ${JSON.stringify(seen)}`));
    }, timeoutMs);
    const unsubscribe = alerts.subscribe((ev) => {
      if (!pred(ev.alert)) return;
      clearTimeout(timer);
      unsubscribe();
      resolve(ev.alert);
    });
  });
}

export interface ProcessReport {
  /** Default 'tcp'. */
  proto?: 'tcp' | 'udp';
  localIp: string;
  localPort: number;
  remoteIp: string;
  remotePort: number;
  pid: number;
  name: string;
  exe?: string | null;
  cmdline?: string | null;
  user?: string | null;
  uid?: number | null;
  loginuid?: number | null;
  ppid?: number | null;
  parentName?: string | null;
}

/** POST /v1/agents/reports as the test agent; returns the parsed answer (throws on non-200). */
export async function reportProcesses(
  adminUrl: string,
  host: string,
  reports: ProcessReport[],
): Promise<{ accepted: number; attributed: number; pending: number; shed: number }> {
  const body = {
    host,
    reports: reports.map((r) => ({
      proto: 'tcp',
      exe: null,
      cmdline: null,
      user: null,
      uid: null,
      loginuid: null,
      ppid: null,
      parentName: null,
      parentExe: null,
      startedAt: null,
      ...r,
    })),
  };
  const res = await fetch(`${adminUrl}/v1/agents/reports`, {
    method: 'POST',
    headers: { authorization: `Bearer ${AGENT_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`agent report: ${res.status} ${text}`);
  return JSON.parse(text) as { accepted: number; attributed: number; pending: number; shed: number };
}

/** A client's CONNECT and the process an agent report names for it (its socket fields filled in). */
export interface ReportedConnect {
  target: string;
  process: Omit<ProcessReport, 'proto' | 'localIp' | 'localPort' | 'remoteIp' | 'remotePort'>;
}

/**
 * CONNECTs from `localAddress` whose processes an agent names before the gateway has their requests,
 * as an agent that saw the sockets first does: every client connects (connectFrom: a port the
 * kernel picked, held from then on), one report (host `host`) names them all, then each sends its
 * CONNECT, in order. Resolves with the report's answer (the flows are not open yet: pending) and the
 * answers, each with its client port (`localPort`, also the record's client.port).
 */
export async function connectsReportedAhead(
  g: { httpHost: string; httpPort: number; adminUrl: string },
  localAddress: string,
  host: string,
  clients: readonly ReportedConnect[],
): Promise<{ report: Awaited<ReturnType<typeof reportProcesses>>; answers: Array<ConnectAnswer & { localPort: number }> }> {
  const proxy = { host: g.httpHost, port: g.httpPort };
  const sockets: Socket[] = [];
  try {
    for (let i = 0; i < clients.length; i++) {
      const s = await connectFrom(proxy, localAddress);
      s.on('error', () => undefined);
      sockets.push(s);
    }
    const report = await reportProcesses(
      g.adminUrl,
      host,
      clients.map((c, i) => ({ ...c.process, localIp: localAddress, localPort: sockets[i]!.localPort as number, remoteIp: g.httpHost, remotePort: g.httpPort })),
    );
    const answers: Array<ConnectAnswer & { localPort: number }> = [];
    for (const [i, c] of clients.entries()) {
      const s = sockets[i]!;
      const localPort = s.localPort as number;
      answers.push({ ...(await sendConnect(s, c.target)), localPort });
    }
    return { report, answers };
  } catch (err) {
    for (const s of sockets) s.destroy();
    throw err;
  }
}

/** Resolves when `socket` has closed (or at once if it already has). */
export function closedOf(socket: Socket): Promise<void> {
  if (socket.destroyed && socket.closed) return Promise.resolve();
  return new Promise((r) => socket.once('close', () => r()));
}

/** Resolves after `n` more flow-table sweeps (the detectors' pass), bounded by `timeoutMs`. */
export function waitForSweeps(flows: FlowTable, n: number, timeoutMs = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    let left = n;
    const onSweep = (): void => {
      if (--left > 0) return;
      clearTimeout(timer);
      flows.off('sweep', onSweep);
      resolve();
    };
    const timer = setTimeout(() => {
      flows.off('sweep', onSweep);
      reject(new Error(`fewer than ${n} sweeps in ${timeoutMs} ms`));
    }, timeoutMs);
    flows.on('sweep', onSweep);
  });
}
