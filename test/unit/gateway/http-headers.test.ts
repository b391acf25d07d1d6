import { describe, expect, it } from 'vitest';
import { newViaName, viaNamesUs, viaOnward } from '../../../gateway/via.ts';
import {
  connectionNamedHeaders,
  dropContentLength,
  forwardRequestHeaders,
  forwardResponseHeaders,
  parseProxyBasic,
  rawHeader,
  serialiseRequestHead,
  unrelayableFraming,
  viaFor,
} from '../../../gateway/listeners/http-headers.ts';
import { connectContentFault, hostFieldFault, hostHeaderFor, httpVersionFault, isValidHostField, parseAbsoluteTarget, shapeRefusalCode, smugglingShape } from '../../../gateway/listeners/http-target.ts';

const NAME = newViaName();
const VIA_VALUE = NAME.value;
const VIA_PSEUDONYM = NAME.pseudonym;

const names = (raw: readonly string[]): string[] => raw.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());

describe('forwardRequestHeaders', () => {
  const stripped = new Set(['x-egress-user', 'x-egress-host']);

  it('drops every hop-by-hop field, the Connection-named ones, identity headers and Expect', () => {
    const raw = [
      'Host', 'evil.example',
      'Connection', 'keep-alive, X-Secret-Hop',
      'Connection', 'x-other-hop',
      'Keep-Alive', 'timeout=5',
      'Proxy-Connection', 'keep-alive',
      'TE', 'trailers',
      'Trailer', 'X-Checksum',
      'Transfer-Encoding', 'chunked',
      'Upgrade', 'h2c',
      'Proxy-Authorization', 'Basic YTpi',
      'Proxy-Authenticate', 'Basic',
      'X-Secret-Hop', '1',
      'X-Other-Hop', '2',
      'X-Egress-User', 'mallory',
      'x-egress-host', 'h',
      'Expect', '100-continue',
      'Accept', '*/*',
      'Set-Thing', 'a',
      'Set-Thing', 'b',
      'Content-Length', '5',
    ];
    const out = forwardRequestHeaders(raw, { host: 'origin.test:8080', stripped, via: VIA_VALUE });
    expect(out).toEqual([
      'host', 'origin.test:8080',
      'Accept', '*/*',
      'Set-Thing', 'a',
      'Set-Thing', 'b',
      'Content-Length', '5',
      'via', VIA_VALUE,
    ]);
  });

  it('keeps Upgrade for an upgrade request and says so in Connection', () => {
    const raw = ['Host', 'x', 'Connection', 'Upgrade', 'Upgrade', 'websocket', 'Sec-WebSocket-Key', 'k'];
    const out = forwardRequestHeaders(raw, { host: 'x', stripped, upgrade: 'websocket', via: VIA_VALUE });
    expect(names(out)).toEqual(['host', 'sec-websocket-key', 'connection', 'upgrade', 'via']);
    expect(rawHeader(out, 'upgrade')).toBe('websocket');
    expect(rawHeader(out, 'connection')).toBe('Upgrade');
  });
});

describe('forwardResponseHeaders', () => {
  it('drops hop-by-hop fields from Buffers, keeps repeated fields and Content-Length, adds Via', () => {
    const raw = ['Content-Length', '3', 'Connection', 'close, X-Hop', 'X-Hop', '1', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'Transfer-Encoding', 'chunked', 'Proxy-Authenticate', 'Basic', 'Keep-Alive', 'timeout=5'].map((s) => Buffer.from(s, 'latin1'));
    expect(forwardResponseHeaders(raw, { via: VIA_VALUE })).toEqual(['Content-Length', '3', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'via', VIA_VALUE]);
  });
  it('keeps Upgrade on a 101 and replaces its Connection fields with our own', () => {
    expect(forwardResponseHeaders(['Upgrade', 'websocket', 'Connection', 'Upgrade'], { upgrade: true, via: VIA_VALUE })).toEqual(['Upgrade', 'websocket', 'connection', 'Upgrade', 'via', VIA_VALUE]);
    const raw = ['Upgrade', 'websocket', 'Connection', 'Upgrade, X-Hop', 'X-Hop', '1', 'Connection', 'keep-alive, close', 'X-End', '2'];
    expect(forwardResponseHeaders(raw, { upgrade: true, via: VIA_VALUE })).toEqual(['Upgrade', 'websocket', 'X-End', '2', 'connection', 'Upgrade', 'via', VIA_VALUE]);
  });
  it('returns null named-set when Connection carries only options', () => {
    expect(connectionNamedHeaders(['Connection', 'keep-alive, close'])).toBeNull();
  });
  it('dropContentLength removes every Content-Length spelling in place and keeps the rest in order', () => {
    const headers = ['X-A', '1', 'Content-Length', '2', 'content-LENGTH', '0', 'Content-Lengthy', '3', 'via', VIA_VALUE];
    dropContentLength(headers);
    expect(headers).toEqual(['X-A', '1', 'Content-Lengthy', '3', 'via', VIA_VALUE]);
  });
});

