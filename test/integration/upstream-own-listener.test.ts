/**
 * A parent proxy (`upstream`) that is one of the gateway's own listeners, however its address is
 * written (an IP literal, IPv4-mapped IPv6, a `resolver.hosts` name): refused before it is dialled,
 * 502 / SOCKS 0x01 `upstream-proxy`, one record per client request, the log line saying why (SPEC §4:
 * the gateway never dials its own listeners). A parent on a loopback port the gateway does not
 * listen on is dialled as before.
 */
import { SocksClient } from 'socks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { closedPort } from '../helpers/closed-port.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startSocksParent } from '../helpers/parent-proxy.ts';
import { jsonBody, rawExchange, startOrigin, type Origin } from './http-harness.ts';

let origin: Origin;
let gw: TestGateway | null = null;

beforeAll(async () => {
  origin = await startOrigin();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});
afterAll(async () => {
  await origin.close();
});

/** A SOCKS5 CONNECT to the origin through the gateway's SOCKS listener: its reply code (0 = succeeded). */
async function socksReply(g: TestGateway): Promise<number> {
  try {
    const { socket } = await SocksClient.createConnection({
      proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: origin.port },
      timeout: 10_000,
    });
    socket.destroy();
    return 0;
  } catch (err) {
    const m = /rejected connection - (\w+)/.exec((err as Error).message);
    return m?.[1] === 'Failure' ? 0x01 : -1;
  }
}

/** A CONNECT, an absolute-URI GET and a SOCKS5 CONNECT to the origin: what each client was answered. */
async function threeClients(g: TestGateway): Promise<{ connect: string; get: string; socks: number }> {
  const authority = `127.0.0.1:${origin.port}`;
  const connect = (await rawExchange(g.httpPort, `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`)).response;
  const get = (await rawExchange(g.httpPort, `GET http://${authority}/ HTTP/1.1\r\nHost: ${authority}\r\nConnection: close\r\n\r\n`)).response;
  return { connect, get, socks: await socksReply(g) };
}

// Regression: a gateway whose `socks5://` parent was its own SOCKS listener took each CONNECT back as
// a new flow, from itself, until 127.0.0.1's new-flow rate (200 a second) refused one: one client
// CONNECT made 225 flows (224 socks5 ones, a rate-limit among them) and spent the rate of every
// client on the gateway's address. An `http://` parent on its own HTTP listener was stopped by Via at
// the second arrival: two flows (via-loop, upstream-proxy) for one request.
describe("a parent proxy on one of the gateway's own listeners", () => {
  const cases: Array<[string, 'socks' | 'http', (port: number) => string, Record<string, unknown>]> = [
    ['socks5 parent on the SOCKS listener', 'socks', (p) => `socks5://127.0.0.1:${p}`, {}],
    ['http parent on the HTTP listener', 'http', (p) => `http://u:s3cret@127.0.0.1:${p}`, {}],
    ['socks5 parent written IPv4-mapped', 'socks', (p) => `socks5://[::ffff:127.0.0.1]:${p}`, {}],
    ['http parent by a resolver.hosts name', 'http', (p) => `http://gateway.self.test:${p}`, { resolver: { hosts: { 'gateway.self.test': '127.0.0.1' } } }],
  ];
  it.each(cases)('%s: CONNECT and absolute-URI 502, SOCKS5 0x01 upstream-proxy, one record each, nothing dialled', async (_name, listener, parentUrl, extra) => {
    const port = await closedPort();
    const listen = listener === 'socks' ? { socks: `127.0.0.1:${port}` } : { http: `127.0.0.1:${port}` };
    gw = await startTestGateway({ ...extra, listen, upstream: parentUrl(port) });
    const answers = await threeClients(gw);
    expect(answers.connect).toMatch(/^HTTP\/1\.1 502 /);
    expect(jsonBody(answers.connect)).toMatchObject({ reason: 'upstream-proxy' });
    expect(answers.get).toMatch(/^HTTP\/1\.1 502 /);
    expect(jsonBody(answers.get)).toMatchObject({ reason: 'upstream-proxy' });
    expect(answers.socks).toBe(0x01);
    // Each client's flow, and no other: the listener was never dialled, so no flow came back in.
    const g = gw;
    await g.waitForClosed((r) => r.protocol === 'socks5');
    expect(g.closed.map((r) => [r.protocol, r.closeReason]).sort()).toEqual([
      ['connect', 'upstream-proxy'],
      ['http', 'upstream-proxy'],
      ['socks5', 'upstream-proxy'],
    ]);
    expect(g.flows.activeFlows().size).toBe(0);
    const said = g.logs.map((l: Record<string, unknown>) => String(l['err'] ?? l['reason'] ?? ''));
    expect(said.filter((s) => s.includes(`:${port}`) && /is a listener of this gateway/.test(s))).toHaveLength(3);
    for (const s of said) expect(s).not.toContain('s3cret');
    expect(origin.seen).toHaveLength(0);
  });

  it('a parent on another loopback port is dialled as before', async () => {
    const parent: ParentProxy = await startSocksParent();
    try {
      gw = await startTestGateway({ upstream: parent.url() });
      const authority = `127.0.0.1:${origin.port}`;
      const c = await rawExchange(gw.httpPort, `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\nGET / HTTP/1.1\r\nHost: ${authority}\r\nConnection: close\r\n\r\n`);
      expect(c.response).toMatch(/^HTTP\/1\.1 200 [\s\S]*echo:GET:0$/);
      expect(parent.seen.map((s) => s.target)).toEqual([authority]);
    } finally {
      await parent.close();
    }
  });
});
