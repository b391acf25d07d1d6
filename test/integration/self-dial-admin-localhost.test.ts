/**
 * `--admin localhost:PORT` (or `listen.admin: localhost:…`) on a host whose `localhost` answers both
 * 127.0.0.1 and ::1 (most distributions' /etc/hosts): the admin API (fastify) listens on both, and
 * the gateway never dials either (SPEC §4). Before, only the address the listening line names (the
 * first, `[::1]:p` here) was known as the gateway's own: with loopback allowed, GET
 * http://127.0.0.1:<admin port>/healthz through the proxy got the admin API's 200 and CONNECT
 * 127.0.0.1:<admin port> was 200 Connection Established.
 *
 * `egressgate serve` runs in a mount namespace of its own (root, `unshare -m`) with an /etc/hosts
 * naming both loopback addresses for localhost, as such a host has.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { canUnshareMounts, killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';

const isAvailable = skipNotice(canUnshareMounts() && (await ipv6LoopbackAvailable()), 'self-dial-admin-localhost', 'needs root, unshare -m (its own /etc/hosts) and the IPv6 loopback');
let dir = '';
let gw: Served | null = null;
let adminPort = 0;

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-adminlocalhost-'));
  writeFileSync(join(dir, 'hosts'), '127.0.0.1 localhost\n::1 localhost\n');
  const config = join(dir, 'policy.yaml');
  writeFileSync(
    config,
    [
      'mode: enforce',
      'allowRanges: [127.0.0.0/8, "::1/128"]',
      'roles: { any: { allow: [ { cidr: 127.0.0.0/8 }, { cidr: "::1/128" } ] } }',
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      `flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }`,
      '',
    ].join('\n'),
  );
  gw = await spawnServe(config, {
    env: { EGRESSGATE_ADMIN_TOKEN: 'self-dial-admin-localhost-token-0123' },
    wrap: (argv) => {
      const at = argv.indexOf('--admin');
      const args = [...argv];
      args[at + 1] = 'localhost:0';
      return ['unshare', '-m', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', join(dir, 'hosts'), ...args];
    },
  });
  adminPort = Number(gw.admin.slice(gw.admin.lastIndexOf(':') + 1));
}, 30_000);

afterAll(async () => {
  await killIfRunning(gw?.child ?? null);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The records of the flows to the admin port (the flow log is written as each closes). */
function adminRecords(): ReturnType<typeof parseRecords> {
  let text = '';
  try {
    text = readFileSync(join(dir, 'flows.jsonl'), 'utf8');
  } catch {
    return [];
  }
  return parseRecords(text).filter((r) => r.destination.port === adminPort);
}

describe('admin listener on localhost (127.0.0.1 and ::1)', () => {
  it.runIf(isAvailable)("both addresses are the gateway's own: 403 deny-range on each, the admin API never answers through the proxy", async () => {
    const httpPort = (gw as Served).http.port;
    for (const host of ['127.0.0.1', '[::1]']) {
      const { response } = await rawExchange(httpPort, `GET http://${host}:${adminPort}/healthz HTTP/1.1\r\nHost: ${host}:${adminPort}\r\nConnection: close\r\n\r\n`);
      expect(response, `GET ${host}`).toMatch(/^HTTP\/1\.1 403 /);
      expect(response, `GET ${host}`).toContain('deny-range');
      const s = await rawConnect(httpPort);
      s.on('error', () => undefined);
      s.write(`CONNECT ${host}:${adminPort} HTTP/1.1\r\nHost: ${host}:${adminPort}\r\n\r\n`);
      const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
      s.destroy();
      expect(head, `CONNECT ${host}`).toMatch(/^HTTP\/1\.1 403 /);
    }
    await until('the four records', () => adminRecords().length === 4);
    expect(adminRecords().map((r) => r.destination.ip).sort()).toEqual(['127.0.0.1', '127.0.0.1', '::1', '::1']);
    for (const r of adminRecords()) {
      expect([r.destination.ip, r.verdict, r.reason, r.bytesOut]).toEqual([r.destination.ip, 'block', 'deny-range', 0]);
      expect(r.reasons.join(' ')).toContain('a listener of this gateway');
    }
  });
});