describe('unrelayableFraming', () => {
  const te = (...values: string[]): Buffer[] => values.flatMap((v) => ['Transfer-Encoding', v]).concat(['Content-Type', 'text/plain']).map((s) => Buffer.from(s, 'latin1'));
  it.each([
    [[], true],
    [['chunked'], true],
    [['Chunked'], true],
    [['identity'], true],
    [['identity, chunked'], true],
    [['gzip, chunked'], false],
    [['gzip', 'chunked'], false],
    [['chunked, gzip'], false],
    [['chunked', 'chunked'], false],
    [['chunked, identity'], false],
    [['br'], false],
  ] as const)('%j: %s', (values, expected) => {
    expect(unrelayableFraming(te(...values))).toBe(expected ? null : 'transfer-coding-not-implemented');
  });
  const cl = (value: string): Buffer[] => ['Content-Length', value, 'Content-Type', 'text/plain'].map((s) => Buffer.from(s, 'latin1'));
  it.each([
    ['2', null],
    ['999999999999999', null],
    ['9007199254740991', null],
    ['00000000000000000002', null],
    ['9007199254740992', 'content-length-not-safe-integer'],
    ['9007199254740993', 'content-length-not-safe-integer'],
    ['18446744073709551615', 'content-length-not-safe-integer'],
  ] as const)('Content-Length %s: %s', (value, expected) => {
    expect(unrelayableFraming(cl(value))).toBe(expected);
  });
  it('Transfer-Encoding in a response received in HTTP/1.0 is faulty framing (RFC 9112 §6.1); the version is asked only then', () => {
    let asked = 0;
    const as10 = { isReceivedInHttp10: () => ++asked > 0 };
    expect(unrelayableFraming(te('chunked'), as10)).toBe('transfer-encoding-in-http/1.0');
    expect(unrelayableFraming(te('identity'), as10)).toBe('transfer-encoding-in-http/1.0');
    expect(unrelayableFraming(cl('2'), as10)).toBe(null);
    expect(unrelayableFraming(te(), as10)).toBe(null);
    expect(asked).toBe(2);
    expect(unrelayableFraming(te('chunked'), { isReceivedInHttp10: () => false })).toBe(null);
  });
});

