/**
 * `resolver.timeoutMs` applies on reload. The resolver was built once at start with the starting
 * value, so a reload that lowered it was reported as applied ("policy reloaded") and changed nothing:
 * with 3000 → 500, a name whose DNS server never answers still took 3.0 s to get its 502.
 *
 * `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback that never answers names under `.dead.test`, with the OS resolver's own timeout
 * (30 s × 5 attempts) longer than both. It starts at 120 s, so a lookup under the starting value
 * outlasts the client's 20 s: only the reloaded 300 ms answers it (502) within that. No timing is
 * asserted: the margins are a hundred-fold.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { run } from './http-harness.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
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
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${dns.address}\noptions timeout:30 attempts:5\n`);
  writeFileSync(join(dir, 'policy.yaml'), policy(120_000));
  // Enough libuv threads that no lookup waits for a slot.
  gw = await spawnServe(join(dir, 'policy.yaml'), {
    env: { UV_THREADPOOL_SIZE: '16', EGRESSGATE_ADMIN_TOKEN: 'dns-timeout-reload-token-0123456' },
    wrap: withResolvConf(join(dir, 'resolv.conf')),
  });
}, 30_000);

afterAll(async () => {
  await killIfRunning(gw?.child ?? null);
  if (!isAvailable) return;
  await dns?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A request for a name that never resolves: its status, none when curl gave up after 20 s. */
async function statusOf(name: string): Promise<string> {
  const r = await run('curl', ['-sS', '-m', '20', '-o', '/dev/null', '-w', '%{http_code}', '-x', `http://127.0.0.1:${(gw as Served).http.port}`, `http://${name}/`]);
  return r.stdout.toString('utf8');
}

describe('resolver.timeoutMs', () => {
  it.runIf(isAvailable)('a reload that changes it applies to the next lookup', async () => {
    writeFileSync(join(dir, 'policy.yaml'), policy(300));
    (gw as Served).child.kill('SIGHUP');
    const deadline = Date.now() + 10_000;
    while (!(gw as Served).stderr().includes('"version":2') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    expect((gw as Served).stderr()).toContain('"version":2');
    // Under the starting 120 s this would still be waiting when curl gives up.
    expect(await statusOf('two.dead.test')).toBe('502');
    expect(dns.asked.some((q) => q.startsWith('two.dead.test '))).toBe(true);
  }, 40_000);
});
