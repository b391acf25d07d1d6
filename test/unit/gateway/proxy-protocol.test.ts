/**
 * PROXY protocol v1/v2 codec: table of headers (hand-written bytes, not the encoder's), every split
 * point, garbage, oversized v1 lines, bad signatures, and encoder round trips.
 */
import { describe, expect, it } from 'vitest';
import {
  detectProxySignature,
  encodeProxyV1,
  encodeProxyV2,
  type ProxyParse,
  parseProxyHeader,
  V1_MAX_BYTES,
} from '../../../gateway/protocol/proxy-protocol.ts';

const ascii = (s: string): Buffer => Buffer.from(s, 'latin1');
const SIG = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
const v2 = (...rest: number[]): Buffer => Buffer.from([...SIG, ...rest]);

// v2 PROXY TCP/IPv4 203.0.113.7:4444 → 10.0.0.1:443, length 12.
const V2_TCP4 = v2(0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 7, 10, 0, 0, 1, 0x11, 0x5c, 0x01, 0xbb);
// v2 PROXY TCP/IPv6 2001:db8::7:4444 → 2001:db8::1:443, length 36.
const V2_TCP6 = v2(
  0x21,
  0x21,
  0x00,
  0x24,
  ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07],
  ...[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
  0x11,
  0x5c,
  0x01,
  0xbb,
);
// v2 LOCAL (health check), UNSPEC, no addresses.
const V2_LOCAL = v2(0x20, 0x00, 0x00, 0x00);
// v2 PROXY IPv4 with two TLVs after the addresses (ALPN "h2", a NOOP of 3 bytes): length 12 + 5 + 6.
const V2_TLVS = v2(0x21, 0x11, 0x00, 0x17, 198, 51, 100, 9, 10, 0, 0, 1, 0x00, 0x50, 0x00, 0x50, 0x01, 0x00, 0x02, 0x68, 0x32, 0x04, 0x00, 0x03, 0, 0, 0);