describe('parseProxyBasic / serialiseRequestHead', () => {
  it('decodes Basic credentials, keeping colons in the password', () => {
    const v = `Basic ${Buffer.from('alice:pa:ss').toString('base64')}`;
    expect(parseProxyBasic(v)).toEqual({ username: 'alice', password: 'pa:ss' });
    expect(parseProxyBasic('basic   ' + Buffer.from('bob:x').toString('base64'))).toEqual({ username: 'bob', password: 'x' });
    expect(parseProxyBasic('Bearer abc')).toBeNull();
    expect(parseProxyBasic(undefined)).toBeNull();
    expect(parseProxyBasic('Basic bm9jb2xvbg==')).toEqual({ username: '', password: '' });
  });
  it('takes one base64 token only: junk after it, or a second credential, is malformed (empty user)', () => {
    const token = Buffer.from('alice:pw').toString('base64');
    expect(parseProxyBasic(`Basic ${token.replace(/=+$/, '')}`)).toEqual({ username: 'alice', password: 'pw' });
    for (const v of [`Basic ${token} x`, `Basic ${token}!!`, `Basic ${token}, Basic ${token}`, `Basic =${token}`]) expect(parseProxyBasic(v)).toEqual({ username: '', password: '' });
  });
  it('takes only the canonical RFC 4648 encoding, padding optional: a dangling character, wrong padding or non-zero pad bits are malformed', () => {
    // 'alice:secret' encodes to 16 characters, 'carol:pw' to 'Y2Fyb2w6cHc='.
    expect(parseProxyBasic('Basic YWxpY2U6c2VjcmV0')).toEqual({ username: 'alice', password: 'secret' });
    expect(parseProxyBasic('Basic Y2Fyb2w6cHc=')).toEqual({ username: 'carol', password: 'pw' });
    expect(parseProxyBasic('Basic Y2Fyb2w6cHc')).toEqual({ username: 'carol', password: 'pw' });
    for (const t of ['YWxpY2U6c2VjcmV0x', 'YWxpY2U6c2VjcmV0x==', 'YWxpY2U6c2VjcmV0=', 'Y2Fyb2w6cHc==', 'Y2Fyb2w6cHd=', 'Y2Fyb2w6cHd', 'Y2Fyb2w6c=='])
      expect(parseProxyBasic(`Basic ${t}`)).toEqual({ username: '', password: '' });
  });
  it('takes only SP after the scheme, and a token: Basic<TAB><token> and an empty Basic are malformed (empty user)', () => {
    const token = Buffer.from('alice:pw').toString('base64');
    for (const v of [`Basic\t${token}`, `Basic \t${token}`, 'Basic', 'Basic ', `BASIC\t${token}`]) expect(parseProxyBasic(v)).toEqual({ username: '', password: '' });
    // Another scheme, however it is followed, is not Basic: no credentials.
    for (const v of [`Basicx ${token}`, `Bearer\t${token}`, 'Bearer']) expect(parseProxyBasic(v)).toBeNull();
  });
  it('serialises an origin-form head', () => {
    expect(serialiseRequestHead('GET', '/chat?x=1', ['host', 'a', 'via', VIA_VALUE])).toBe(`GET /chat?x=1 HTTP/1.1\r\nhost: a\r\nvia: 1.1 ${VIA_PSEUDONYM}\r\n\r\n`);
  });
});

describe('parseAbsoluteTarget (http-target.ts)', () => {
  it.each([
    ['http://Example.COM/a/../b?q=1#frag', { host: 'example.com', port: 80, path: '/a/../b?q=1' }],
    ['http://example.com', { host: 'example.com', port: 80, path: '/' }],
    ['http://example.com?x', { host: 'example.com', port: 80, path: '/?x' }],
    ['HTTP://example.com:8080/p', { host: 'example.com', port: 8080, path: '/p' }],
    ['http://[::1]:81/x', { host: '::1', port: 81, path: '/x' }],
    ['http://bücher.de/', { host: 'xn--bcher-kva.de', port: 80, path: '/' }],
  ])('%s', (url, want) => {
    expect(parseAbsoluteTarget(url)).toMatchObject({ ok: true, ...want });
  });
  it.each([
    ['/relative', 'not-absolute-uri'],
    ['*', 'not-absolute-uri'],
    ['ftp://example.com/', 'not-absolute-uri'],
    ['https://example.com/', 'https-scheme-unsupported'],
    ['http://user:pw@example.com/', 'bad-authority'],
    ['http://example.com:0/', 'bad-authority'],
    ['http:///path', 'bad-authority'],
  ])('refuses %s (%s)', (url, reason) => {
    expect(parseAbsoluteTarget(url)).toEqual({ ok: false, reason });
  });
  it('keeps the origin port out of Host only when it is 80', () => {
    expect(hostHeaderFor('example.com', 80)).toBe('example.com');
    expect(hostHeaderFor('example.com', 8080)).toBe('example.com:8080');
    expect(hostHeaderFor('::1', 80)).toBe('[::1]');
    expect(hostHeaderFor('::1', 81)).toBe('[::1]:81');
  });
});

