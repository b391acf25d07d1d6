/**
 * A CONNECT whose destination's name is still being looked up when the SIGTERM drain's grace runs
 * out is answered what the drain's end means (SOCKS5 `0x01`, HTTP 503 `shutdown`) at once, and has
 * one record, closeReason `shutdown`. `egressgate serve` runs with its own /etc/resolv.conf (a mount
 * namespace, as root) naming a DNS server on loopback that holds its answers for `.held.test` names
 * until the test lets them go, after the clients were answered.
 * Before, admission waited for the lookup, which a kill does not cancel: the SOCKS5 client (ATYP 3)
 * got its greeting's answer and then a close at the drain's end, no reply; the HTTP CONNECT got
 * nothing, its connection left open by the drain until the process exited (which waits for the OS
 * resolver's thread: here, until the test lets the answer go).
 *
 * Then the exit: with the OS resolver's own wait at `timeout:30 attempts:5`, the drain was over after its
 * 1 s grace but the process exited only when getaddrinfo gave up, 150 s with 1 lookup or 8 (node's
 * exit joins libuv's thread pool). Now it exits 0 at once on node ≥ 22.15 (process.execve); node 20
 * has no exit that does not join, and still waits for the lookups (here: until the test lets them end).
 */
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { readToEnd, startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.161';
/** How long a client waits for its answer before the test gives up on it. */
const ANSWER_WAIT_MS = 20_000;
const GRACE_MS = 1000;
/** How long after SIGTERM the exit may come: the grace and a wide margin for a loaded machine. */
const EXIT_WITHIN_MS = GRACE_MS + 5000;
/** Lookups held at SIGTERM in the exit case: half over SOCKS5 (ATYP 3), half over HTTP CONNECT. */
const LOOKUPS = 8;
/** Whether this node can exit without joining the thread pool (22.15 and later). */
const hasExecve = typeof (process as NodeJS.Process & { execve?: unknown }).execve === 'function';

const isAvailable = skipNotice(canUnshareMounts(), 'serve-drain-lookup', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns | null = null;
let echo: TcpOrigin;
let gw: Served | null = null;
const sockets: Socket[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-drain-lookup-'));
  echo = await startTcpOrigin();
  if (isAvailable) dns = await startZoneDns(ZONE_DNS, {});
});
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.length = 0;
  dns?.releaseHeld();
  await killIfRunning(gw?.child ?? null);
  gw = null;
  dns?.holdAgain();
});
afterAll(async () => {
  await dns?.close();
  await echo.close();
  await rm(dir, { recursive: true, force: true });
});

/** A client; with `i`, from its own loopback address (the resolver lets one requester hold 2 of its 8 slots). */
async function open(port: number, i?: number): Promise<Socket> {
  const c = connect({ port, host: '127.0.0.1', ...(i === undefined ? {} : { localAddress: `127.0.0.${70 + i}` }) });
  c.on('error', () => undefined);
  sockets.push(c);
  await once(c, 'connect');
  return c;
}

/**
 * `serve` with its own resolv.conf naming the zone's server (`attempts` of 30 s each) and a 1 s drain
 * grace; every flow allowed, records to `flows.jsonl`.
 */
async function serveHeldLookups(zone: ZoneDns, attempts: number, resolverTimeoutMs: number): Promise<{ gw: Served; log: string }> {
  const log = join(dir, 'flows.jsonl');
  await rm(log, { force: true });
  await writeFile(join(dir, 'resolv.conf'), `nameserver ${zone.address}\noptions timeout:30 attempts:${attempts}\n`);
  await writeFile(
    join(dir, 'policy.yaml'),
    [
      'mode: enforce',
      'allowRanges: [127.0.0.0/8]',
      'roles: { any: { allow: [ { cidr: 127.0.0.0/8 }, { host: "*.held.test" } ] } }',
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      `resolver: { timeoutMs: ${resolverTimeoutMs} }`,
      `flowLog: { path: ${JSON.stringify(log)} }`,
      `limits: { drainGraceMs: ${GRACE_MS} }`,
      '',
    ].join('\n'),
  );
  const served = await spawnServe(join(dir, 'policy.yaml'), {
    env: { UV_THREADPOOL_SIZE: '16', EGRESSGATE_ADMIN_TOKEN: 'serve-drain-lookup-token-0123456789' },
    wrap: withResolvConf(join(dir, 'resolv.conf')),
  });
  return { gw: served, log };
}

/** Everything `c` receives until it closes, or what it has when ANSWER_WAIT_MS is up (`isClosed` false). */
async function answerOf(c: Socket): Promise<{ data: Buffer; isClosed: boolean }> {
  const parts: Buffer[] = [];
  c.on('data', (b: Buffer) => parts.push(b));
  let timer: NodeJS.Timeout | undefined;
  const isClosed = await Promise.race([
    readToEnd(c).then(() => true),
    new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), ANSWER_WAIT_MS);
    }),
  ]);
  clearTimeout(timer);
  return { data: Buffer.concat(parts), isClosed };
}