describe('PROXY header codec: accepted headers', () => {
  it.each<[string, Buffer, Record<string, unknown>]>([
    [
      'v1 TCP4',
      ascii('PROXY TCP4 203.0.113.7 10.0.0.1 4444 443\r\n'),
      { version: 1, command: 'PROXY', family: 'IPv4', srcIp: '203.0.113.7', srcPort: 4444, dstIp: '10.0.0.1', dstPort: 443 },
    ],
    [
      'v1 TCP6',
      ascii('PROXY TCP6 2001:DB8::7 2001:db8::1 65535 0\r\n'),
      { version: 1, command: 'PROXY', family: 'IPv6', srcIp: '2001:db8::7', srcPort: 65535, dstIp: '2001:db8::1', dstPort: 0 },
    ],
    // Any IPv6 spelling as RFC 5952 writes it, the form flows are known by (agent reports join on it).
    [
      'v1 TCP6 uncompressed, leading zeros',
      ascii('PROXY TCP6 2001:0db8:0:0:0:0:0:0007 0:0:0:0:0:FFFF:7F00:1 4444 443\r\n'),
      { family: 'IPv6', srcIp: '2001:db8::7', dstIp: '::ffff:127.0.0.1' },
    ],
    ['v1 UNKNOWN', ascii('PROXY UNKNOWN\r\n'), { version: 1, family: 'UNSPEC', srcIp: null, srcPort: null }],
    ['v1 UNKNOWN with ignored addresses', ascii('PROXY UNKNOWN ffff:: ffff:: 1 2\r\n'), { version: 1, family: 'UNSPEC', srcIp: null }],
    ['v2 IPv4', V2_TCP4, { version: 2, command: 'PROXY', family: 'IPv4', transport: 'STREAM', srcIp: '203.0.113.7', srcPort: 4444, dstIp: '10.0.0.1', dstPort: 443 }],
    ['v2 IPv6', V2_TCP6, { version: 2, command: 'PROXY', family: 'IPv6', srcIp: '2001:db8::7', srcPort: 4444, dstIp: '2001:db8::1', dstPort: 443 }],
    ['v2 LOCAL', V2_LOCAL, { version: 2, command: 'LOCAL', family: 'UNSPEC', srcIp: null, srcPort: null, dstIp: null }],
    ['v2 IPv4 with TLVs skipped', V2_TLVS, { version: 2, command: 'PROXY', srcIp: '198.51.100.9', srcPort: 80, dstPort: 80 }],
    // LOCAL with an address block: the addresses are ignored (the balancer speaks for itself).
    ['v2 LOCAL with addresses', v2(0x20, 0x11, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2), { command: 'LOCAL', family: 'IPv4', srcIp: null }],
    ['v2 PROXY UNSPEC', v2(0x21, 0x00, 0x00, 0x00), { command: 'PROXY', family: 'UNSPEC', srcIp: null }],
    // LOCAL: the block is discarded whatever its family says, an address block or not.
    ['v2 LOCAL IPv4 without addresses', v2(0x20, 0x11, 0x00, 0x00), { command: 'LOCAL', family: 'IPv4', srcIp: null }],
    ['v2 LOCAL with an undefined family', v2(0x20, 0x41, 0x00, 0x00), { command: 'LOCAL', family: 'UNSPEC', srcIp: null }],
  ])('%s', (_name, bytes, want) => {
    const r = parseProxyHeader(bytes);
    expect(r.kind).toBe('header');
    if (r.kind !== 'header') return;
    expect(r.consumed).toBe(bytes.length);
    expect(r.header).toMatchObject(want);
  });

  it('reports consumed so the bytes after the header stay with the caller', () => {
    const head = ascii('PROXY TCP4 203.0.113.7 10.0.0.1 4444 443\r\n');
    const r = parseProxyHeader(Buffer.concat([head, ascii('CONNECT a:1 HTTP/1.1\r\n')]));
    expect(r).toMatchObject({ kind: 'header', consumed: head.length });
    const r2 = parseProxyHeader(Buffer.concat([V2_TLVS, Buffer.from([5, 1, 0])]));
    expect(r2).toMatchObject({ kind: 'header', consumed: V2_TLVS.length });
  });

  it('IPv6 text is canonical (RFC 5952): longest zero run compressed, none for a single zero', () => {
    const ip6 = (groups: number[]): Buffer => {
      const b = Buffer.alloc(16);
      for (let i = 0; i < 8; i++) b.writeUInt16BE(groups[i] ?? 0, i * 2);
      return b;
    };
    const cases: Array<[number[], string]> = [
      [[0, 0, 0, 0, 0, 0, 0, 1], '::1'],
      [[0x2001, 0xdb8, 0, 0, 1, 0, 0, 0], '2001:db8:0:0:1::'],
      [[0x2001, 0xdb8, 0, 1, 1, 1, 1, 1], '2001:db8:0:1:1:1:1:1'],
      // IPv4-mapped with its dotted tail (RFC 5952 §5), as every record spells it.
      [[0, 0, 0, 0, 0, 0xffff, 0xcb00, 0x7107], '::ffff:203.0.113.7'],
      [[0, 0, 0, 0, 0, 0xffff, 0, 0], '::ffff:0.0.0.0'],
      [[0, 0, 0, 0, 0xffff, 0, 0xcb00, 0x7107], '::ffff:0:cb00:7107'],
      [[0, 0, 0, 0, 0, 0, 0xcb00, 0x7107], '::cb00:7107'],
      [[0, 0, 0, 0, 0, 0, 0, 0], '::'],
    ];
    for (const [groups, text] of cases) {
      const bytes = Buffer.concat([Buffer.from(SIG), Buffer.from([0x21, 0x21, 0x00, 0x24]), ip6(groups), ip6([0, 0, 0, 0, 0, 0, 0, 1]), Buffer.from([0, 1, 0, 2])]);
      const r = parseProxyHeader(bytes);
      expect(r.kind === 'header' ? r.header.srcIp : r.kind, text).toBe(text);
    }
  });
});

