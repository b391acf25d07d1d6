/**
 * A name whose first address does not answer at all (its SYNs dropped: a blackholed route, a
 * firewalled host) and whose next address serves: the gateway dials the next address 250 ms later
 * while the first is still connecting (RFC 8305's staggered attempts), takes the first connection
 * made and closes the other attempts at once, on CONNECT, SOCKS5 (WebSocket upgrades share their
 * dial) and absolute-URI requests, GET (the fast path) and POST (node:http, its body intact); the
 * record names the address that answered. Before, the addresses were dialled in turn and the next
 * one only after the first failed: a first address that never answered cost the whole
 * `limits.connectTimeoutMs` (10 s by default) and then 504 `connect-timeout`, although the second
 * answered at once. A kill, or the client leaving, while several attempts connect destroys every one
 * of them. An absolute-URI request is only ever sent on a connection to an address its own
 * admission checked: the connection the staggered dial made to the second address is not pooled
 * under the first (a later request pinned to the first is never sent on it).
 *
 * The address that does not answer: a listener that never accepts, its accept queue filled from
 * FILLER, so Linux drops every further SYN. `serve` runs with its own /etc/resolv.conf naming a DNS
 * server on loopback (test/helpers/zone-dns.ts): the real OS resolver between them.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { rawConnect, run } from './http-harness.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.165';
/** Never accepts: a connection to it hangs in SYN_SENT. */
const HUNG = '127.0.0.166';
/** Serves. */
const OPEN = '127.0.0.167';
/** Never accepts either. */
const HUNG_TOO = '127.0.0.168';
/** The source of the connections that fill the hung listeners' accept queues. */
const FILLER = '127.0.0.169';
/** Serves, and counts the connections it gets. */
const SPARE = '127.0.0.170';
const TOKEN = 'dns-staggered-dial-token-0123456789';

const isAvailable = skipNotice(canUnshareMounts(), 'dns-staggered-dial', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns;
let gw: Served | null = null;
const origins: Server[] = [];
const hung: Array<{ py: ChildProcessWithoutNullStreams; fillers: Socket[] }> = [];
let port = 0;
let spareConnections = 0;
/** Each request an origin served: `<Host> <origin address>`. */
const served: string[] = [];

async function listen(host: string, onConnection?: () => void): Promise<void> {
  const s = createServer((req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    req.on('end', () => {
      served.push(`${req.headers.host} ${req.socket.localAddress}`);
      res.end(`served by ${req.socket.localAddress}${bytes > 0 ? ` (${bytes} bytes)` : ''}`);
    });
  });
  if (onConnection) s.on('connection', onConnection);
  s.listen(port, host);
  await once(s, 'listening');
  port = (s.address() as { port: number }).port;
  origins.push(s);
}

/** A listener on host:port that never accepts, its one-slot accept queue full: SYNs to it are dropped. */
async function listenHung(host: string): Promise<void> {
  const script = ['import socket,sys', 's=socket.socket()', `s.bind((${JSON.stringify(host)},${port}))`, 's.listen(0)', 'print("ready",flush=True)', 'sys.stdin.readline()'].join('\n');
  const py = spawn(existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3', ['-c', script]);
  let out = '';
  py.stdout.on('data', (c: Buffer) => {
    out += c.toString();
  });
  while (!out.includes('ready')) await once(py.stdout, 'data');
  const fillers: Socket[] = [];
  for (let i = 0; i < 3; i++) {
    const f = connect({ port, host, localAddress: FILLER });
    f.on('error', () => undefined);
    fillers.push(f);
  }
  await once(fillers[0] as Socket, 'connect');
  hung.push({ py, fillers });
}

function procAddress(ip: string): string {
  return ip
    .split('.')
    .map((b) => Number(b).toString(16).toUpperCase().padStart(2, '0'))
    .reverse()
    .join('');
}

/** The gateway's connections to host:port still connecting (SYN_SENT in /proc/net/tcp), the fillers' left out. */
function connecting(host: string): number {
  const rem = `${procAddress(host)}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const filler = `${procAddress(FILLER)}:`;
  let n = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[2] === rem && f[3] === '02' && !f[1]?.startsWith(filler)) n++;
  }
  return n;
}

async function until(what: string, pred: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-stagger-'));
  await listen(OPEN);
  await listen(SPARE, () => spareConnections++);
  await listenHung(HUNG);
  await listenHung(HUNG_TOO);
  dns = await startZoneDns(ZONE_DNS, {
    'slow.test': [HUNG, OPEN],
    'hung.test': [HUNG, HUNG_TOO],
    'fast.test': [OPEN, SPARE],
    'lone.test': [HUNG],
  });
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${dns.address}\noptions timeout:1 attempts:1\n`);
  // This gateway remembers no address that did not answer, so every flow to slow.test dials HUNG
  // first: the staggered dial itself is what these cases are about.
  gw = await spawnServe(policyFile('policy.yaml', 'flows.jsonl', 'resolver: { rememberUnansweredMs: 0 }'), { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN }, wrap: withResolvConf(join(dir, 'resolv.conf')) });
}, 30_000);

