/**
 * A name under `localhost` (RFC 6761 §6.3) is the loopback addresses: the gateway answers it itself
 * and never asks DNS, on every TCP path (absolute-URI, CONNECT, an Upgrade, SOCKS5 by name),
 * whatever the spelling. Before, glibc's getaddrinfo sent `app.localhost` to the configured DNS
 * servers (A and AAAA), which learnt the name and could point it anywhere: the gateway dialled their
 * answer (here 127.0.0.3), not the loopback address. A `resolver.hosts` entry still answers first
 * (the operator's word); `localhost` itself is /etc/hosts' answer, as before.
 *
 * `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback (test/helpers/zone-dns.ts) that answers the names under localhost with 127.0.0.3.
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
import { run } from './http-harness.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.181';
/** The loopback address a name under localhost is (its IPv4 one, dialled first). */
const LOOPBACK = '127.0.0.1';
/** What the DNS server answers for every name under localhost. */
const ELSEWHERE = '127.0.0.3';

const isAvailable = skipNotice(canUnshareMounts(), 'dns-localhost-names', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns;
let gw: Served | null = null;
const origins: Server[] = [];
let port = 0;

/** An origin on `host` (the same port on each): a GET says which address served it, an Upgrade too (101). */
async function listen(host: string): Promise<void> {
  const s = createServer((req, res) => res.end(`served by ${req.socket.localAddress}`));
  s.on('upgrade', (_req, socket) => {
    socket.end(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Served-By: ${(socket as Socket).localAddress}\r\n\r\n`);
  });
  s.listen(port, host);
  await once(s, 'listening');
  port = (s.address() as { port: number }).port;
  origins.push(s);
}

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-dnslocal-'));
  await listen(LOOPBACK);
  await listen(ELSEWHERE);
  dns = await startZoneDns(ZONE_DNS, {
    'app.localhost': [ELSEWHERE],
    'a.b.localhost': [ELSEWHERE],
    'pinned.localhost': [ELSEWHERE],
  });
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${dns.address}\noptions timeout:1 attempts:1\n`);
  const config = join(dir, 'policy.yaml');
  writeFileSync(
    config,
    [
      'mode: enforce',
      `allowRanges: [${LOOPBACK}/32, ${ELSEWHERE}/32]`,
      'roles: { any: { allow: [ { host: "*.localhost" } ] } }',
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      `resolver: { hosts: { "pinned.localhost": ${ELSEWHERE} } }`,
      `flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }`,
      '',
    ].join('\n'),
  );
  gw = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: 'dns-localhost-names-token-0123456' }, wrap: withResolvConf(join(dir, 'resolv.conf')) });
}, 30_000);

afterAll(async () => {
  await killIfRunning(gw?.child ?? null);
  if (!isAvailable) return;
  await dns?.close();
  for (const s of origins) s.close();
  rmSync(dir, { recursive: true, force: true });
});

/** curl through the gateway: "<status> <body>" (the CONNECT's status with -p). */
async function curl(args: string[]): Promise<string> {
  const r = await run('curl', ['-sS', '-m', '10', '-w', args.includes('-p') ? '\n%{http_connect}' : '\n%{http_code}', ...args]);
  const text = r.stdout.toString('utf8');
  const nl = text.lastIndexOf('\n');
  return `${text.slice(nl + 1)} ${text.slice(0, nl)}`;
}

/** An Upgrade request through the gateway: the origin's X-Served-By, or the status line when refused. */
async function upgrade(name: string): Promise<string> {
  const s = connect((gw as Served).http.port, '127.0.0.1');
  s.on('error', () => undefined);
  s.write(`GET http://${name}:${port}/ws HTTP/1.1\r\nHost: ${name}:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const timer = setTimeout(() => s.destroy(), 10_000);
  await once(s, 'close');
  clearTimeout(timer);
  const text = Buffer.concat(chunks).toString('latin1');
  return /x-served-by: (\S+)/i.exec(text)?.[1] ?? text.split('\r\n')[0] ?? '';
}

async function socks(name: string): Promise<string> {
  const [h, p] = (gw as Served).socks.split(':');
  const { socket } = await SocksClient.createConnection({
    proxy: { host: h as string, port: Number(p), type: 5 },
    command: 'connect',
    destination: { host: name, port },
    timeout: 10_000,
  });
  socket.write(`GET / HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`);
  const chunks: Buffer[] = [];
  for await (const c of socket) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('latin1');
}

describe('a name under localhost', () => {
  it.runIf(isAvailable)('is the loopback address on every TCP path, never asked of DNS, in any spelling', async () => {
    const proxy = `http://127.0.0.1:${(gw as Served).http.port}`;
    const names = ['app.localhost', 'a.b.localhost', 'App.LocalHost.'];
    for (const name of names) {
      expect(await curl(['-x', proxy, `http://${name}:${port}/`]), `GET ${name}`).toBe(`200 served by ${LOOPBACK}`);
      expect(await curl(['-p', '-x', proxy, `http://${name}:${port}/`]), `CONNECT ${name}`).toBe(`200 served by ${LOOPBACK}`);
      expect(await upgrade(name), `Upgrade ${name}`).toBe(LOOPBACK);
      expect(await socks(name), `SOCKS5 ${name}`).toContain(`served by ${LOOPBACK}`);
    }
    // The operator's static answer is still the name's.
    expect(await curl(['-p', '-x', proxy, `http://pinned.localhost:${port}/`]), 'CONNECT pinned.localhost').toBe(`200 served by ${ELSEWHERE}`);
    expect(dns.asked.filter((q) => q.includes('.localhost'))).toEqual([]);

    const want = names.length * 4 + 1;
    const deadline = Date.now() + 5000;
    let records = parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8'));
    while (records.length < want && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      records = parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8'));
    }
    const ips = records.map((r) => `${r.destination.host} ${r.destination.ip} ${r.verdict}`);
    expect(ips.filter((l) => l.endsWith(`${LOOPBACK} allow`))).toHaveLength(names.length * 4);
    expect(ips).toContain(`pinned.localhost ${ELSEWHERE} allow`);
  }, 60_000);
});
