/**
 * `resolver.timeoutMs` applies on reload. The resolver was built once at start with the starting
 * value, so a reload that lowered it was reported as applied ("policy reloaded") and changed nothing:
 * with 3000 → 500, a name whose DNS server never answers still took 3.0 s to get its 502.
 *
 * `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback that never answers names under `.dead.test`, with the OS resolver's own timeout
 * (10 s) longer than both.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canUnshareMounts, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { run } from './http-harness.ts';

const ZONE_DNS = '127.0.0.158';

const isAvailable = skipNotice(canUnshareMounts(), 'dns-timeout-reload', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns;
let gw: Served | null = null;

const policy = (timeoutMs: number): string =>
  [
    'mode: enforce',
    'roles: { any: { allow: [ { host: "*.test" } ] } }',
    'defaultRoles: [any]',
    'identity: { localAttribution: false }',
    `resolver: { timeoutMs: ${timeoutMs} }`,
    'flowLog: { path: null }',
    '',
  ].join('\n');

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-dnsreload-'));
  dns = await startZoneDns(ZONE_DNS, {});
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${ZONE_DNS}\noptions timeout:10 attempts:1\n`);
  writeFileSync(join(dir, 'policy.yaml'), policy(2000));
  // Enough libuv threads that no lookup waits for a slot: what is measured is the timeout alone.
  gw = await spawnServe(join(dir, 'policy.yaml'), {
    env: { UV_THREADPOOL_SIZE: '16', EGRESSGATE_ADMIN_TOKEN: 'dns-timeout-reload-token-0123456' },
    wrap: withResolvConf(join(dir, 'resolv.conf')),
  });
}, 30_000);

afterAll(async () => {
  if (gw) {
    gw.child.kill('SIGKILL');
    await once(gw.child, 'exit').catch(() => undefined);
  }
  if (!isAvailable) return;
  await dns.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A request for a name that never resolves: [status, seconds]. */
async function timed(name: string): Promise<[string, number]> {
  const r = await run('curl', ['-sS', '-m', '15', '-o', '/dev/null', '-w', '%{http_code} %{time_total}', '-x', `http://127.0.0.1:${(gw as Served).http.port}`, `http://${name}/`]);
  const [status = '', seconds = ''] = r.stdout.toString('utf8').split(' ');
  return [status, Number(seconds)];
}

describe('resolver.timeoutMs', () => {
  it.runIf(isAvailable)('a reload that changes it applies to the next lookup', async () => {
    const [before, beforeSec] = await timed('one.dead.test');
    expect(before).toBe('502');
    expect(beforeSec).toBeGreaterThanOrEqual(1.9);
    writeFileSync(join(dir, 'policy.yaml'), policy(300));
    (gw as Served).child.kill('SIGHUP');
    const deadline = Date.now() + 10_000;
    while (!(gw as Served).stderr().includes('"version":2') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    expect((gw as Served).stderr()).toContain('"version":2');
    const [after, afterSec] = await timed('two.dead.test');
    expect(after).toBe('502');
    expect(afterSec).toBeLessThan(1.5);
  }, 40_000);
});