/** A policy file in `dir` for a gateway of these tests, its flow log `flows`, plus `extra` lines. */
function policyFile(name: string, flows: string, ...extra: string[]): string {
  const config = join(dir, name);
  writeFileSync(
    config,
    [
      'mode: enforce',
      `allowRanges: [${HUNG}/32, ${OPEN}/32, ${HUNG_TOO}/32, ${SPARE}/32]`,
      'roles: { any: { allow: [ { host: "*.test" } ] } }',
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      // Far beyond the clients' 10 s: an answer at all says the gateway did not wait for it.
      'limits: { connectTimeoutMs: 20000 }',
      `flowLog: { path: ${JSON.stringify(join(dir, flows))} }`,
      ...extra,
      '',
    ].join('\n'),
  );
  return config;
}

afterAll(async () => {
  await killIfRunning(gw?.child ?? null, 'SIGTERM');
  if (!isAvailable) return;
  await dns?.close();
  for (const s of origins) s.close();
  for (const h of hung) {
    for (const f of h.fillers) f.destroy();
    h.py.kill();
  }
  rmSync(dir, { recursive: true, force: true });
});

/** curl through the gateway, 10 s at most: [status (the CONNECT's with -p), body]. */
async function curl(args: string[]): Promise<[string, string]> {
  const r = await run('curl', ['-sS', '-m', '10', '-w', args.includes('-p') ? '\n%{http_connect}' : '\n%{http_code}', ...args]);
  const text = r.stdout.toString('utf8');
  const nl = text.lastIndexOf('\n');
  return [text.slice(nl + 1), text.slice(0, nl)];
}

async function socks(host: string, via: Served = gw as Served): Promise<string> {
  const [h, p] = via.socks.split(':');
  const { socket } = await SocksClient.createConnection({
    proxy: { host: h as string, port: Number(p), type: 5 },
    command: 'connect',
    destination: { host, port },
    timeout: 10_000,
  });
  socket.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  const chunks: Buffer[] = [];
  for await (const c of socket) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('latin1');
}

/** The flow records `match` picks, once there are at least `n` of them (the log is written in batches). */
async function records(match: (r: ReturnType<typeof parseRecords>[number]) => boolean, n: number, flows = 'flows.jsonl'): Promise<ReturnType<typeof parseRecords>> {
  const file = join(dir, flows);
  const read = (): ReturnType<typeof parseRecords> => (existsSync(file) ? parseRecords(readFileSync(file, 'utf8')).filter(match) : []);
  await until(`${n} flow records`, () => read().length >= n);
  return read();
}

