/**
 * /metrics and the flow log tell the same story: a mix of flows and refusals through the real
 * listeners (HTTP absolute-URI on the fast path and through node:http, CONNECT, SOCKS5 CONNECT,
 * SOCKS5 UDP ASSOCIATE and a refused later destination, auth failures, the per-identity limit,
 * dns-failed, a refused dial, an admin kill, a name whose lookup outlasts a sweep), in enforce and
 * in monitor mode; once every flow has ended, the verdict/reason counts, the closeReason counts and
 * the byte counters of /metrics equal what the records written say, and no flow is counted live.
 */
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { hashPassword } from '../../gateway/identity/password-hash.ts';
import { CLOSE_REASON_LABELS, closedLabel, REASON_LABELS } from '../../gateway/stats.ts';
import type { Mode } from '../../policy/types.ts';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, heldResolver, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { type Origin, rawConnect, rawExchange, readUntil, startOrigin } from './http-harness.ts';
import { readToEnd, startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

interface Setup {
  gw: TestGateway;
  origin: Origin;
  echo: UdpEcho;
  held: ReturnType<typeof heldResolver>;
  logPath: string;
}

/** A UDP port free on 127.0.0.1 below Linux's ephemeral range (no other test's port-0 socket takes it meanwhile). */
async function freeUdpPort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const s = createSocket('udp4');
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.bind(port, '127.0.0.1', () => resolve(true));
    });
    await new Promise<void>((r) => s.close(() => r()));
    if (ok) return port;
  }
  throw new Error('no free UDP port in 20000-29999');
}

async function setUp(mode: Mode): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), 'egw-metrics-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const origin = await startOrigin();
  cleanups.push(() => origin.close());
  const echo = await startUdpEcho('udp4');
  cleanups.push(() => echo.close());
  const held = heldResolver((h) => h === 'slow.example.test');
  cleanups.push(() => held.failAll());
  const logPath = join(dir, 'flows.jsonl');
  const bobHash = await hashPassword('bob-pw', { N: 1024, r: 8, p: 1 });
  // One relay port: a second ASSOCIATE while an association holds it is refused out-of-relay-ports.
  const relayPort = await freeUdpPort();
  const gw = await startTestGateway(
    {
      mode,
      roles: { any: { allow: [{ cidr: '127.0.0.1/32' }] } },
      identity: { users: [{ name: 'bob', passwordHash: bobHash, roles: ['any'] }] },
      limits: { maxFlowsPerIdentity: 3, udpRelayPorts: `${relayPort}-${relayPort}` },
      flowLog: { path: logPath },
      detection: { sampleIntervalMs: 50 },
    },
    { resolver: held.resolver },
  );
  cleanups.push(() => gw.stop());
  return { gw, origin, echo, held, logPath };
}

/** A connection from another loopback address: its own per-identity limit key. */
async function connectFrom(port: number, localAddress: string): Promise<Socket> {
  const s = connect({ port, host: '127.0.0.1', localAddress });
  s.on('error', () => undefined);
  await once(s, 'connect');
  return s;
}

async function connectTunnel(s: Socket, target: string): Promise<string> {
  s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  return (await readUntil(s, '\r\n\r\n')).toString('latin1');
}