describe('PROXY header codec: split anywhere', () => {
  it.each([
    ['v1 TCP4', ascii('PROXY TCP4 203.0.113.7 10.0.0.1 4444 443\r\n')],
    ['v1 UNKNOWN', ascii('PROXY UNKNOWN\r\n')],
    ['v2 IPv4', V2_TCP4],
    ['v2 IPv6', V2_TCP6],
    ['v2 LOCAL', V2_LOCAL],
    ['v2 LOCAL with addresses', v2(0x20, 0x11, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2)],
    ['v2 TLVs', V2_TLVS],
  ])('%s: every proper prefix needs more, byte-by-byte feeding ends in the same header', (_name, whole) => {
    const full = parseProxyHeader(whole);
    expect(full.kind).toBe('header');
    let buf = Buffer.alloc(0);
    let last: ProxyParse = { kind: 'need' };
    for (let i = 0; i < whole.length; i++) {
      expect(last.kind, `after ${i} bytes`).toBe('need');
      buf = Buffer.concat([buf, whole.subarray(i, i + 1)]);
      last = parseProxyHeader(buf);
    }
    expect(last).toEqual(full);
  });
});

describe('PROXY header codec: refused bytes', () => {
  it.each<[string, Buffer, string]>([
    ['HTTP request', ascii('CONNECT example.com:443 HTTP/1.1\r\n\r\n'), 'no-signature'],
    ['SOCKS5 greeting', Buffer.from([5, 1, 0]), 'no-signature'],
    ['lower-case proxy', ascii('proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), 'no-signature'],
    ['v2 signature with one wrong byte', Buffer.from([...SIG.slice(0, 11), 0x0b, 0x21, 0x11, 0, 12]), 'no-signature'],
    ['garbage', Buffer.from([0xde, 0xad, 0xbe, 0xef]), 'no-signature'],
    ['v1 unknown protocol', ascii('PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n'), 'unsupported'],
    ['v1 LF without CR', ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'), 'malformed'],
    ['v1 missing field', ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n'), 'malformed'],
    ['v1 double space', ascii('PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n'), 'malformed'],
    ['v1 IPv6 under TCP4', ascii('PROXY TCP4 ::1 ::1 1 2\r\n'), 'malformed'],
    ['v1 IPv4 under TCP6', ascii('PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n'), 'malformed'],
    ['v1 bad address', ascii('PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n'), 'malformed'],
    ['v1 port over 65535', ascii('PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n'), 'malformed'],
    ['v1 port with a leading zero', ascii('PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n'), 'malformed'],
    ['v1 signed port', ascii('PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n'), 'malformed'],
    ['v1 zone id', ascii('PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n'), 'malformed'],
    ['v1 non-printable byte', Buffer.concat([ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2'), Buffer.from([0x00, 0x0d, 0x0a])]), 'malformed'],
    ['v1 oversized (no CRLF in 107 bytes)', ascii(`PROXY UNKNOWN ${'a'.repeat(V1_MAX_BYTES)}`), 'too-long'],
    ['v1 CRLF just past 107 bytes', ascii(`PROXY UNKNOWN ${'a'.repeat(V1_MAX_BYTES - 15)}\r\n`), 'too-long'],
    ['v2 version 1', v2(0x11, 0x11, 0, 12), 'unsupported'],
    ['v2 command 2', v2(0x22, 0x11, 0, 12), 'unsupported'],
    ['v2 family 4', v2(0x21, 0x41, 0, 0), 'unsupported'],
    ['v2 protocol 3', v2(0x21, 0x13, 0, 12), 'unsupported'],
    ['v2 PROXY IPv4 with UNSPEC protocol', v2(0x21, 0x10, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2), 'unsupported'],
    ['v2 PROXY UNSPEC with STREAM', v2(0x21, 0x01, 0, 0), 'unsupported'],
    ['v2 IPv4 length too short', v2(0x21, 0x11, 0, 11, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0), 'malformed'],
    ['v2 IPv6 length too short', v2(0x21, 0x21, 0, 12, ...new Array<number>(12).fill(0)), 'malformed'],
  ])('%s', (_name, bytes, code) => {
    const r = parseProxyHeader(bytes);
    expect(r.kind).toBe('error');
    if (r.kind === 'error') expect(r.code).toBe(code);
  });

  it('a 107-byte v1 line is the longest accepted', () => {
    const line = ascii(`PROXY UNKNOWN ${'a'.repeat(V1_MAX_BYTES - 16)}\r\n`);
    expect(line.length).toBe(V1_MAX_BYTES);
    expect(parseProxyHeader(line)).toMatchObject({ kind: 'header', consumed: V1_MAX_BYTES });
    expect(parseProxyHeader(line.subarray(0, V1_MAX_BYTES - 1)).kind).toBe('need');
  });

  it('a bad v2 version is refused as soon as its byte arrives', () => {
    expect(parseProxyHeader(v2(0x31)).kind).toBe('error');
    expect(parseProxyHeader(v2(0x21)).kind).toBe('need');
  });

  it('the empty buffer needs more', () => {
    expect(parseProxyHeader(Buffer.alloc(0)).kind).toBe('need');
  });
});

describe('signature detection (untrusted peers)', () => {
  it.each<[string, Buffer, string]>([
    ['empty', Buffer.alloc(0), 'partial'],
    ['"PRO"', ascii('PRO'), 'partial'],
    ['"PROXY " exactly', ascii('PROXY '), 'v1'],
    ['"POST "', ascii('POST / HTTP/1.1'), 'none'],
    ['"PUT"', ascii('PUT'), 'none'],
    ['CRLF (could be v2)', ascii('\r\n'), 'partial'],
    ['CRLF + GET (HTTP tolerates leading CRLF)', ascii('\r\nGET'), 'none'],
    ['whole v2 signature', Buffer.from(SIG), 'v2'],
    ['SOCKS5', Buffer.from([5]), 'none'],
  ])('%s', (_name, bytes, want) => {
    expect(detectProxySignature(bytes)).toBe(want);
  });
});

describe('encoders', () => {
  it('v1 and v2 round-trip through the parser', () => {
    const cases = [
      { srcIp: '203.0.113.7', srcPort: 4444, dstIp: '127.0.0.1', dstPort: 1080 },
      { srcIp: '2001:db8::7', srcPort: 1, dstIp: '::1', dstPort: 65535 },
      { srcIp: '::ffff:203.0.113.7', srcPort: 9, dstIp: '::', dstPort: 8 },
    ];
    for (const addr of cases) {
      for (const bytes of [encodeProxyV1(addr), encodeProxyV2(addr), encodeProxyV2(addr, Buffer.from([0x04, 0x00, 0x01, 0x00]))]) {
        const r = parseProxyHeader(bytes);
        expect(r.kind, bytes.toString('hex')).toBe('header');
        if (r.kind !== 'header') continue;
        expect(r.consumed).toBe(bytes.length);
        expect(r.header.srcPort).toBe(addr.srcPort);
        expect(r.header.dstPort).toBe(addr.dstPort);
      }
    }
    expect(encodeProxyV2(cases[0] ?? null)).toEqual(v2(0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 7, 127, 0, 0, 1, 0x11, 0x5c, 0x04, 0x38));
    expect(encodeProxyV2(null)).toEqual(V2_LOCAL);
    expect(encodeProxyV1(null).toString()).toBe('PROXY UNKNOWN\r\n');
  });
});
