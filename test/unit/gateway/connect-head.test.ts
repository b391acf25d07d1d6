import { describe, expect, it } from 'vitest';
import { parseConnectHead } from '../../../gateway/listeners/http-connect-front.ts';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

describe('parseConnectHead (CONNECT fast path)', () => {
  it('parses a plain CONNECT head: target, lower-case headers, OWS trimmed, end after the blank line', () => {
    const head = 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization:  Basic YTpi \t\r\nUser-Agent: curl/8\r\n\r\n';
    const r = parseConnectHead(b(`${head}early-payload`), 8192);
    expect(r).toEqual({
      url: 'example.com:443',
      headers: { host: 'example.com:443', 'proxy-authorization': 'Basic YTpi', 'user-agent': 'curl/8' },
      end: head.length,
    });
  });

  it('keeps HTAB inside a value, trims SP and HTAB around it, and takes any token as a name', () => {
    const head = "CONNECT h:1 HTTP/1.1\r\nX-A:\t a\tb  \t\r\n!#$%&'*+.^_`|~09az-AZ: v\r\nX-Empty:\r\n\r\n";
    expect(parseConnectHead(b(head), 8192)).toEqual({
      url: 'h:1',
      headers: { 'x-a': 'a\tb', "!#$%&'*+.^_`|~09az-az": 'v', 'x-empty': '' },
      end: head.length,
    });
  });

  it('takes bracketed IPv6 targets and a head with no headers', () => {
    expect(parseConnectHead(b('CONNECT [::1]:8443 HTTP/1.1\r\n\r\n'), 8192)).toEqual({ url: '[::1]:8443', headers: {}, end: 31 });
  });

  // Everything below is left to node:http (null): it parses, limits and refuses as before.
  it.each([
    ['another method', 'GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n'],
    ['lower-case method', 'connect example.com:443 HTTP/1.1\r\n\r\n'],
    ['an incomplete head', 'CONNECT example.com:443 HTTP/1.1\r\nHost: exa'],
    ['HTTP/1.0', 'CONNECT example.com:443 HTTP/1.0\r\n\r\n'],
    ['a target with a path', 'CONNECT example.com:443/x HTTP/1.1\r\n\r\n'],
    ['two spaces', 'CONNECT  example.com:443 HTTP/1.1\r\n\r\n'],
    ['obs-fold', 'CONNECT example.com:443 HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n'],
    ['a duplicate header', 'CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: Basic YTpi\r\nproxy-authorization: Basic Yzpk\r\n\r\n'],
    ['Content-Length', 'CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello'],
    ['Transfer-Encoding', 'CONNECT example.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['a space before the colon', 'CONNECT example.com:443 HTTP/1.1\r\nHost : x\r\n\r\n'],
    ['an empty header name', 'CONNECT example.com:443 HTTP/1.1\r\n: x\r\n\r\n'],
    ['a bare LF', 'CONNECT example.com:443 HTTP/1.1\nHost: x\r\n\r\n'],
    ['a bare CR', 'CONNECT example.com:443 HTTP/1.1\r\nX-A: 1\r2\r\n\r\n'],
    ['a control byte', 'CONNECT example.com:443 HTTP/1.1\r\nX-A: a\u0000b\r\n\r\n'],
    ['obs-text', 'CONNECT example.com:443 HTTP/1.1\r\nX-A: caf\u00e9\r\n\r\n'],
    ['a request line cut short', 'CONNECT a\r\n\r\n'],
    ['no target', 'CONNECT  HTTP/1.1\r\n\r\n'],
    ['a space inside the target', 'CONNECT a b:1 HTTP/1.1\r\n\r\n'],
    ['a target character outside the fast set', 'CONNECT a%41:1 HTTP/1.1\r\n\r\n'],
    ['a header line without a colon', 'CONNECT a:1 HTTP/1.1\r\nHost\r\n\r\n'],
    ['a bare LF inside a value', 'CONNECT a:1 HTTP/1.1\r\nX-A: 1\n2\r\n\r\n'],
    ['a tab in a name', 'CONNECT a:1 HTTP/1.1\r\nX\tA: 1\r\n\r\n'],
    ['a duplicate that differs only in case', 'CONNECT a:1 HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n'],
    ['a Host of invalid syntax (node:http answers 400)', 'CONNECT a:1 HTTP/1.1\r\nHost: a b\r\n\r\n'],
  ])('leaves %s to node:http', (_what, text) => {
    expect(parseConnectHead(b(text), 8192)).toBeNull();
  });

  it('leaves a head larger than limits.maxHeaderBytes to node:http (which answers 431)', () => {
    const head = `CONNECT example.com:443 HTTP/1.1\r\nX-Pad: ${'a'.repeat(200)}\r\n\r\n`;
    expect(parseConnectHead(b(head), head.length)).toEqual({ url: 'example.com:443', headers: { 'x-pad': 'a'.repeat(200) }, end: head.length });
    expect(parseConnectHead(b(head), head.length - 1)).toBeNull();
  });
});
