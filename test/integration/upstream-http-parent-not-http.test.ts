/**
 * An `upstream: http://…` that is no HTTP proxy (a wrong port: an SSH server, a Redis, a TLS-only
 * listener): what it answers our CONNECT with is not HTTP/1.x and holds no head's end, and it keeps
 * the connection open. The failure is the parent's, said at once, not a destination timeout.
 */
import { once } from 'node:events';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawConnect, rawExchange } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

/** What the service on the parent's port sends: on accept, or once our CONNECT head has arrived. */
interface NotHttp {
  onAccept?: Buffer;
  onRequest?: Buffer;
}

let service: NotHttp = {};
let server: Server;
let port: number;
const sockets = new Set<Socket>();
let gw: TestGateway | null = null;

beforeAll(async () => {
  server = createServer((s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => {});
    const { onAccept, onRequest } = service;
    if (onAccept) s.write(onAccept);
    let head = '';
    s.on('data', (d: Buffer) => {
      head += d.toString('latin1');
      if (onRequest && head.includes('\r\n\r\n')) {
        s.write(onRequest);
        head = '';
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as AddressInfo).port;
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
  for (const s of sockets) s.destroy();
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
});

/** A raw SOCKS5 CONNECT (no auth) to 127.0.0.1:9 through the gateway: its reply code, or null with none in 5 s. */
async function socksReply(g: TestGateway): Promise<number | null> {
  const s = await rawConnect(g.socksPort, g.socksHost);
  s.on('error', () => {});
  const timer = setTimeout(() => s.destroy(), 5000);
  s.write(Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 9]));
  const got = await readBytes(s, 4);
  clearTimeout(timer);
  s.destroy();
  return got.length >= 4 ? (got[3] as number) : null;
}

// Regression: a first line that no HTTP/1.x status line starts with, and no CRLFCRLF after it, was
// waited on until limits.connectTimeoutMs: the client got 504 connect-timeout, and the record said
// the destination timed out (a failed attempt for an0081.scan), though the destination was never
// asked. Now 502 / SOCKS 0x01 upstream-proxy, as soon as the first bytes or line say it is not HTTP.
describe('an http parent that answers in another protocol and stays open', () => {
  const cases: Array<[string, NotHttp]> = [
    ['an SSH banner on accept', { onAccept: Buffer.from('SSH-2.0-OpenSSH_9.6\r\n') }],
    ['an error line to the CONNECT', { onRequest: Buffer.from("-ERR unknown command 'CONNECT'\r\n") }],
    ['a TLS alert, no line at all', { onRequest: Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]) }],
  ];
  it.each(cases)('%s: CONNECT 502 and SOCKS5 0x01 upstream-proxy, not 504 connect-timeout', async (_name, what) => {
    service = what;
    // A limit far past the bounds the clients wait: an answer at all means the parent was judged.
    gw = await startTestGateway({ upstream: `http://127.0.0.1:${port}`, limits: { connectTimeoutMs: 20_000 } });

    const { response } = await rawExchange(gw.httpPort, 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n', 5000);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    expect(jsonBody(response).reason).toBe('upstream-proxy');
    expect(await socksReply(gw)).toBe(0x01);

    const records = [await gw.waitForClosed((r) => r.protocol === 'connect'), await gw.waitForClosed((r) => r.protocol === 'socks5')];
    for (const rec of records) expect([rec.closeReason, rec.upstream, rec.bytesIn, rec.bytesOut]).toEqual(['upstream-proxy', `http://127.0.0.1:${port}`, 0, 0]);
    expect(gw.logs.some((l) => JSON.stringify(l).includes(`parent proxy http://127.0.0.1:${port} answered with another protocol than HTTP/1.x`))).toBe(true);
  });
});
