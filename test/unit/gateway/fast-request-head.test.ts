import { describe, expect, it } from 'vitest';
import { parseFastRequestHead } from '../../../gateway/listeners/http-fast-head.ts';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

describe('parseFastRequestHead (absolute-URI fast path)', () => {
  it('parses a curl-like GET: method, target, lower-case headers, raw names as written, end after the blank line', () => {
    const head = 'GET http://example.com:8080/a/b?c=d&e=%20f HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n';
    expect(parseFastRequestHead(b(head), 16384)).toEqual({
      method: 'GET',
      url: 'http://example.com:8080/a/b?c=d&e=%20f',
      headers: { host: 'example.com:8080', 'user-agent': 'curl/8.0', accept: '*/*', 'proxy-connection': 'Keep-Alive' },
      rawHeaders: ['Host', 'example.com:8080', 'User-Agent', 'curl/8.0', 'Accept', '*/*', 'Proxy-Connection', 'Keep-Alive'],
      isLast: false,
      end: head.length,
    });
  });

  it('takes HEAD, IPv6 literal authorities and every RFC 3986 target character but "#"', () => {
    const url = "http://[::1]:80/-._~:/?[]@!$&'()*+,;=%41";
    const r = parseFastRequestHead(b(`HEAD ${url} HTTP/1.1\r\n\r\n`), 16384);
    expect(r).toMatchObject({ method: 'HEAD', url, headers: {}, rawHeaders: [] });
  });

  it('reads Connection: close among other options as the last request of the connection', () => {
    const r = parseFastRequestHead(b('GET http://h/ HTTP/1.1\r\nConnection: keep-alive , Close\r\n\r\n'), 16384);
    expect(r?.isLast).toBe(true);
  });

  it('says where the head ends when more bytes follow (the caller decides what to do with them)', () => {
    const head = 'GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n';
    expect(parseFastRequestHead(b(`${head}GET http://h/2 HTTP/1.1\r\n\r\n`), 16384)?.end).toBe(head.length);
  });

  // Everything below is left to node:http (null): it parses, limits, refuses or serves as before.
  it.each([
    ['POST', 'POST http://h/ HTTP/1.1\r\nContent-Length: 1\r\n\r\nx'],
    ['DELETE', 'DELETE http://h/ HTTP/1.1\r\n\r\n'],
    ['CONNECT', 'CONNECT h:443 HTTP/1.1\r\n\r\n'],
    ['lower-case method', 'get http://h/ HTTP/1.1\r\n\r\n'],
    ['origin-form target', 'GET / HTTP/1.1\r\nHost: h\r\n\r\n'],
    ['https target', 'GET https://h/ HTTP/1.1\r\n\r\n'],
    ['upper-case scheme', 'GET HTTP://h/ HTTP/1.1\r\n\r\n'],
    ['a fragment', 'GET http://h/#x HTTP/1.1\r\n\r\n'],
    ['a space in the target', 'GET http://h/a b HTTP/1.1\r\n\r\n'],
    ['a quote in the target', 'GET http://h/"x" HTTP/1.1\r\n\r\n'],
    ['obs-text in the target', 'GET http://h/\u00e9 HTTP/1.1\r\n\r\n'],
    ['HTTP/1.0', 'GET http://h/ HTTP/1.0\r\n\r\n'],
    ['an incomplete head', 'GET http://h/ HTTP/1.1\r\nHost: h\r\n'],
    ['obs-fold', 'GET http://h/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n'],
    ['a bare LF', 'GET http://h/ HTTP/1.1\nHost: h\r\n\r\n'],
    ['a Host of invalid syntax (node:http answers 400)', 'GET http://h/ HTTP/1.1\r\nHost: h/x\r\n\r\n'],
    ['a bare CR in a value', 'GET http://h/ HTTP/1.1\r\nX-A: a\rb\r\n\r\n'],
    ['a control byte in a value', 'GET http://h/ HTTP/1.1\r\nX-A: a\u0001b\r\n\r\n'],
    ['obs-text in a value', 'GET http://h/ HTTP/1.1\r\nX-A: caf\u00e9\r\n\r\n'],
    ['a space before the colon', 'GET http://h/ HTTP/1.1\r\nHost : h\r\n\r\n'],
    ['a duplicate header', 'GET http://h/ HTTP/1.1\r\nX-Egress-User: a\r\nx-egress-user: b\r\n\r\n'],
    ['Content-Length', 'GET http://h/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n'],
    ['Transfer-Encoding', 'GET http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['Expect', 'GET http://h/ HTTP/1.1\r\nExpect: 100-continue\r\n\r\n'],
    ['Upgrade', 'GET http://h/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'],
    ['Connection: upgrade alone', 'GET http://h/ HTTP/1.1\r\nConnection: upgrade\r\n\r\n'],
    ['a prototype name', 'GET http://h/ HTTP/1.1\r\nConstructor: x\r\n\r\n'],
  ])('%s → null', (_why, head) => {
    expect(parseFastRequestHead(b(head), 16384)).toBeNull();
  });

  it('leaves a head larger than maxHeaderBytes to node:http (its 431)', () => {
    const head = `GET http://h/ HTTP/1.1\r\nX-Pad: ${'p'.repeat(2000)}\r\n\r\n`;
    expect(parseFastRequestHead(b(head), head.length)).toMatchObject({ method: 'GET', url: 'http://h/', headers: { 'x-pad': 'p'.repeat(2000) }, end: head.length });
    expect(parseFastRequestHead(b(head), head.length - 1)).toBeNull();
  });
});
