/**
 * `egressgate serve` exits promptly after its SIGTERM drain even while the OS resolver has lookups
 * under way. `serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback that never answers `.held.test` names, with `options timeout:30 attempts:5`.
 * Before, the drain was over after its 1 s grace (clients answered, every record written) but the
 * process exited only when getaddrinfo gave up: 150 s with 1 lookup or 8 (node's exit joins
 * libuv's thread pool). Now it exits 0 at once on node ≥ 22.15 (process.execve); node 20 has no
 * exit that does not join, and still waits for the lookups (here: until the test lets them end).
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

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.162';
const GRACE_MS = 1000;
/** How long after SIGTERM the exit may come: the grace and a wide margin for a loaded machine. */
const EXIT_WITHIN_MS = GRACE_MS + 5000;
/** Lookups held at SIGTERM: half over SOCKS5 (ATYP 3), half over HTTP CONNECT. */
const LOOKUPS = 8;
/** Whether this node can exit without joining the thread pool (22.15 and later). */
const hasExecve = typeof (process as NodeJS.Process & { execve?: unknown }).execve === 'function';

const isAvailable = skipNotice(canUnshareMounts(), 'serve-exit-lookups', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns | null = null;
let gw: Served | null = null;
const sockets: Socket[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-exit-lookups-'));
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
  await rm(dir, { recursive: true, force: true });
});

/** A client from its own loopback address: the resolver lets one requester hold 2 of its 8 slots. */
async function open(port: number, i: number): Promise<Socket> {
  const c = connect({ port, host: '127.0.0.1', localAddress: `127.0.0.${70 + i}` });
  c.on('error', () => undefined);
  c.on('data', () => undefined);
  sockets.push(c);
  await once(c, 'connect');
  return c;
}

function shape(r: FlowRecord): string {
  return `${r.protocol} ${r.destination.host} close=${r.closeReason}`;
}

describe('egressgate serve: exit after the SIGTERM drain with DNS lookups under way', () => {
  it.runIf(isAvailable)(`${LOOKUPS} lookups held: exit 0 within the grace + 5 s (node 20: once they end), one shutdown record per flow`, async () => {
    const zone = dns as ZoneDns;
    const log = join(dir, 'flows.jsonl');
    // The OS resolver would hold each lookup 150 s; the gateway's own timeout outlasts the test.
    await writeFile(join(dir, 'resolv.conf'), `nameserver ${zone.address}\noptions timeout:30 attempts:5\n`);
    await writeFile(
      join(dir, 'policy.yaml'),
      [
        'mode: enforce',
        'allowRanges: [127.0.0.0/8]',
        'roles: { any: { allow: [ { cidr: 127.0.0.0/8 }, { host: "*.held.test" } ] } }',
        'defaultRoles: [any]',
        'identity: { localAttribution: false }',
        'resolver: { timeoutMs: 600000 }',
        `flowLog: { path: ${JSON.stringify(log)} }`,
        `limits: { drainGraceMs: ${GRACE_MS} }`,
        '',
      ].join('\n'),
    );
    gw = await spawnServe(join(dir, 'policy.yaml'), {
      env: { UV_THREADPOOL_SIZE: '16', EGRESSGATE_ADMIN_TOKEN: 'serve-exit-lookups-token-0123456789' },
      wrap: withResolvConf(join(dir, 'resolv.conf')),
    });
    const socksPort = Number(gw.socks.slice(gw.socks.lastIndexOf(':') + 1));
    const expected: string[] = [];
    for (let i = 0; i < LOOKUPS; i++) {
      const name = `n${i}.held.test`;
      if (i % 2 === 0) {
        const c = await open(socksPort, i);
        c.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3, name.length]), Buffer.from(name), Buffer.from([0, 9])]));
        expected.push(`socks5 ${name} close=shutdown`);
      } else {
        const c = await open(gw.http.port, i);
        c.write(`CONNECT ${name}:9 HTTP/1.1\r\nHost: ${name}:9\r\n\r\n`);
        expected.push(`connect ${name} close=shutdown`);
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