/** Every kind of flow and refusal, each waited for until its flow has ended. */
async function driveTraffic({ gw, origin, echo, held }: Setup): Promise<void> {
  const o = origin.port;
  const ended = (pred: (r: FlowRecord) => boolean): Promise<FlowRecord> => gw.waitForClosed(pred);
  // HTTP absolute-URI, one-packet GET: the fast path.
  await rawExchange(gw.httpPort, `GET http://127.0.0.1:${o}/size/1000 HTTP/1.1\r\nHost: 127.0.0.1:${o}\r\nConnection: close\r\n\r\n`);
  // A POST whose body comes in its own packet: node:http.
  {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    s.write(`POST http://127.0.0.1:${o}/post HTTP/1.1\r\nHost: 127.0.0.1:${o}\r\nContent-Length: 300\r\nConnection: close\r\n\r\n`);
    await new Promise((r) => setTimeout(r, 20));
    s.write(Buffer.alloc(300, 0x61));
    await readToEnd(s);
  }
  // Refused by policy, by deny-range; wrong credentials (407); a name that does not resolve.
  await rawExchange(gw.httpPort, `GET http://127.0.0.2:${o}/ HTTP/1.1\r\nHost: 127.0.0.2:${o}\r\nConnection: close\r\n\r\n`);
  await rawExchange(gw.httpPort, 'GET http://169.254.169.254/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n');
  const badBasic = Buffer.from('bob:wrong').toString('base64');
  await rawExchange(gw.httpPort, `GET http://127.0.0.1:${o}/ HTTP/1.1\r\nHost: 127.0.0.1:${o}\r\nProxy-Authorization: Basic ${badBasic}\r\nConnection: close\r\n\r\n`);
  await rawExchange(gw.httpPort, `CONNECT nx.example.test:${o} HTTP/1.1\r\nHost: nx.example.test:${o}\r\n\r\n`);
  // CONNECT carrying a request; CONNECT to a closed port.
  {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    await connectTunnel(s, `127.0.0.1:${o}`);
    s.write('GET /size/500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await readToEnd(s);
  }
  await rawExchange(gw.httpPort, 'CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n');
  // SOCKS5 CONNECT, and a SOCKS5 login refused.
  {
    const { socket } = await SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: o } });
    socket.write('GET /size/700 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await readToEnd(socket);
  }
  await SocksClient.createConnection({
    proxy: { host: gw.socksHost, port: gw.socksPort, type: 5, userId: 'bob', password: 'wrong' },
    command: 'connect',
    destination: { host: '127.0.0.1', port: o },
  }).catch(() => undefined);
  await ended((r) => r.protocol === 'socks5' && r.closeReason === 'auth-required');
  // A UDP association: a destination admitted and a sweep later one the policy refuses (enforce:
  // its own record; monitor: relayed, the association becomes would-block); meanwhile another
  // ASSOCIATE finds the relay range's one port taken.
  {
    const c = await udpSocket(cleanups);
    const a = await associate(gw, c, cleanups);
    const refused = await associate(gw, await udpSocket(cleanups), cleanups).then(
      () => 'associated',
      (err: Error) => err.message,
    );
    expect(refused).toMatch(/General Failure|0x01|failure/i);
    await ended((r) => r.closeReason === 'out-of-relay-ports');
    const reply = nextReply(c);
    await sendTo(c, udpFrame('127.0.0.1', echo.port, Buffer.alloc(100, 1)), a.relay);
    await reply;
    await once(gw.flows, 'sweep');
    await once(gw.flows, 'sweep');
    const first = gw.closed.length;
    await sendTo(c, udpFrame('127.0.0.2', echo.port, Buffer.alloc(50, 1)), a.relay);
    await until('the second destination judged', () => gw.closed.length > first || gw.flows.list({ state: 'active' }).some((f) => f.protocol === 'socks5-udp' && f.verdict === 'would-block'));
    a.control.destroy();
    await ended((r) => r.protocol === 'socks5-udp' && r.destination.ip === '127.0.0.1');
  }
  // A name looked up for longer than a sweep, then an address the policy refuses.
  {
    const p = rawExchange(gw.httpPort, `CONNECT slow.example.test:${o} HTTP/1.1\r\nHost: slow.example.test:${o}\r\n\r\n`);
    await until('the lookup is held', () => held.waiting.length > 0);
    await once(gw.flows, 'sweep');
    await once(gw.flows, 'sweep');
    held.waiting.shift()?.answer('127.0.0.2');
    await p;
  }
  // Over the per-identity limit (3 flows) from a client address of its own: the 4th gets 429.
  {
    const tunnels: Socket[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await connectFrom(gw.httpPort, '127.0.0.5');
      tunnels.push(s);
      expect(await connectTunnel(s, `127.0.0.1:${o}`)).toMatch(/^HTTP\/1\.1 200/);
    }
    const over = await connectFrom(gw.httpPort, '127.0.0.5');
    expect(await connectTunnel(over, `127.0.0.1:${o}`)).toMatch(/^HTTP\/1\.1 429/);
    over.destroy();
    for (const s of tunnels) s.end();
    await Promise.all(tunnels.map((s) => readToEnd(s)));
  }
  // A tunnel killed from the admin API.
  {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    await connectTunnel(s, `127.0.0.1:${o}`);
    s.write('GET /size/200 HTTP/1.1\r\nHost: x\r\n\r\n');
    await readUntil(s, 'abcdefghij');
    const live = gw.flows.list({ state: 'active' }).find((f) => f.protocol === 'connect');
    const res = await fetch(`${gw.adminUrl}/v1/flows/${live?.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${gw.adminToken}` } });
    expect(res.status).toBeLessThan(300);
    await readToEnd(s);
  }
}

