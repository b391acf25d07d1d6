/**
 * Parent proxies on the IPv6 loopback: `http://[::1]:P` and `socks5://[::1]:P`, with and without
 * credentials. Through each, a CONNECT, an absolute-URI GET and a SOCKS5 CONNECT reach the origin,
 * the parent is asked for the checked address with the URL's credentials, and each flow's record
 * names the parent as spec-notes says (`upstream`: scheme, the host in brackets and the port
 * dialled, never the credentials) with its bytes exact. Skipped on a host without IPv6 loopback.
 */
import { once } from 'node:events';
import { SocksClient } from 'socks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent, startSocksParent } from '../helpers/parent-proxy.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { type Origin, pattern, rawExchange, startOrigin } from './http-harness.ts';

const hasIpv6Loopback = await ipv6LoopbackAvailable();

let origin: Origin;
let gw: TestGateway | null = null;
let parent: ParentProxy | null = null;

beforeAll(async () => {
  if (hasIpv6Loopback) origin = await startOrigin();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
  await parent?.close();
  parent = null;
});
afterAll(async () => {
  await origin?.close();
});

/** A request in a tunnel whose answer the origin closes after: its bytes are the record's bytesOut. */
function tunnelRequest(size: number): string {
  return `GET /size/${size} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`;
}

/** A CONNECT to the origin with one request in the tunnel: what came after the gateway's 200 head. */
async function connectThrough(g: TestGateway, size: number): Promise<string> {
  const o = `127.0.0.1:${origin.port}`;
  const { response } = await rawExchange(g.httpPort, `CONNECT ${o} HTTP/1.1\r\nHost: ${o}\r\n\r\n${tunnelRequest(size)}`);
  expect(response).toMatch(/^HTTP\/1\.1 200 /);
  return response.slice(response.indexOf('\r\n\r\n') + 4);
}

/** A SOCKS5 CONNECT (the `socks` client) to the origin with one request: everything the origin sent back. */
async function socksThrough(g: TestGateway, size: number): Promise<Buffer> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
    command: 'connect',
    destination: { host: '127.0.0.1', port: origin.port },
    timeout: 5000,
  });
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const timer = setTimeout(() => socket.destroy(), 5000);
  socket.write(tunnelRequest(size));
  await once(socket, 'close');
  clearTimeout(timer);
  return Buffer.concat(chunks);
}

const cases: Array<[string, 'http' | 'socks5', string | undefined]> = [
  ['http://[::1]:P', 'http', undefined],
  ['http://user:pass@[::1]:P', 'http', 'pu:s3cret-v6'],
  ['socks5://[::1]:P', 'socks5', undefined],
  ['socks5://user:pass@[::1]:P', 'socks5', 'pu:s3cret-v6'],
];

describe.skipIf(!skipNotice(hasIpv6Loopback, 'upstream-ipv6-parent', 'needs IPv6 loopback (::1)'))('a parent proxy on ::1', () => {
  it.each(cases)('%s: CONNECT, absolute-URI GET and SOCKS5 CONNECT through it, each record naming it, bytes exact', async (_name, scheme, login) => {
    parent = scheme === 'http' ? await startHttpParent('::1') : await startSocksParent(login, '::1');
    parent.mode = { kind: 'relay' };
    gw = await startTestGateway({ upstream: parent.url(login) });
    const want = `${scheme}://[::1]:${parent.port}`;

    const tunnelled = await connectThrough(gw, 300);
    expect(tunnelled).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\n/);
    const connectRec = await gw.waitForClosed((r) => r.protocol === 'connect');

    const plain = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${origin.port}/size/200 HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`);
    expect(plain.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(plain.response.endsWith(`\r\n\r\n${pattern(200).toString('latin1')}`)).toBe(true);
    const httpRec = await gw.waitForClosed((r) => r.protocol === 'http');

    const viaSocks = await socksThrough(gw, 100);
    expect(viaSocks.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    const socksRec = await gw.waitForClosed((r) => r.protocol === 'socks5');

    // The parent was asked for the checked address, with the URL's credentials and only those.
    expect(parent.seen.map((s) => [s.target, s.login])).toEqual([
      [`127.0.0.1:${origin.port}`, login ?? null],
      [`127.0.0.1:${origin.port}`, login ?? null],
      [`127.0.0.1:${origin.port}`, login ?? null],
    ]);
    for (const rec of [connectRec, httpRec, socksRec]) {
      expect(rec).toMatchObject({ upstream: want, closeReason: 'closed', destination: { ip: '127.0.0.1', port: origin.port } });
      expect(JSON.stringify(rec)).not.toContain('s3cret');
    }
    expect([connectRec.bytesOut, connectRec.bytesIn]).toEqual([tunnelRequest(300).length, Buffer.byteLength(tunnelled, 'latin1')]);
    expect([httpRec.bytesOut, httpRec.bytesIn]).toEqual([0, 200]);
    expect([socksRec.bytesOut, socksRec.bytesIn]).toEqual([tunnelRequest(100).length, viaSocks.length]);
  });
});
