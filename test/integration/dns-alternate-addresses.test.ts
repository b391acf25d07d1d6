/**
 * A name with several addresses whose first refuses the connection: the gateway goes on to the
 * name's next address, checked first as the first was (deny-range, CIDR entries), on every TCP
 * path (absolute-URI GET and POST, CONNECT, SOCKS5 by name), and the flow's record names the address
 * that answered. Before, the first address was the only one dialled: a dual-stack name whose IPv4
 * address refused (and its IPv6 one served) answered 502 `connection-refused` on all of them, as
 * did a name with two A records whose first was down. An address the policy denies is never
 * dialled, whatever its place in the answer; nor one a name answers after it was checked (DNS
 * rebinding: one lookup per answer, the flow dials what was checked).
 *
 * `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback (test/helpers/zone-dns.ts) that answers from a fixed zone: the real OS resolver
 * (getaddrinfo) between them, as in production.
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { run } from './http-harness.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.157';
/** Nothing listens here: a connection to it is refused. */
const CLOSED = '127.0.0.2';
/** An origin the policy allows. */
const OPEN = '127.0.0.3';
/** An origin the policy denies (loopback outside allowRanges): it must never see a connection. */
const DENIED = '127.0.0.5';

const isAvailable = skipNotice(canUnshareMounts(), 'dns-alternate-addresses', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns;
let gw: Served | null = null;
const origins: Server[] = [];
let port = 0;
let deniedConnections = 0;

async function listen(host: string, onConnection?: () => void): Promise<void> {
  const s = createServer((req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    req.on('end', () => res.end(`served by ${req.socket.localAddress}${bytes > 0 ? ` (${bytes} bytes)` : ''}`));
  });
  if (onConnection) s.on('connection', onConnection);
  s.listen(port, host);
  await once(s, 'listening');
  port = (s.address() as { port: number }).port;
  origins.push(s);
}

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-dnsalt-'));
  await listen(OPEN);
  await listen('::1');
  await listen(DENIED, () => deniedConnections++);
  dns = await startZoneDns(ZONE_DNS, {
    'dual.test': [CLOSED, '::1'],
    'pair.test': [CLOSED, OPEN],
    'guarded.test': [CLOSED, DENIED],
    // DNS rebinding: the checked address on the first A query, the denied one on every later query.
    'rebind.test': () => (dns.asked.filter((q) => q === 'rebind.test A').length <= 1 ? [OPEN] : [DENIED]),
  });
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${dns.address}\noptions timeout:1 attempts:1\n`);
  const config = join(dir, 'policy.yaml');
  writeFileSync(
    config,
    [
      'mode: enforce',
      `allowRanges: [${CLOSED}/32, ${OPEN}/32, "::1/128"]`,
      'roles: { any: { allow: [ { host: "*.test" } ] } }',
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      `flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }`,
      '',
    ].join('\n'),
  );
  gw = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: 'dns-alternate-addresses-token-0123' }, wrap: withResolvConf(join(dir, 'resolv.conf')) });
}, 30_000);

afterAll(async () => {
  await killIfRunning(gw?.child ?? null, 'SIGTERM');
  if (!isAvailable) return;
  await dns?.close();
  for (const s of origins) s.close();
  rmSync(dir, { recursive: true, force: true });
});

/** curl through the gateway: [status (the CONNECT's with -p), body]. */
async function curl(args: string[]): Promise<[string, string]> {
  const r = await run('curl', ['-sS', '-m', '10', '-w', args.includes('-p') ? '\n%{http_connect}' : '\n%{http_code}', ...args]);
  const text = r.stdout.toString('utf8');
  const nl = text.lastIndexOf('\n');
  return [text.slice(nl + 1), text.slice(0, nl)];
}

async function socks(host: string): Promise<string> {
  const [h, p] = (gw as Served).socks.split(':');
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

describe('a name whose first address refuses', () => {
  it.runIf(isAvailable)('is reached at its next address on every TCP path, and the record names that address', async () => {
    const proxy = `http://127.0.0.1:${(gw as Served).http.port}`;
    for (const [name, served] of [
      ['dual.test', '::1'],
      ['pair.test', OPEN],
    ] as const) {
      expect(await curl(['-x', proxy, `http://${name}:${port}/`]), `GET ${name}`).toEqual(['200', `served by ${served}`]);
      expect(await curl(['-x', proxy, '--data-binary', 'x=1', `http://${name}:${port}/`]), `POST ${name}`).toEqual(['200', `served by ${served} (3 bytes)`]);
      expect(await curl(['-p', '-x', proxy, `http://${name}:${port}/`]), `CONNECT ${name}`).toEqual(['200', `served by ${served}`]);
      expect(await socks(name), `SOCKS5 ${name}`).toContain(`served by ${served}`);
    }
    // The denied address is never dialled: the refusal of the first is the flow's answer. By now
    // CLOSED is remembered as refusing this port (pair.test's flows, resolver.rememberUnansweredMs),
    // and still the denied address is not put first in its place.
    const [status, body] = await curl(['-x', proxy, `http://guarded.test:${port}/`]);
    expect(status).toBe('502');
    expect(body).toContain('connection-refused');
    expect((await curl(['-p', '-x', proxy, `http://guarded.test:${port}/`]))[0]).toBe('502');
    await expect(socks('guarded.test')).rejects.toThrow();
    expect(deniedConnections).toBe(0);

    const deadline = Date.now() + 5000;
    let records = parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8'));
    while (records.length < 11 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      records = parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8'));
    }
    const summary = records.map((r) => `${r.protocol} ${r.destination.host} ${r.destination.ip} ${r.closeReason}`).sort();
    expect(summary).toEqual(
      [
        ...['http', 'http', 'connect', 'socks5'].map((p) => `${p} dual.test ::1 closed`),
        ...['http', 'http', 'connect', 'socks5'].map((p) => `${p} pair.test ${OPEN} closed`),
        ...['http', 'connect', 'socks5'].map((p) => `${p} guarded.test ${CLOSED} connection-refused`),
      ].sort(),
    );
  }, 60_000);
});

describe('a name that answers differently each time it is asked (DNS rebinding)', () => {
  it.runIf(isAvailable)('is looked up once: every flow dials the checked address, never the later answer', async () => {
    const proxy = `http://127.0.0.1:${(gw as Served).http.port}`;
    const before = deniedConnections;
    for (let i = 0; i < 3; i++) {
      expect(await curl(['-x', proxy, `http://rebind.test:${port}/`]), `GET #${i}`).toEqual(['200', `served by ${OPEN}`]);
      expect(await curl(['-p', '-x', proxy, `http://rebind.test:${port}/`]), `CONNECT #${i}`).toEqual(['200', `served by ${OPEN}`]);
      expect(await socks('rebind.test'), `SOCKS5 #${i}`).toContain(`served by ${OPEN}`);
    }
    expect(deniedConnections - before).toBe(0);
    expect(dns.asked.filter((q) => q === 'rebind.test A')).toHaveLength(1);
  }, 60_000);
});