describe('viaFor', () => {
  it('is the received version: 1.0 for HTTP/1.0, the 1.1 constant otherwise; forwarders take it', () => {
    expect(viaFor(NAME, 1, 0)).toBe(`1.0 ${VIA_PSEUDONYM}`);
    expect(viaFor(NAME, 1, 1)).toBe(VIA_VALUE);
    expect(forwardRequestHeaders(['Accept', '*/*'], { host: 'h', stripped: new Set(), via: NAME.value10 }).slice(-2)).toEqual(['via', `1.0 ${VIA_PSEUDONYM}`]);
    expect(forwardResponseHeaders(['Server', 'x'], { via: viaFor(NAME, 1, 0) }).slice(-2)).toEqual(['via', `1.0 ${VIA_PSEUDONYM}`]);
  });
});

describe('viaNamesUs and viaOnward (via.ts)', () => {
  // Regression: every egressgate was `egressgate` in Via, so a loop could not be told from two
  // chained gateways, and the CONNECT to a parent carried no Via at all.
  it('names are drawn per gateway; only our own entry is a loop', () => {
    const other = newViaName();
    expect(NAME.pseudonym).toMatch(/^egressgate-[0-9a-f]{12}$/);
    expect(other.pseudonym).not.toBe(NAME.pseudonym);
    expect(viaNamesUs(undefined, NAME)).toBe(false);
    expect(viaNamesUs(`1.1 ${other.pseudonym}, 1.1 egressgate`, NAME)).toBe(false);
    expect(viaNamesUs(`1.1 squid, 1.0 ${NAME.pseudonym.toUpperCase()} (comment)`, NAME)).toBe(true);
    expect(viaNamesUs(['1.1 squid', NAME.value], NAME)).toBe(true);
    expect(viaNamesUs(`1.1 squid (${NAME.pseudonym})`, NAME)).toBe(false);
  });
  it('the CONNECT to a parent carries the received entries and ours', () => {
    expect(viaOnward(undefined, NAME.value)).toBe(NAME.value);
    expect(viaOnward('1.1 squid', NAME.value)).toBe(`1.1 squid, ${NAME.value}`);
    expect(viaOnward(['1.1 a', '1.0 b'], NAME.value)).toBe(`1.1 a, 1.0 b, ${NAME.value}`);
  });
});