describe('a name whose first address never answers', () => {
  it.runIf(isAvailable)('is served by its next address while the first is still connecting, and the unanswered attempt is closed', async () => {
    const proxy = `http://127.0.0.1:${(gw as Served).http.port}`;
    const url = `http://slow.test:${port}/`;
    expect(await curl(['-p', '-x', proxy, url]), 'CONNECT').toEqual(['200', `served by ${OPEN}`]);
    expect(connecting(HUNG), 'CONNECT: attempts to the hung address left connecting').toBe(0);
    expect(await socks('slow.test'), 'SOCKS5').toContain(`served by ${OPEN}`);
    expect(connecting(HUNG), 'SOCKS5: attempts to the hung address left connecting').toBe(0);

    const summary = (await records((r) => r.destination.host === 'slow.test', 2)).map((r) => `${r.protocol} ${r.destination.ip} ${r.closeReason}`);
    expect(summary.sort()).toEqual(['connect', 'socks5'].map((p) => `${p} ${OPEN} closed`));
  }, 60_000);

  it.runIf(isAvailable)('is served by its next address on absolute-URI GET and POST too, the body intact, and the unanswered attempt is closed', async () => {
    const proxy = `http://127.0.0.1:${(gw as Served).http.port}`;
    const url = `http://slow.test:${port}/`;
    const before = served.length;
    // A one-line GET: the fast path.
    expect(await curl(['-x', proxy, url]), 'GET').toEqual(['200', `served by ${OPEN}`]);
    expect(connecting(HUNG), 'GET: attempts to the hung address left connecting').toBe(0);
    // A body: node:http's path. 100 kB, more than the client socket and the request stream buffer
    // while the first address is still connecting; no Expect, so curl sends it at once.
    const body = join(dir, 'body.bin');
    writeFileSync(body, Buffer.alloc(100_000, 'a'));
    expect(await curl(['-x', proxy, '-H', 'Expect:', '--data-binary', `@${body}`, url]), 'POST').toEqual(['200', `served by ${OPEN} (100000 bytes)`]);
    expect(connecting(HUNG), 'POST: attempts to the hung address left connecting').toBe(0);
    expect(served.slice(before)).toEqual([`slow.test:${port} ${OPEN}`, `slow.test:${port} ${OPEN}`]);

    const summary = (await records((r) => r.destination.host === 'slow.test' && r.protocol === 'http', 2)).map((r) => `${r.destination.ip} ${r.closeReason} ${r.bytesOut}`);
    expect(summary.sort()).toEqual([`${OPEN} closed 0`, `${OPEN} closed 100000`]);
  }, 60_000);

  it.runIf(isAvailable)('leaves the connection made to the next address out of the first address\'s pool', async () => {
    const proxy = `http://127.0.0.1:${(gw as Served).http.port}`;
    // slow.test's request went to OPEN on a connection the staggered dial made; lone.test's only
    // address is HUNG: its request must wait on HUNG (and the client give up), never ride a
    // connection to OPEN the gateway keeps alive from slow.test.
    expect(await curl(['-x', proxy, `http://slow.test:${port}/`]), 'GET slow.test').toEqual(['200', `served by ${OPEN}`]);
    // The client gives up after 2 s with a reset (a FIN alone, curl's, is a half-close: the gateway
    // would wait finGraceMs, here connectTimeoutMs's 20 s, before it counts the client gone).
    const c = await rawConnect((gw as Served).http.port);
    c.on('error', () => undefined);
    const answer: Buffer[] = [];
    c.on('data', (d: Buffer) => answer.push(d));
    c.write(`GET http://lone.test:${port}/ HTTP/1.1\r\nHost: lone.test:${port}\r\n\r\n`);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    c.resetAndDestroy();
    expect(Buffer.concat(answer).toString('latin1'), 'lone.test answered').toBe('');
    expect(served.filter((s) => s.startsWith('lone.test:'))).toEqual([]);
    // The client gave up: its attempt is destroyed, and the record says so.
    await until('no attempt left connecting', () => connecting(HUNG) === 0);
    const lone = (await records((rec) => rec.destination.host === 'lone.test', 1)).map((rec) => `${rec.destination.ip} ${rec.closeReason}`);
    expect(lone).toEqual([`${HUNG} client-reset`]);
  }, 30_000);

  it.runIf(isAvailable)('does not dial the next address when the first answers', async () => {
    const proxy = `http://127.0.0.1:${(gw as Served).http.port}`;
    const before = spareConnections;
    expect(await curl(['-p', '-x', proxy, `http://fast.test:${port}/`]), 'CONNECT').toEqual(['200', `served by ${OPEN}`]);
    expect(await socks('fast.test'), 'SOCKS5').toContain(`served by ${OPEN}`);
    expect(await curl(['-x', proxy, `http://fast.test:${port}/`]), 'GET').toEqual(['200', `served by ${OPEN}`]);
    expect(await curl(['-x', proxy, '--data-binary', 'x=1', `http://fast.test:${port}/`]), 'POST').toEqual(['200', `served by ${OPEN} (3 bytes)`]);
    expect(spareConnections - before).toBe(0);
  }, 30_000);
});

