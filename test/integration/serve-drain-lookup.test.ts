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
/** How long a client waits for its answer before the test gives up on it (the grace is 1 s). */
const ANSWER_WAIT_MS = 20_000;

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
});
afterAll(async () => {
  await dns?.close();
  await echo.close();
  await rm(dir, { recursive: true, force: true });
});

async function open(port: number): Promise<Socket> {
  const c = connect({ port, host: '127.0.0.1' });
  c.on('error', () => undefined);
  sockets.push(c);
  await once(c, 'connect');
  return c;
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
    const log = join(dir, 'flows.jsonl');
    // The OS resolver's own timeout (30 s) and the gateway's (120 s) both outlast the test's wait.
    await writeFile(join(dir, 'resolv.conf'), `nameserver ${zone.address}\noptions timeout:30 attempts:1\n`);
    await writeFile(
      join(dir, 'policy.yaml'),
      [
        'mode: enforce',
        'allowRanges: [127.0.0.0/8]',
        'roles: { any: { allow: [ { cidr: 127.0.0.0/8 }, { host: "*.held.test" } ] } }',
        'defaultRoles: [any]',
        'identity: { localAttribution: false }',
        'resolver: { timeoutMs: 120000 }',
        `flowLog: { path: ${JSON.stringify(log)} }`,
        'limits: { drainGraceMs: 1000 }',
        '',
      ].join('\n'),
    );
    gw = await spawnServe(join(dir, 'policy.yaml'), {
      env: { UV_THREADPOOL_SIZE: '16', EGRESSGATE_ADMIN_TOKEN: 'serve-drain-lookup-token-0123456789' },
      wrap: withResolvConf(join(dir, 'resolv.conf')),
    });
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
    // The lookups end now (NXDOMAIN). On node 20 the exit waits for them (serve-exit-lookups.test.ts).
    zone.releaseHeld();
    expect(((await exited) as [number | null])[0]).toBe(0);
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.map(shape).sort()).toEqual(['connect http.held.test allow close=shutdown', `socks5 ${name} allow close=shutdown`]);
  }, 60_000);
});
