/**
 * Shared pieces of the HTTP listener's integration tests: a recording origin on 127.0.0.1:0,
 * a bounded child-process runner for real clients (curl, wget, python3), and raw-socket helpers.
 */
import { newViaName } from '../../gateway/via.ts';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo, connect, createServer as createTcpServer, type Socket } from 'node:net';

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  rawHeaders: string[];
  body: Buffer;
  clientPort: number;
}

export interface Origin {
  port: number;
  server: Server;
  seen: SeenRequest[];
  /**
   * What each closed connection read and wrote, by its remote port (the gateway's upstream socket):
   * the bytes the destination received and sent, to check a tunnel's record against.
   */
  wire: Map<number, { read: number; written: number }>;
  close(): Promise<void>;
}

/** Deterministic body of n bytes (so a test knows exactly what crossed). */
export function pattern(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = 97 + (i % 26);
  return b;
}

/**
 * An origin that records every request and answers:
 *   /size/N     → N pattern bytes with Content-Length
 *   /chunked/N  → N pattern bytes chunked (two writes)
 *   /hop        → a response full of hop-by-hop fields
 *   anything else → `echo:<METHOD>:<body length>` with Content-Length
 */
export async function startOrigin(extra?: (req: IncomingMessage, res: ServerResponse, body: Buffer) => boolean): Promise<Origin> {
  const seen: SeenRequest[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body, clientPort: req.socket.remotePort ?? 0 });
      if (extra?.(req, res, body)) return;
      const url = req.url ?? '/';
      const size = /^\/size\/(\d+)/.exec(url);
      const chunked = /^\/chunked\/(\d+)/.exec(url);
      if (size) {
        const out = pattern(Number(size[1]));
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': out.length });
        res.end(out);
      } else if (chunked) {
        const out = pattern(Number(chunked[1]));
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const half = Math.floor(out.length / 2);
        res.write(out.subarray(0, half));
        res.end(out.subarray(half));
      } else if (url === '/hop') {
        res.writeHead(200, [
          'Content-Length', '2',
          'Connection', 'keep-alive, X-Hop-Resp',
          'X-Hop-Resp', 'secret',
          'Keep-Alive', 'timeout=5',
          'Proxy-Authenticate', 'Basic realm="origin"',
          'X-End-To-End', 'kept',
        ]);
        res.end('ok');
      } else {
        const out = Buffer.from(`echo:${req.method}:${body.length}`);
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': out.length });
        res.end(out);
      }
    });
  });
  const wire = new Map<number, { read: number; written: number }>();
  server.on('connection', (s: Socket) => {
    const remotePort = s.remotePort ?? 0;
    s.once('close', () => wire.set(remotePort, { read: s.bytesRead, written: s.bytesWritten }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    server,
    seen,
    wire,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * The bytes the origin read and wrote on the connection that carried `url`, once it has closed
 * (bounded wait): what a tunnel's record must count as bytesOut and bytesIn.
 */
export async function wireOf(origin: Origin, url: string, timeoutMs = 5000): Promise<{ read: number; written: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const seen = origin.seen.find((s) => s.url === url);
    const counts = seen ? origin.wire.get(seen.clientPort) : undefined;
    if (counts) return counts;
    if (Date.now() > deadline) throw new Error(`timed out waiting for the origin's connection that carried ${url} to close`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface RunResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Run a real client with a hard timeout; never rejects (the test asserts on code and output). */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: Buffer; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { encoding: 'buffer', env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 15_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err && typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : err ? null : 0;
        resolve({ code, stdout, stderr: stderr.toString('utf8') });
      },
    );
    if (opts.input) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Open a raw TCP connection. */
export async function rawConnect(port: number, host = '127.0.0.1'): Promise<Socket> {
  const s = connect({ port, host });
  await once(s, 'connect');
  return s;
}

/** Send bytes on a new connection and collect everything until the server closes it (bounded). */
export async function rawExchange(port: number, bytes: Buffer | string, timeoutMs = 10_000): Promise<{ response: string; isClosed: boolean }> {
  const s = await rawConnect(port);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('error', () => undefined);
  s.write(bytes);
  const timer = setTimeout(() => s.destroy(), timeoutMs);
  await once(s, 'close');
  clearTimeout(timer);
  return { response: Buffer.concat(chunks).toString('latin1'), isClosed: true };
}

/**
 * Send `parts` on one new connection, 30 ms apart; then `after` at the first byte of the answer
 * (`atFirstByte`) or 50 ms after the last part (nothing when it is empty, nor once the gateway has
 * closed), and a FIN when `fin`. Collects everything until the gateway closes the connection
 * (`guardMs` at most).
 */
export async function pipelinedExchange(port: number, parts: readonly string[], after: string, opts: { atFirstByte: boolean; fin?: boolean; guardMs: number }): Promise<Buffer> {
  const s = await rawConnect(port);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  let onFirst: () => void = () => undefined;
  const first = new Promise<void>((r) => (onFirst = r));
  s.on('data', (c: Buffer) => {
    chunks.push(c);
    onFirst();
  });
  const closed = once(s, 'close');
  for (const [i, p] of parts.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 30));
    s.write(p);
  }
  if (opts.atFirstByte) await first;
  else if (after !== '') await new Promise((r) => setTimeout(r, 50));
  if (after !== '' && !s.destroyed) s.write(after);
  if (opts.fin) s.end();
  const guard = setTimeout(() => s.destroy(), opts.guardMs);
  await closed;
  clearTimeout(guard);
  return Buffer.concat(chunks);
}

/** A raw TCP destination on loopback that records every connection and every byte it is sent. */
export interface RecordingDestination {
  readonly port: number;
  /** What it received, one entry per connection, in order. */
  readonly received: string[];
  close(): Promise<void>;
}

/**
 * Start a RecordingDestination; `onData(socket, soFar)` runs after each chunk (to answer, say).
 * It half-closes when its peer does.
 */
export async function startRecordingDestination(onData?: (s: Socket, soFar: string) => void): Promise<RecordingDestination> {
  const received: string[] = [];
  const sockets: Socket[] = [];
  const server = createTcpServer((s) => {
    sockets.push(s);
    const at = received.push('') - 1;
    s.on('error', () => undefined);
    s.on('data', (c: Buffer) => {
      received[at] += c.toString('latin1');
      onData?.(s, received[at] as string);
    });
    s.on('end', () => s.end());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    received,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Read from a socket until `marker` has been seen; resolves with everything read so far. */
export function readUntil(s: Socket, marker: string, timeoutMs = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => fail(new Error(`timed out waiting for ${JSON.stringify(marker)}; got ${JSON.stringify(Buffer.concat(chunks).toString('latin1').slice(0, 300))}`)), timeoutMs);
    const onData = (c: Buffer): void => {
      chunks.push(c);
      const all = Buffer.concat(chunks);
      if (all.includes(marker)) {
        cleanup();
        resolve(all);
      }
    };
    const onClose = (): void => fail(new Error(`closed before ${JSON.stringify(marker)}; got ${JSON.stringify(Buffer.concat(chunks).toString('latin1').slice(0, 300))}`));
    const cleanup = (): void => {
      clearTimeout(timer);
      s.removeListener('data', onData);
      s.removeListener('close', onClose);
    };
    function fail(err: Error): void {
      cleanup();
      reject(err);
    }
    s.on('data', onData);
    s.on('close', onClose);
  });
}

/** Parse the JSON body of a raw HTTP response. */
export function jsonBody(raw: string): Record<string, unknown> {
  const i = raw.indexOf('\r\n\r\n');
  return JSON.parse(raw.slice(i + 4)) as Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------
// A local gateway with only the HTTP listener, wired like main.ts does (until main.ts's own
// dependencies have all landed, the shared test/helpers/gateway.ts cannot load).

import type { DetectionHooks, GatewayContext, Logger } from '../../gateway/context.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { FlowTable } from '../../gateway/flow/flow-table.ts';
import { createIdentityResolver } from '../../gateway/identity/identity-resolver.ts';
import { closeOriginPools, createHttpProxy, type HttpProxyOptions } from '../../gateway/listeners/http-proxy.ts';
import { PolicyStore } from '../../gateway/policy-store.ts';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { UdpRelayAddresses } from '../../gateway/udp-relay-addresses.ts';
import type { Config } from '../../policy/config.ts';
import { type DeepPartial, testConfig } from '../helpers/gateway.ts';

export type { DeepPartial };

export interface LocalGateway {
  httpPort: number;
  flows: FlowTable;
  policy: PolicyStore;
  closed: FlowRecord[];
  logs: Array<{ level: string; msg?: string } & Record<string, unknown>>;
  waitForClosed(pred?: (r: FlowRecord) => boolean, timeoutMs?: number): Promise<FlowRecord>;
  stop(): Promise<void>;
}

/** Same base config as test/helpers/gateway.ts (the one definition): loopback allowed, a catch-all role, no flow log. */
export function localTestConfig(overrides: DeepPartial<Config> = {}): Config {
  return testConfig(overrides);
}

/** Start the HTTP listener on 127.0.0.1:0 with a real FlowTable, policy and identity resolver. */
export async function startLocalGateway(
  overrides: DeepPartial<Config> = {},
  opts: HttpProxyOptions & { detection?: DetectionHooks | null } = {},
): Promise<LocalGateway> {
  const config = localTestConfig(overrides);
  const logs: LocalGateway['logs'] = [];
  const log: Logger = {
    info: () => {},
    warn: (obj, msg) => logs.push({ level: 'warn', msg, ...obj }),
    error: (obj, msg) => logs.push({ level: 'error', msg, ...obj }),
  };
  const closed: FlowRecord[] = [];
  const flows = new FlowTable({ sink: { write: () => {}, flush: async () => {} }, keepClosed: 10_000, interimSec: 60 });
  const policy = new PolicyStore(config, { author: 'test', source: 'startup' });
  const selfAddresses = new Set<string>();
  const ctx: GatewayContext = {
    flows,
    policy,
    identity: createIdentityResolver(),
    attributor: null,
    resolver: createDnsResolver({ timeoutMs: 2000 }),
    detection: opts.detection ?? null,
    log,
    selfAddresses,
    via: newViaName(),
    udpRelays: new UdpRelayAddresses(),
    isDraining: () => false,
  };
  flows.on('close', (flow: { toRecord(now: number): FlowRecord; endedAt: number | null }) => closed.push(flow.toRecord(flow.endedAt ?? Date.now())));
  const server = createHttpProxy(ctx, opts);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const httpPort = (server.address() as { port: number }).port;
  selfAddresses.add(`127.0.0.1:${httpPort}`);
  const waitForClosed = async (pred: (r: FlowRecord) => boolean = () => true, timeoutMs = 10_000): Promise<FlowRecord> => {
    const found = closed.find(pred);
    if (found) return found;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        await once(flows, 'close', { signal: ac.signal });
        const hit = closed.find(pred);
        if (hit) return hit;
      }
    } catch {
      throw new Error(`no closed flow matched within ${timeoutMs} ms; closed: ${JSON.stringify(closed.map((r) => [r.protocol, r.destination, r.closeReason, r.bytesOut, r.bytesIn]))}`);
    } finally {
      clearTimeout(timer);
    }
  };
  return {
    httpPort,
    flows,
    policy,
    closed,
    logs,
    waitForClosed,
    stop: async () => {
      flows.stop();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await closeOriginPools(server, 0);
    },
  };
}
