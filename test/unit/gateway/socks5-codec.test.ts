import { describe, expect, it } from 'vitest';
import {
  encodeAddress,
  encodeReply,
  encodeUdpHeader,
  newUdpHeader,
  parseAddress,
  parseGreeting,
  parseRequest,
  parseUdpHeader,
  parseUserPass,
  udpHeaderHost,
} from '../../../gateway/protocol/socks5-codec.ts';

const b = (...bytes: number[]): Buffer => Buffer.from(bytes);

/** Every proper prefix must be "need", the whole must parse: bytes can arrive split anywhere. */
function everyPrefixNeeds(parse: (buf: Buffer) => { kind: string }, whole: Buffer): void {
  for (let i = 0; i < whole.length; i++) expect(parse(whole.subarray(0, i)).kind, `prefix ${i}`).toBe('need');
  expect(parse(whole).kind).toBe('ok');
}

describe('socks5 greeting', () => {
  it('parses methods and reports consumed bytes', () => {
    const r = parseGreeting(b(5, 2, 0, 2, 0xaa));
    expect(r).toEqual({ kind: 'ok', value: { hasNoAuth: true, hasUserPass: true, methodCount: 2 }, consumed: 4 });
    everyPrefixNeeds(parseGreeting, b(5, 3, 1, 2, 0x80));
  });
  it.each([
    ['bad version', b(4, 1, 0), 'EGW_SOCKS_PROTOCOL'],
    ['zero methods', b(5, 0), 'EGW_SOCKS_PROTOCOL'],
    ['http on the socks port', Buffer.from('GET / HTTP/1.1\r\n'), 'EGW_SOCKS_PROTOCOL'],
  ])('%s is an error', (_name, buf, code) => {
    const r = parseGreeting(buf);
    expect(r.kind).toBe('error');
    if (r.kind === 'error') expect(r.code).toBe(code);
  });
});

describe('RFC 1929 username/password', () => {
  it('parses, incl. utf8 and empty password', () => {
    const msg = Buffer.concat([b(1, 5), Buffer.from('alice'), b(3), Buffer.from('p:w')]);
    expect(parseUserPass(msg)).toEqual({ kind: 'ok', value: { username: 'alice', password: 'p:w' }, consumed: 11 });
    everyPrefixNeeds(parseUserPass, msg);
    expect(parseUserPass(Buffer.concat([b(1, 1), Buffer.from('u'), b(0)]))).toMatchObject({ kind: 'ok', value: { password: '' } });
  });
  it('rejects a bad sub-negotiation version', () => {
    expect(parseUserPass(b(5, 1, 0x61, 1, 0x62)).kind).toBe('error');
  });
  it('parses an empty username (a failed login for identity resolution, not a protocol error)', () => {
    const msg = b(1, 0, 2, 0x70, 0x77);
    expect(parseUserPass(msg)).toEqual({ kind: 'ok', value: { username: '', password: 'pw' }, consumed: 5 });
    everyPrefixNeeds(parseUserPass, msg);
    expect(parseUserPass(b(1, 0, 0))).toEqual({ kind: 'ok', value: { username: '', password: '' }, consumed: 3 });
  });
});

