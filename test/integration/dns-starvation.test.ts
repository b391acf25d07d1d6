/**
 * One client's lookups of names whose DNS servers never answer must not take name resolution away
 * from everyone else. `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as
 * root) naming a DNS server on loopback that never answers; the thread pool is libuv's default (two
 * lookups at once for DNS). One client asks for 30 such names at once; another client's CONNECT to
 * `localhost` (resolved by the same OS resolver, from /etc/hosts) must still be established. Before
 * gateway/upstream/resolve.ts shared the pool, it waited behind the 30 until its lookup timed out:
 * 502 dns-failed, for every client, for as long as the names kept coming.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { echoOrigin, type TcpOrigin } from '../helpers/detection-live.ts';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { readUntil } from './http-harness.ts';

/**
 * Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not); not
 * 127.0.0.53: systemd-resolved's stub may hold that one. The names asked are under .dead.test: the
 * server never answers them.
 */
const DEAD_DNS = '127.0.0.153';

const isAvailable = skipNotice(canUnshareMounts(), 'dns-starvation', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns | undefined;
let echo: TcpOrigin;
let gw: Served | null = null;
const sockets = new Set<Socket>();

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-dns-'));
  dns = await startZoneDns(DEAD_DNS, {});
  echo = await echoOrigin('127.0.0.1');
  const resolv = join(dir, 'resolv.conf');
  writeFileSync(resolv, `nameserver ${dns.address}\noptions timeout:3 attempts:1\n`);
  const config = join(dir, 'policy.yaml');
  writeFileSync(config, ['allowRanges: [127.0.0.0/8]', 'roles: { any: { allow: [ { cidr: 0.0.0.0/0 }, { host: "*.dead.test" }, { host: localhost } ] } }', 'defaultRoles: [any]', 'flowLog: { path: null }', ''].join('\n'));
  gw = await spawnServe(config, {
    // libuv's default pool: the smallest DNS share, two lookups at once.
    env: { EGRESSGATE_ADMIN_TOKEN: 'dns-starvation-token-0123456789', UV_THREADPOOL_SIZE: undefined },
    wrap: withResolvConf(resolv),
  });
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await killIfRunning(gw?.child ?? null);
  if (isAvailable) {
    await dns?.close();
    await echo?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
});

/** CONNECT `target` from `from`; resolves with the status line (or what ended the wait). */
async function tunnel(target: string, from: string): Promise<string> {
  const s = connect({ port: (gw as Served).http.port, host: '127.0.0.1', localAddress: from });
  s.on('error', () => undefined);
  sockets.add(s);
  await once(s, 'connect');
  s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  const head = await readUntil(s, '\r\n\r\n', 20_000).catch((err: Error) => Buffer.from(`no answer: ${err.message}`));
  return head.toString('latin1').split('\r\n')[0] as string;
}

describe('DNS lookups are shared fairly between clients', () => {
  it.runIf(isAvailable)("30 lookups of dead names from one client; another client's CONNECT by name is still established", async () => {
    const attack = Array.from({ length: 30 }, (_, i) => tunnel(`n${i}.dead.test:443`, '127.0.0.60'));
    // The attacker's first lookups are in the pool before the victim asks.
    const t0 = Date.now();
    const asked = (dns as ZoneDns).asked;
    while (asked.length === 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
    expect(asked.length).toBeGreaterThan(0);
    expect(await tunnel(`localhost:${echo.port}`, '127.0.0.61')).toBe('HTTP/1.1 200 Connection Established');
    // The attacker gets its answers too: 502 once its own lookups fail or time out.
    const answers = await Promise.all(attack);
    expect(new Set(answers)).toEqual(new Set(['HTTP/1.1 502 Bad Gateway']));
  });
});
