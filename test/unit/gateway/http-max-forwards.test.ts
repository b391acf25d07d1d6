import { describe, expect, it } from 'vitest';
import { finalRecipientText, MAX_FORWARDS_LIMIT, maxForwardsOf, traceEcho } from '../../../gateway/listeners/http-max-forwards.ts';

describe('maxForwardsOf', () => {
  it.each([
    ['TRACE', '0', 0],
    ['OPTIONS', ' 3 ', 3],
    ['OPTIONS', ['2', '9'], 2],
    ['TRACE', '99999999999999999999', MAX_FORWARDS_LIMIT + 1],
    ['GET', '0', null],
    ['TRACE', undefined, null],
    ['TRACE', '-1', null],
    ['TRACE', '1.5', null],
    ['TRACE', '', null],
  ] as const)('%s with %j -> %s', (method, value, expected) => {
    expect(maxForwardsOf(method, value as string | string[] | undefined)).toBe(expected);
  });
});

describe('traceEcho', () => {
  it('reflects the request line and fields, less credentials, cookies and identity headers', () => {
    const raw = ['Host', 'a', 'Authorization', 'x', 'Proxy-Authorization', 'y', 'Cookie', 'c', 'X-Egress-User', 'bob', 'Accept', '*/*'];
    expect(traceEcho('TRACE http://a/ HTTP/1.1', raw, new Set(['x-egress-user']))).toBe('TRACE http://a/ HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n');
  });
});

describe('finalRecipientText', () => {
  it('answers OPTIONS 200 without content and TRACE 200 with the echo, both connection: close', () => {
    const options = finalRecipientText('OPTIONS', 'OPTIONS http://a/ HTTP/1.1', ['Host', 'a'], new Set());
    expect(options).toMatch(/^HTTP\/1\.1 200 OK\r\ndate: [^\r]+ GMT\r\nconnection: close\r\ncontent-length: 0\r\n\r\n$/);
    const trace = finalRecipientText('TRACE', 'TRACE http://a/ HTTP/1.1', ['Host', 'a', 'Cookie', 'c'], new Set());
    const echo = 'TRACE http://a/ HTTP/1.1\r\nHost: a\r\n\r\n';
    expect(trace).toMatch(/^HTTP\/1\.1 200 OK\r\ndate: [^\r]+ GMT\r\nconnection: close\r\ncontent-type: message\/http\r\n/);
    expect(trace.endsWith(`content-length: ${echo.length}\r\n\r\n${echo}`)).toBe(true);
  });
});