describe('socks5 request', () => {
  it('CONNECT IPv4', () => {
    const msg = b(5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90);
    expect(parseRequest(msg)).toEqual({
      kind: 'ok',
      value: { command: 'connect', host: '127.0.0.1', port: 8080, atyp: 1 },
      consumed: 10,
    });
    everyPrefixNeeds(parseRequest, msg);
  });
  it('CONNECT IPv6, compressed like Node prints it', () => {
    const msg = b(5, 1, 0, 4, ...new Array(15).fill(0), 1, 0, 80);
    expect(parseRequest(msg)).toMatchObject({ kind: 'ok', value: { host: '::1', port: 80, atyp: 4 }, consumed: 22 });
    const doc = b(5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 5, 1, 0xbb);
    expect(parseRequest(doc)).toMatchObject({ value: { host: '2001:db8::1:0:0:5', port: 443 } });
    const mapped = b(5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 169, 254, 0, 80);
    expect(parseRequest(mapped)).toMatchObject({ value: { host: '::ffff:169.254.169.254' } });
    everyPrefixNeeds(parseRequest, msg);
  });
  it('CONNECT domain, lower-cased, trailing dot dropped', () => {
    const name = Buffer.from('Files.Example.TEST.');
    const msg = Buffer.concat([b(5, 1, 0, 3, name.length), name, b(1, 0xbb)]);
    expect(parseRequest(msg)).toMatchObject({ kind: 'ok', value: { host: 'files.example.test', port: 443, atyp: 3 } });
    everyPrefixNeeds(parseRequest, msg);
  });
  it('UDP ASSOCIATE', () => {
    expect(parseRequest(b(5, 3, 0, 1, 0, 0, 0, 0, 0, 0))).toMatchObject({
      kind: 'ok',
      value: { command: 'udp-associate', host: '0.0.0.0', port: 0 },
    });
  });
  it.each([
    ['BIND', b(5, 2, 0, 1, 1, 2, 3, 4, 0, 80), 'EGW_SOCKS_COMMAND'],
    ['unknown command', b(5, 9, 0, 1, 1, 2, 3, 4, 0, 80), 'EGW_SOCKS_COMMAND'],
    ['unknown ATYP', b(5, 1, 0, 7, 1, 2, 3, 4), 'EGW_SOCKS_ADDRESS_TYPE'],
    ['bad version', b(4, 1, 0, 1, 1, 2, 3, 4, 0, 80), 'EGW_SOCKS_PROTOCOL'],
    ['empty domain', b(5, 1, 0, 3, 0, 0, 80), 'EGW_SOCKS_PROTOCOL'],
    ['NUL in domain', Buffer.concat([b(5, 1, 0, 3, 5), Buffer.from('a\0b.c'), b(0, 80)]), 'EGW_SOCKS_PROTOCOL'],
    ['userinfo in domain', Buffer.concat([b(5, 1, 0, 3, 5), Buffer.from('a@b.c'), b(0, 80)]), 'EGW_SOCKS_PROTOCOL'],
    ['double dot', Buffer.concat([b(5, 1, 0, 3, 4), Buffer.from('a..b'), b(0, 80)]), 'EGW_SOCKS_PROTOCOL'],
  ])('%s is a coded error', (_name, buf, code) => {
    const r = parseRequest(buf);
    expect(r.kind).toBe('error');
    if (r.kind === 'error') expect(r.code).toBe(code);
  });
});

describe('encoders', () => {
  it('replies carry the bound address', () => {
    expect(encodeReply(0, '127.0.0.1', 1080)).toEqual(b(5, 0, 0, 1, 127, 0, 0, 1, 4, 0x38));
    expect(encodeReply(2)).toEqual(b(5, 2, 0, 1, 0, 0, 0, 0, 0, 0));
    expect(encodeReply(0, '::ffff:10.0.0.1', 1)).toEqual(b(5, 0, 0, 1, 10, 0, 0, 1, 0, 1));
    expect(encodeReply(0, '::1', 80)).toEqual(b(5, 0, 0, 4, ...new Array(15).fill(0), 1, 0, 80));
  });
  it.each(['::1', '2001:db8::1:0:0:5', 'fe80::1:2', '1:2:3:4:5:6:7:8', '::', '64:ff9b::c000:221'])(
    'IPv6 %s round-trips',
    (ip) => {
      const enc = encodeAddress(ip, 9);
      expect(parseAddress(enc, 0)).toMatchObject({ kind: 'ok', value: { host: ip, port: 9 }, consumed: 19 });
    },
  );
  it('domain addresses round-trip', () => {
    expect(parseAddress(encodeAddress('example.com', 53), 0)).toMatchObject({ value: { host: 'example.com', port: 53, atyp: 3 } });
  });
});

describe('UDP header', () => {
  it('parses into a reused holder and names the key range', () => {
    const h = newUdpHeader();
    const dgram = Buffer.concat([encodeUdpHeader('127.0.0.1', 7), Buffer.from('ping')]);
    expect(parseUdpHeader(dgram, h)).toBe(true);
    expect(h).toEqual({ frag: 0, atyp: 1, keyStart: 3, keyEnd: 10, port: 7, dataOffset: 10 });
    expect(dgram.toString('utf8', h.dataOffset)).toBe('ping');
    expect(udpHeaderHost(dgram, h)).toBe('127.0.0.1');
    const frag = Buffer.from(dgram);
    frag[2] = 1;
    expect(parseUdpHeader(frag, h)).toBe(true);
    expect(h.frag).toBe(1);
  });
  it.each([
    ['short', b(0, 0, 0)],
    ['RSV set', b(1, 0, 0, 1, 127, 0, 0, 1, 0, 7)],
    ['truncated address', b(0, 0, 0, 1, 127, 0)],
    ['unknown ATYP', b(0, 0, 0, 9, 127, 0, 0, 1, 0, 7)],
    ['empty domain', b(0, 0, 0, 3, 0, 0, 7)],
    ['DST.PORT 0', b(0, 0, 0, 1, 127, 0, 0, 1, 0, 0, 0x41)],
  ])('%s is refused', (_name, buf) => {
    expect(parseUdpHeader(buf, newUdpHeader())).toBe(false);
  });
});