/** Every final record of the flow log, once the records of all flows the table closed are in it. */
async function finalRecords(s: Setup): Promise<FlowRecord[]> {
  await until('no flow live', () => s.gw.flows.activeCount === 0);
  const ids = s.gw.closed.map((r) => r.id);
  let recs: FlowRecord[] = [];
  await until('every closed flow recorded', () => {
    recs = parseWrittenRecords(readFileSync(s.logPath, 'utf8')).filter((r) => r.intermediate !== true);
    const written = new Set(recs.map((r) => r.id));
    return ids.every((id) => written.has(id));
  });
  return recs;
}

type Samples = Map<string, number>;

/** The samples of one metric, keyed by its labels' values in `labels`' order. */
function samples(text: string, name: string, labels: string[]): Samples {
  const out: Samples = new Map();
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m?.[1] !== name) continue;
    const values = new Map([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((kv) => [kv[1] as string, kv[2] as string]));
    const n = Number(m[3]);
    if (n !== 0) out.set(labels.map((l) => values.get(l)).join(' '), n);
  }
  return out;
}

function tally(recs: FlowRecord[], key: (r: FlowRecord) => string): Samples {
  const out: Samples = new Map();
  for (const r of recs) out.set(key(r), (out.get(key(r)) ?? 0) + 1);
  return out;
}

const sorted = (m: Samples): Array<[string, number]> => [...m].sort(([a], [b]) => a.localeCompare(b));

describe.each(['enforce', 'monitor'] as const)('/metrics and the flow records agree (%s mode)', (mode) => {
  it('counts per verdict and reason, per closeReason, and byte sums match the records; no flow left live', async () => {
    const s = await setUp(mode);
    await driveTraffic(s);
    const recs = await finalRecords(s);
    const text = (await adminGet(s.gw, '/metrics')).text;
    // The traffic did what it says (the refusals each left their record).
    const reasons = new Set(recs.map((r) => r.closeReason));
    for (const r of ['closed', 'auth-required', 'rate-limit', 'deny-range', 'connection-refused', 'admin', 'out-of-relay-ports']) expect(reasons).toContain(r);
    expect(recs.some((r) => r.protocol === 'socks5-udp')).toBe(true);
    expect(recs.some((r) => r.destination.host === 'slow.example.test')).toBe(true);
    // No detector re-judged a flow here: the record's verdict is its admission's.
    expect(recs.filter((r) => r.reason === 'detector' || r.reason === 'quarantine')).toEqual([]);

    expect(samples(text, 'gw_flows_active', [])).toEqual(new Map());
    expect(sorted(samples(text, 'gw_policy_decisions_total', ['verdict', 'reason']))).toEqual(
      sorted(tally(recs, (r) => `${r.verdict} ${closedLabel(r.reason, REASON_LABELS)}`)),
    );
    expect(sorted(samples(text, 'gw_flows_closed_total', ['protocol', 'close_reason']))).toEqual(
      sorted(tally(recs, (r) => `${r.protocol} ${closedLabel(r.closeReason, CLOSE_REASON_LABELS)}`)),
    );
    const sum = (k: 'bytesOut' | 'bytesIn'): number => recs.reduce((a, r) => a + r[k], 0);
    expect(sum('bytesOut')).toBeGreaterThan(0);
    expect(sum('bytesIn')).toBeGreaterThan(0);
    expect(samples(text, 'gw_flow_bytes_total', ['direction'])).toEqual(new Map([['out', sum('bytesOut')], ['in', sum('bytesIn')]]));
  });
});
