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

/**
 * What the service on the parent's port sends: on accept, or once our CONNECT head has arrived;
 * `pieces`: written 20 ms apart once the head has arrived, the connection ended with the last when `thenEnd`.
 */
interface NotHttp {
  onAccept?: Buffer;
  onRequest?: Buffer;
  pieces?: string[];
  thenEnd?: boolean;
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
    const { onAccept, onRequest, pieces, thenEnd } = service;
    if (onAccept) s.write(onAccept);
    let head = '';
    s.on('data', (d: Buffer) => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      head = '';
      if (onRequest) s.write(onRequest);
      pieces?.forEach((piece, i) => {
        setTimeout(() => {
          if (s.destroyed) return;
          if (thenEnd && i === pieces.length - 1) s.end(piece, 'latin1');
          else s.write(piece, 'latin1');
        }, 20 * i);
      });
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
    // Regression: with a CRLFCRLF in the answer the check was skipped, and the first line went into
    // the log as the parent's status line: `answered \u0000\u0001\u0002\u0003garbage`, or 15,000
    // bytes of it (the client's 502 was right).
    ['binary bytes, then a CRLFCRLF', { onRequest: Buffer.concat([Buffer.from([0, 1, 2, 3]), Buffer.from('garbage\r\n\r\n')]) }],
    ['a 15,000-byte line, then a CRLFCRLF', { onRequest: Buffer.from(`${'x'.repeat(15_000)}\r\n\r\n`) }],
    // Regression: any digit after `HTTP/1.` was taken, so a 200 in a version that is none (llhttp
    // refuses it from an origin: "Invalid HTTP version") opened the tunnel, a 1xx in it was skipped.
    ['a 200 said in HTTP/1.2', { onRequest: Buffer.from('HTTP/1.2 200 Connection established\r\n\r\n') }],
    ['a 200 said in HTTP/1.9', { onRequest: Buffer.from('HTTP/1.9 200 OK\r\n\r\n') }],
    ['a 1xx said in HTTP/1.5, then a proper 200', { onRequest: Buffer.from('HTTP/1.5 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n\r\n') }],
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
    for (const l of gw.logs) expect(JSON.stringify(l).length).toBeLessThan(400);
  });
});

// Regression: a refusal's status line was quoted in the log as it came: its reason phrase (the
// parent's to fill) with its control bytes, up to the 16 KiB the answer may take (12,022 bytes of
// `HTTP/1.1 403 \x1b[31mno\x07 yyy…` in one warning). Now bytes outside printable ASCII are `\xNN` and
// the line is cut at 128 bytes, its length said.
describe('an http parent whose refusal has a long reason phrase with control bytes', () => {
  it('CONNECT 502 upstream-proxy; the log quotes 128 bytes of the status line, escaped, and its length', async () => {
    service = { onRequest: Buffer.from(`HTTP/1.1 403 \x1b[31mno\x07 ${'y'.repeat(12_000)}\r\nContent-Length: 0\r\n\r\n`, 'latin1') };
    gw = await startTestGateway({ upstream: `http://127.0.0.1:${port}`, limits: { connectTimeoutMs: 20_000 } });

    const { response } = await rawExchange(gw.httpPort, 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n', 5000);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    expect(jsonBody(response).reason).toBe('upstream-proxy');
    const rec = await gw.waitForClosed((r) => r.protocol === 'connect');
    expect([rec.closeReason, rec.bytesIn, rec.bytesOut]).toEqual(['upstream-proxy', 0, 0]);
    const line = gw.logs.find((l) => l.msg === 'CONNECT dial failed');
    expect(line?.err).toBe(`parent proxy http://127.0.0.1:${port} answered HTTP/1.1 403 \\x1b[31mno\\x07 ${'y'.repeat(106)}… (12022 bytes)`);
  });
});

// Regression: a head with bare LF line ends was waited on for its CRLFCRLF: with connectTimeoutMs
// 1,200, `HTTP/1.1 200 Connection established\n\n` got the client 504 connect-timeout at 1,203 ms
// (a `100 Continue\n\n` before a proper 200: 1,213 ms), recorded as the destination's timeout; and
// `HTTP/1.1 200 OK\nX-A: b\r\n\r\n` opened the tunnel. The absolute-URI paths refuse such heads from
// an origin (llhttp): now the parent's are 502 / SOCKS 0x01 upstream-proxy as soon as the LF is seen.
describe('an http parent whose answer has bare LF line ends', () => {
  const cases: Array<[string, NotHttp]> = [
    ['every line', { onRequest: Buffer.from('HTTP/1.1 200 Connection established\n\n') }],
    ['the status line only, CRLFCRLF after it', { onRequest: Buffer.from('HTTP/1.1 200 OK\nX-A: b\r\n\r\n') }],
    ['a 1xx before a proper 200', { onRequest: Buffer.from('HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\r\n\r\n') }],
    ['the last line, in a later segment', { pieces: ['HTTP/1.1 200 OK\r\nVia: 1.1 p\r\n', 'X-A: b\n\n'] }],
  ];
  it.each(cases)('%s: CONNECT 502 and SOCKS5 0x01 upstream-proxy at once', async (_name, what) => {
    service = what;
    gw = await startTestGateway({ upstream: `http://127.0.0.1:${port}`, limits: { connectTimeoutMs: 20_000 } });

    const { response } = await rawExchange(gw.httpPort, 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n', 5000);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    expect(jsonBody(response).reason).toBe('upstream-proxy');
    expect(await socksReply(gw)).toBe(0x01);

    const records = [await gw.waitForClosed((r) => r.protocol === 'connect'), await gw.waitForClosed((r) => r.protocol === 'socks5')];
    for (const rec of records) expect([rec.closeReason, rec.upstream, rec.bytesIn, rec.bytesOut]).toEqual(['upstream-proxy', `http://127.0.0.1:${port}`, 0, 0]);
    expect(gw.logs.some((l) => JSON.stringify(l).includes(`parent proxy http://127.0.0.1:${port} answered with a bare LF line end`))).toBe(true);
  });

  it('CRLFs cut between segments are line ends: the tunnel opens and carries what follows the head', async () => {
    service = { pieces: ['HTTP/1.1 200 OK\r', '\nVia: 1.1 p\r', '\n\r', '\nhi'], thenEnd: true };
    gw = await startTestGateway({ upstream: `http://127.0.0.1:${port}`, limits: { connectTimeoutMs: 20_000 } });
    const { response } = await rawExchange(gw.httpPort, 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n', 5000);
    expect(response).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\nhi$/);
    const rec = await gw.waitForClosed((r) => r.protocol === 'connect');
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 2, bytesOut: 0 });
  });
});
