/**
 * A flow whose name is still being looked up when a reload gives its client's address another host
 * (`identity.hosts`) is judged as that host, with its roles, as a new connection from the address
 * would be: CONNECT, an absolute-URI request and a SOCKS5 CONNECT alike. Before, the reload woke
 * admission (refuseLookupsAfterChange) but the flow kept the host it was resolved with, and that
 * host's roles under the new policy: loopback moved from `lab` (role `slow`: `*.slow.test`) to
 * `kiosk` (role `shut`), `lab` kept elsewhere, still got 200 / `0x00`, recorded as host `lab`, roles
 * `slow`. A host a claim named (a trusted identity header) is the claim's and stays.
 *
 * DNS answers late (test/helpers/late-dns.ts: `.slow.test` names get 127.0.0.1 after LOOKUP_MS);
 * the reload is PUT /v1/policy (SIGHUP swaps the policy the same way).
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { caseSockets } from '../helpers/dialling-cases.ts';
import { adminPut, type DeepPartial, runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type LateDns, startLateDns } from '../helpers/late-dns.ts';

const LOOKUP_MS = 2000;

let dns: LateDns;
let origin: Server;
let originPort = 0;

beforeAll(async () => {
  dns = await startLateDns(LOOKUP_MS);
  origin = createServer((s) => s.end('HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'));
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
});
afterAll(() => {
  dns?.close();
  origin?.close();
});

const LAB_LOOPBACK: DeepPartial<Config> = {
  mode: 'enforce',
  identity: { hosts: [{ name: 'lab', cidr: '127.0.0.0/8', roles: ['slow'] }], headers: { trustedSources: ['127.0.0.9/32'] } },
  roles: { slow: { allow: [{ host: '*.slow.test' }] }, shut: { allow: [{ host: 'only.example.com' }] } },
  defaultRoles: [],
};

async function gateway(onTestFinished: (fn: () => Promise<void>) => void): Promise<TestGateway> {
  const gw = await startTestGateway(LAB_LOOPBACK, { resolver: createDnsResolver({ timeoutMs: 5000, lookup: dns.lookup, slots: 16, perRequester: 16 }) });
  onTestFinished(() => gw.stop());
  return gw;
}

/** The reload: loopback is `kiosk` (role `shut`), `lab` (role `slow`) moves to 10.9.9.0/24. */
async function moveLoopbackToKiosk(gw: TestGateway): Promise<void> {
  const config = await runningConfig(gw);
  const identity = { ...(config.identity as object), hosts: [{ name: 'lab', cidr: '10.9.9.0/24', roles: ['slow'] }, { name: 'kiosk', cidr: '127.0.0.0/8', roles: ['shut'] }] };
  const status = await adminPut(gw, '/v1/policy', { ...config, identity });
  if (status !== 200) throw new Error(`reload: ${status}`);
}

/** A raw request sent on a connection of `localAddress`; `reply` is what the client got. */
async function waiting(gw: TestGateway, request: string, clients: Socket[], localAddress = '127.0.0.1'): Promise<{ reply: Promise<string> }> {
  const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress });
  await once(s, 'connect');
  clients.push(s);
  s.on('error', () => undefined);
  const reply = new Promise<string>((resolve) => {
    let text = '';
    s.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (text.startsWith('HTTP/1.1 ') && text.includes('\r\n\r\n') && (text.startsWith('HTTP/1.1 200 Connection') || text.endsWith('}') || text.includes('content-length: 0'))) resolve(text);
    });
    s.once('close', () => resolve(text));
  });
  s.write(request);
  return { reply };
}

function socksConnect(gw: TestGateway, host: string): Promise<string> {
  return SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host, port: originPort }, timeout: 10_000 }).then(
    (c) => {
      c.socket.destroy();
      return 'connected';
    },
    (err: Error) => err.message,
  );
}

/** The records of the flows to `host`: verdict, reason, identity host and roles. */
function recordsTo(gw: TestGateway, host: string): string[][] {
  return gw.closed.filter((r) => r.destination.host === host).map((r) => [r.verdict, r.reason ?? '', r.identity.host ?? '', r.identity.roles.join(',')]);
}

describe.concurrent('a reload giving the client another host while its name is looked up', () => {
  it('CONNECT, absolute-URI GET and SOCKS5 CONNECT are judged as the new host (kiosk, role shut): refused, recorded as kiosk', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await gateway(onTestFinished);
    const tunnel = await waiting(gw, `CONNECT h1.slow.test:${originPort} HTTP/1.1\r\nHost: h1.slow.test:${originPort}\r\n\r\n`, clients);
    const get = await waiting(gw, `GET http://h2.slow.test:${originPort}/ HTTP/1.1\r\nHost: h2.slow.test:${originPort}\r\n\r\n`, clients, '127.0.0.1');
    const socks = socksConnect(gw, 'h3.slow.test');
    await until('all looked up', () => ['h1', 'h2', 'h3'].every((h) => dns.asked.includes(`${h}.slow.test`)));
    await moveLoopbackToKiosk(gw);
    const [t, g, s] = await Promise.all([tunnel.reply, get.reply, socks]);
    expect(t).toMatch(/^HTTP\/1\.1 403 /);
    expect(t).toContain('"reason":"not-allowlisted"');
    expect(g).toMatch(/^HTTP\/1\.1 403 /);
    expect(s).toMatch(/NotAllowed/);
    await until('three records', () => ['h1', 'h2', 'h3'].every((h) => recordsTo(gw, `${h}.slow.test`).length === 1));
    for (const h of ['h1', 'h2', 'h3']) expect(recordsTo(gw, `${h}.slow.test`)).toEqual([['block', 'not-allowlisted', 'kiosk', 'shut']]);
  });

  it('a host a trusted header named stays the flow host across the reload (lab): 200, recorded as lab', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await gateway(onTestFinished);
    const tunnel = await waiting(gw, `CONNECT k1.slow.test:${originPort} HTTP/1.1\r\nHost: k1.slow.test:${originPort}\r\nX-Egress-Host: lab\r\n\r\n`, clients, '127.0.0.9');
    await until('looked up', () => dns.asked.includes('k1.slow.test'));
    await moveLoopbackToKiosk(gw);
    expect(await tunnel.reply).toMatch(/^HTTP\/1\.1 200 /);
    await until('its record', () => recordsTo(gw, 'k1.slow.test').length === 1, 10_000);
    expect(recordsTo(gw, 'k1.slow.test')).toEqual([['allow', 'allowed', 'lab', 'slow']]);
  });
});