describe('a flow killed while several of its addresses are connecting', () => {
  it.runIf(isAvailable)('has every attempt destroyed, and its client hears the kill', async () => {
    const admin = `http://${(gw as Served).admin}`;
    const s = await rawConnect((gw as Served).http.port);
    s.on('error', () => undefined);
    let reply = '';
    s.on('data', (c: Buffer) => {
      reply += c.toString('latin1');
    });
    s.write(`CONNECT hung.test:${port} HTTP/1.1\r\nHost: hung.test:${port}\r\n\r\n`);
    // Both addresses dialled: the second one attempt delay after the first, the first still connecting.
    await until('both addresses connecting', () => connecting(HUNG) === 1 && connecting(HUNG_TOO) === 1);
    const list = (await (await fetch(`${admin}/v1/flows`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { flows: Array<{ id: string; destination: { host: string } }> };
    const flow = list.flows.find((f) => f.destination.host === 'hung.test');
    expect(flow).toBeDefined();
    const del = await fetch(`${admin}/v1/flows/${flow?.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
    await del.arrayBuffer();
    expect(del.status).toBe(200);
    await until('the kill answered', () => reply.includes('\r\n\r\n'));
    expect(reply).toMatch(/^HTTP\/1\.1 403 /);
    await until('no attempt left connecting', () => connecting(HUNG) === 0 && connecting(HUNG_TOO) === 0);
    s.destroy();
    const killed = await records((r) => r.destination.host === 'hung.test', 1);
    expect(killed.map((r) => r.closeReason)).toEqual(['admin']);
  }, 30_000);

  it.runIf(isAvailable)('on an absolute-URI POST: has every attempt destroyed, and its client hears the kill', async () => {
    const admin = `http://${(gw as Served).admin}`;
    const s = await rawConnect((gw as Served).http.port);
    s.on('error', () => undefined);
    let reply = '';
    s.on('data', (c: Buffer) => {
      reply += c.toString('latin1');
    });
    s.write(`POST http://hung.test:${port}/kill HTTP/1.1\r\nHost: hung.test:${port}\r\nContent-Length: 3\r\n\r\nx=1`);
    await until('both addresses connecting', () => connecting(HUNG) === 1 && connecting(HUNG_TOO) === 1);
    const list = (await (await fetch(`${admin}/v1/flows`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { flows: Array<{ id: string; protocol: string; destination: { host: string } }> };
    const flow = list.flows.find((f) => f.destination.host === 'hung.test' && f.protocol === 'http');
    expect(flow).toBeDefined();
    const del = await fetch(`${admin}/v1/flows/${flow?.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
    await del.arrayBuffer();
    expect(del.status).toBe(200);
    await until('the kill answered', () => reply.includes('\r\n\r\n'));
    expect(reply).toMatch(/^HTTP\/1\.1 403 /);
    await until('no attempt left connecting', () => connecting(HUNG) === 0 && connecting(HUNG_TOO) === 0);
    s.destroy();
    const killed = await records((r) => r.destination.host === 'hung.test' && r.protocol === 'http', 1);
    expect(killed.map((r) => r.closeReason)).toEqual(['admin']);
  }, 30_000);

  it.runIf(isAvailable)('on an absolute-URI GET whose client leaves: has every attempt destroyed', async () => {
    const s = await rawConnect((gw as Served).http.port);
    s.on('error', () => undefined);
    s.write(`GET http://hung.test:${port}/leave HTTP/1.1\r\nHost: hung.test:${port}\r\n\r\n`);
    await until('both addresses connecting', () => connecting(HUNG) === 1 && connecting(HUNG_TOO) === 1);
    // A reset: the client left at once (a FIN alone is a half-close, seen as leaving only
    // finGraceMs later: docs/spec-notes.md).
    s.resetAndDestroy();
    await until('no attempt left connecting', () => connecting(HUNG) === 0 && connecting(HUNG_TOO) === 0);
    await until('the flow recorded', () => existsSync(join(dir, 'flows.jsonl')) && parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8')).filter((r) => r.destination.host === 'hung.test' && r.protocol === 'http').length === 2);
    const left = parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8')).filter((r) => r.destination.host === 'hung.test' && r.protocol === 'http');
    expect(left.map((r) => r.closeReason)).toEqual(['admin', 'client-reset']);
  }, 30_000);
});

describe('a name whose first address did not answer lately', () => {
  let remembering: Served | null = null;
  afterAll(async () => {
    await killIfRunning(remembering?.child ?? null, 'SIGTERM');
  });

  /** `work`, with the gateway's attempts to HUNG counted every 10 ms meanwhile: the most seen at once. */
  async function attemptsToHung<T>(work: () => Promise<T>): Promise<[T, number]> {
    let most = connecting(HUNG);
    const sampler = setInterval(() => {
      most = Math.max(most, connecting(HUNG));
    }, 10);
    try {
      return [await work(), Math.max(most, connecting(HUNG))];
    } finally {
      clearInterval(sampler);
    }
  }

  it.runIf(isAvailable)('is dialled last: the next flows on every path go to the next address, and the first is not dialled', async () => {
    // The default `resolver.rememberUnansweredMs` (60 s).
    remembering = await spawnServe(policyFile('remembering.yaml', 'remembering.jsonl'), { wrap: withResolvConf(join(dir, 'resolv.conf')) });
    const proxy = `http://127.0.0.1:${remembering.http.port}`;
    const url = `http://slow.test:${port}/`;
    // The first flow dials HUNG, which does not answer, and gets OPEN 250 ms later.
    await until('no attempt left connecting', () => connecting(HUNG) === 0);
    const [first, dialled] = await attemptsToHung(() => curl(['-p', '-x', proxy, url]));
    expect(first).toEqual(['200', `served by ${OPEN}`]);
    expect(dialled, 'the first flow dialled HUNG').toBe(1);
    await until('no attempt left connecting', () => connecting(HUNG) === 0);

    const paths: Array<[string, () => Promise<unknown>, unknown]> = [
      ['CONNECT', () => curl(['-p', '-x', proxy, url]), ['200', `served by ${OPEN}`]],
      ['SOCKS5', async () => (await socks('slow.test', remembering as Served)).split('\r\n\r\n')[1], `served by ${OPEN}`],
      ['GET', () => curl(['-x', proxy, url]), ['200', `served by ${OPEN}`]],
      ['POST', () => curl(['-x', proxy, '--data-binary', 'x=1', url]), ['200', `served by ${OPEN} (3 bytes)`]],
    ];
    for (const [path, work, answer] of paths) {
      const [got, attempts] = await attemptsToHung(work);
      expect(got, path).toEqual(answer);
      expect(attempts, `${path}: attempts to HUNG`).toBe(0);
    }
    const summary = (await records((r) => r.destination.host === 'slow.test', 5, 'remembering.jsonl')).map((r) => `${r.protocol} ${r.destination.ip}`);
    expect(summary.sort()).toEqual(['connect', 'connect', 'http', 'http', 'socks5'].map((p) => `${p} ${OPEN}`));
  }, 60_000);
});