function shape(r: FlowRecord): string {
  return `${r.protocol} ${r.destination.host} ${r.verdict} close=${r.closeReason}`;
}

describe('egressgate serve: SIGTERM while a destination name is being looked up', () => {
  it.runIf(isAvailable)('the grace runs out: SOCKS5 CONNECT (ATYP 3) gets 0x01, HTTP CONNECT 503 shutdown, before the lookup ends; one record each, shutdown; exit 0', async () => {
    const zone = dns as ZoneDns;
    // The OS resolver's own timeout (30 s) and the gateway's (120 s) both outlast the test's wait.
    const served = await serveHeldLookups(zone, 1, 120_000);
    gw = served.gw;
    const log = served.log;
    const socksPort = Number(gw.socks.slice(gw.socks.lastIndexOf(':') + 1));
    const name = 'socks.held.test';
    const socks = await open(socksPort);
    // Greeting (no auth) and CONNECT to a name (ATYP 3) in one write.
    socks.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3, name.length]), Buffer.from(name), Buffer.from([echo.port >> 8, echo.port & 255])]));
    const http = await open(gw.http.port);
    http.write(`CONNECT http.held.test:${echo.port} HTTP/1.1\r\nHost: http.held.test:${echo.port}\r\n\r\n`);
    await until('both names asked', () => zone.asked.includes(`${name} A`) && zone.asked.includes('http.held.test A'), 10_000);
    const exited = once(gw.child, 'exit');
    gw.child.kill('SIGTERM');
    const [socksAnswer, httpAnswer] = await Promise.all([answerOf(socks), answerOf(http)]);
    // Answered while the lookups are still held: RFC 1928 §6 VER 5, REP 0x01 (after the method 05 00).
    expect(socksAnswer.data.subarray(0, 4).toString('hex')).toBe('05000501');
    expect(socksAnswer.isClosed).toBe(true);
    const head = httpAnswer.data.toString('latin1');
    expect(head.split('\r\n')[0]).toBe('HTTP/1.1 503 Service Unavailable');
    expect(head).toContain('"reason":"shutdown"');
    // The lookups end now (NXDOMAIN). On node 20 the exit waits for them (the next case).
    zone.releaseHeld();
    expect(((await exited) as [number | null])[0]).toBe(0);
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.map(shape).sort()).toEqual(['connect http.held.test allow close=shutdown', `socks5 ${name} allow close=shutdown`]);
  }, 60_000);
  it.runIf(isAvailable)(`${LOOKUPS} lookups held: exit 0 within the grace + 5 s (node 20: once they end), one shutdown record per flow`, async () => {
    const zone = dns as ZoneDns;
    // The OS resolver would hold each lookup 150 s; the gateway's own timeout outlasts the test.
    const served = await serveHeldLookups(zone, 5, 600_000);
    gw = served.gw;
    const log = served.log;
    const socksPort = Number(gw.socks.slice(gw.socks.lastIndexOf(':') + 1));
    const expected: string[] = [];
    for (let i = 0; i < LOOKUPS; i++) {
      const name = `n${i}.held.test`;
      if (i % 2 === 0) {
        const c = await open(socksPort, i);
        c.on('data', () => undefined);
        c.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3, name.length]), Buffer.from(name), Buffer.from([0, 9])]));
        expected.push(`socks5 ${name} allow close=shutdown`);
      } else {
        const c = await open(gw.http.port, i);
        c.on('data', () => undefined);
        c.write(`CONNECT ${name}:9 HTTP/1.1\r\nHost: ${name}:9\r\n\r\n`);
        expected.push(`connect ${name} allow close=shutdown`);
      }
    }
    await until(`${LOOKUPS} names asked`, () => expected.every((_, i) => zone.asked.includes(`n${i}.held.test A`)), 10_000);
    const exited = once(gw.child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    gw.child.kill('SIGTERM');
    if (!hasExecve) {
      // Node 20: the exit waits for the OS resolver; the lookups end (NXDOMAIN) once the drain is over.
      await until('the drain over', async () => (await readFile(log, 'utf8').catch(() => '')).split('\n').length > LOOKUPS, 10_000);
      zone.releaseHeld();
    }
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      exited,
      new Promise<'still running'>((r) => {
        timer = setTimeout(() => r('still running'), EXIT_WITHIN_MS);
      }),
    ]);
    clearTimeout(timer);
    expect(result).toEqual([0, null]);
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.map(shape).sort()).toEqual(expected.sort());
  }, 60_000);
});