describe('smugglingShape (http-target.ts)', () => {
  const req = (raw: string[], major = 1) => {
    const headers: Record<string, string> = {};
    for (let i = 0; i < raw.length; i += 2) headers[(raw[i] as string).toLowerCase()] = raw[i + 1] as string;
    return { httpVersionMajor: major, headers, rawHeaders: raw };
  };
  it.each([
    [['Content-Length', '5', 'Transfer-Encoding', 'chunked'], 'content-length-with-transfer-encoding'],
    [['Content-Length', '5', 'content-length', '5'], 'duplicate-content-length'],
    [['Transfer-Encoding', 'gzip'], 'transfer-encoding-not-chunked'],
    [['Transfer-Encoding', 'chunked, chunked'], 'transfer-encoding-not-chunked'],
    [['Transfer-Encoding', 'chunked, gzip'], 'transfer-encoding-not-chunked'],
    [['Transfer-Encoding', 'gzip, chunked, chunked'], 'transfer-encoding-not-chunked'],
    [['Transfer-Encoding', 'gzip, chunked'], 'transfer-coding-not-implemented'],
    [['Transfer-Encoding', 'x-custom;p=1 , Chunked'], 'transfer-coding-not-implemented'],
    [['Transfer-Encoding', 'gzip, chunked', 'Content-Length', '5'], 'content-length-with-transfer-encoding'],
    [['Transfer-Encoding', 'Chunked'], null],
    [['Content-Length', '5'], null],
    [['Content-Length', '9007199254740991'], null],
    [['Content-Length', '000000000000000000005'], null],
    [['Content-Length', '9007199254740992'], 'content-length-not-safe-integer'],
    [['Content-Length', '18446744073709551615'], 'content-length-not-safe-integer'],
    [['Host', 'a.example', 'host', 'a.example'], 'duplicate-host'],
    [['Host', 'a b'], 'invalid-host'],
    [['Host', 'a.example:8080', 'Content-Length', '5'], null],
    [[], null],
  ] as Array<[string[], string | null]>)('%j → %s', (raw, want) => {
    expect(smugglingShape(req(raw))).toBe(want);
  });
  it('maps an unimplemented coding to 501, every other shape to 400', () => {
    expect(shapeRefusalCode('transfer-coding-not-implemented')).toBe('EGW_TRANSFER_CODING');
    expect(shapeRefusalCode('transfer-encoding-not-chunked')).toBe('EGW_BAD_REQUEST');
    expect(shapeRefusalCode('duplicate-content-length')).toBe('EGW_BAD_REQUEST');
  });
  it('refuses a Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1), not in HTTP/1.1', () => {
    expect(smugglingShape({ ...req(['Transfer-Encoding', 'chunked']), httpVersionMinor: 0 })).toBe('transfer-encoding-in-http/1.0');
    expect(smugglingShape({ ...req(['Transfer-Encoding', 'chunked']), httpVersionMinor: 1 })).toBeNull();
    expect(smugglingShape({ ...req(['Content-Length', '5']), httpVersionMinor: 0 })).toBeNull();
    expect(shapeRefusalCode('transfer-encoding-in-http/1.0')).toBe('EGW_BAD_REQUEST');
  });
  it('refuses HTTP/0.9', () => {
    expect(smugglingShape(req([], 0))).toBe('http/0.9');
  });
  it('refuses HTTP/2.0 in an HTTP/1 request line: 505', () => {
    expect(smugglingShape(req([], 2))).toBe('http-version-not-supported');
    expect(shapeRefusalCode('http-version-not-supported')).toBe('EGW_HTTP_VERSION');
    expect(shapeRefusalCode('http/0.9')).toBe('EGW_BAD_REQUEST');
    expect(httpVersionFault(1)).toBeNull();
  });
});

describe('isValidHostField and hostFieldFault (http-target.ts): RFC 9112 §3.2', () => {
  it.each(['a.example', 'A.Example:8080', 'a.example:', '', '127.0.0.1:80', '[::1]', '[::1]:443', '[::ffff:127.0.0.1]', '[v1.x:y]', "a!$&'()*+,;=_~-b", 'a%41b', '1.2.3.4.5', 'a,b'])('%j is valid', (v) => {
    expect(isValidHostField(v)).toBe(true);
  });
  it.each(['a b', 'a/b', 'user@a', 'a:b', 'a:80:80', '[::1', '[::g]', '[fe80::1%eth0]', '::1', 'a%4', 'a%zz', 'é.example', 'a, b', 'a\tb', '[::1]x'])('%j is invalid', (v) => {
    expect(isValidHostField(v)).toBe(false);
  });
  it('names Host twice (raw names) and an invalid value; no Host is no fault', () => {
    expect(hostFieldFault({ host: 'a' }, ['Host', 'a', 'HOST', 'b'])).toBe('duplicate-host');
    expect(hostFieldFault({ host: 'a b' }, undefined)).toBe('invalid-host');
    expect(hostFieldFault({ host: 'a' }, ['Host', 'a'])).toBeNull();
    expect(hostFieldFault({}, [])).toBeNull();
  });
});

describe('connectContentFault (http-target.ts): RFC 9110 §9.3.6, a CONNECT has no content', () => {
  it('names a Transfer-Encoding and a Content-Length other than 0; none, or 0, is no fault', () => {
    expect(connectContentFault({ 'transfer-encoding': 'chunked' })).toBe('connect-with-transfer-encoding');
    expect(connectContentFault({ 'content-length': '5' })).toBe('connect-with-content-length');
    expect(connectContentFault({ 'content-length': '0' })).toBeNull();
    expect(connectContentFault({ 'content-length': '00' })).toBeNull();
    expect(connectContentFault({ host: 'a:443' })).toBeNull();
  });
});
