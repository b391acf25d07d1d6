/**
 * PROXY protocol v1 (text) and v2 (binary) headers, as a TCP load balancer prepends them to say who
 * the original client was (haproxy's proxy-protocol.txt). Pure `Buffer` in → "need more bytes" /
 * header + bytes consumed / coded error out, and the encoders (tests, parent proxies). No sockets,
 * no timers: the front (gateway/listeners/proxy-protocol-front.ts) feeds whatever has arrived, so a
 * header split anywhere — one byte at a time — parses the same as one written whole.
 *
 *  v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN …\r\n`, at most 107 bytes.
 *  v2: 12-byte signature, ver/cmd, fam/proto, 16-bit length, addresses, then TLVs (skipped).
 */
import { canonicalIPv6, formatIPv6 } from '../../policy/address.ts';
import { isIPv4, isIPv6 } from 'node:net';

/** `LOCAL` (v2 health checks, v1 `UNKNOWN`): keep the real peer. `PROXY`: the addresses are the client's. */
export type ProxyCommand = 'LOCAL' | 'PROXY';
/** Address family: IPv4/IPv6 carry addresses; UNIX and UNSPEC do not (the real peer is kept). */
export type ProxyFamily = 'IPv4' | 'IPv6' | 'UNIX' | 'UNSPEC';
export type ProxyTransport = 'STREAM' | 'DGRAM' | 'UNSPEC';

export interface ProxyHeader {
  readonly version: 1 | 2;
  readonly command: ProxyCommand;
  readonly family: ProxyFamily;
  readonly transport: ProxyTransport;
  /** The original client (IPv4/IPv6 with command PROXY); null when the header carries no address. */
  readonly srcIp: string | null;
  readonly srcPort: number | null;
  /** The address the client connected to (the load balancer's front), or null. */
  readonly dstIp: string | null;
  readonly dstPort: number | null;
}

/** Why a header was refused. `no-signature`: the bytes are not a PROXY header at all. */
export type ProxyHeaderErrorCode = 'no-signature' | 'malformed' | 'too-long' | 'unsupported';

export type ProxyParse =
  | { readonly kind: 'need' }
  | { readonly kind: 'header'; readonly header: ProxyHeader; readonly consumed: number }
  | { readonly kind: 'error'; readonly code: ProxyHeaderErrorCode; readonly reason: string };

/** The v1 line limit from the spec, CRLF included ("PROXY UNKNOWN" + two IPv6 + two ports). */
export const V1_MAX_BYTES = 107;
export const V1_SIGNATURE = Buffer.from('PROXY ', 'latin1');
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_FIXED_BYTES = 16;

const NEED = Object.freeze({ kind: 'need' as const });

function fail(code: ProxyHeaderErrorCode, reason: string): ProxyParse {
  return { kind: 'error', code, reason };
}

/** How far `buf` matches `sig` from its start: 'full', 'partial' (a proper prefix so far) or 'none'. */
function prefixMatch(buf: Buffer, sig: Buffer): 'full' | 'partial' | 'none' {
  const n = Math.min(buf.length, sig.length);
  for (let i = 0; i < n; i++) if (buf[i] !== sig[i]) return 'none';
  return buf.length >= sig.length ? 'full' : 'partial';
}

/**
 * Which signature the bytes start with: 'v1' / 'v2', 'partial' (too few bytes to tell yet), or
 * 'none'. Used on untrusted peers, whose headers are refused, never parsed.
 */
export function detectProxySignature(buf: Buffer): 'v1' | 'v2' | 'partial' | 'none' {
  const v1 = prefixMatch(buf, V1_SIGNATURE);
  if (v1 === 'full') return 'v1';
  const v2 = prefixMatch(buf, V2_SIGNATURE);
  if (v2 === 'full') return 'v2';
  return v1 === 'partial' || v2 === 'partial' ? 'partial' : 'none';
}

/** Parse a v1 or v2 header at the start of `buf`. */
export function parseProxyHeader(buf: Buffer): ProxyParse {
  switch (detectProxySignature(buf)) {
    case 'v1':
      return parseV1(buf);
    case 'v2':
      return parseV2(buf);
    case 'partial':
      return NEED;
    case 'none':
      return fail('no-signature', 'no PROXY protocol signature');
  }
}

const PORT = /^(?:0|[1-9][0-9]{0,4})$/;

function parsePort(text: string): number | null {
  if (!PORT.test(text)) return null;
  const n = Number(text);
  return n <= 65535 ? n : null;
}

function parseV1(buf: Buffer): ProxyParse {
  const lf = buf.indexOf(0x0a);
  if (lf === -1 || lf >= V1_MAX_BYTES) {
    return buf.length >= V1_MAX_BYTES ? fail('too-long', `v1 header has no CRLF within ${V1_MAX_BYTES} bytes`) : NEED;
  }
  if (lf === 0 || buf[lf - 1] !== 0x0d) return fail('malformed', 'v1 header line does not end in CRLF');
  const line = buf.toString('latin1', 0, lf - 1);
  // Printable US-ASCII only: anything else is not a header a load balancer wrote.
  if (!/^[\x20-\x7e]*$/.test(line)) return fail('malformed', 'v1 header has non-printable bytes');
  const fields = line.split(' ');
  const proto = fields[1];
  if (proto === 'UNKNOWN') {
    // The spec lets the rest of an UNKNOWN line be anything: the receiver ignores it.
    return { kind: 'header', header: noAddress(1, 'PROXY', 'UNSPEC', 'UNSPEC'), consumed: lf + 1 };
  }
  if (proto !== 'TCP4' && proto !== 'TCP6') return fail('unsupported', `v1 protocol ${JSON.stringify(proto ?? '')} is not TCP4, TCP6 or UNKNOWN`);
  if (fields.length !== 6) return fail('malformed', `v1 ${proto} header needs 6 single-space separated fields, got ${fields.length}`);
  const [, , src, dst, sport, dport] = fields as [string, string, string, string, string, string];
  const isFamilyIp = proto === 'TCP4' ? isIPv4 : isIPv6;
  if (!isFamilyIp(src) || !isFamilyIp(dst)) return fail('malformed', `v1 ${proto} header has a bad address`);
  // No zone ids: an address from another host's interface means nothing here.
  if (src.includes('%') || dst.includes('%')) return fail('malformed', `v1 ${proto} header has a zone id`);
  const srcPort = parsePort(sport);
  const dstPort = parsePort(dport);
  if (srcPort === null || dstPort === null) return fail('malformed', `v1 ${proto} header has a bad port`);
  const family = proto === 'TCP4' ? 'IPv4' : 'IPv6';
  // One spelling per address (RFC 5952, as v2's bytes, node's sockets and agents give it): flows,
  // agent reports, local attribution and a UDP relay's source check all compare the text. Written
  // `2001:db8:0:0:0:0:0:7` (as Java's getHostAddress does) it was a client no agent report named.
  const isV4 = proto === 'TCP4';
  return {
    kind: 'header',
    header: { version: 1, command: 'PROXY', family, transport: 'STREAM', srcIp: isV4 ? src : canonicalIPv6(src), srcPort, dstIp: isV4 ? dst : canonicalIPv6(dst), dstPort },
    consumed: lf + 1,
  };
}

function noAddress(version: 1 | 2, command: ProxyCommand, family: ProxyFamily, transport: ProxyTransport): ProxyHeader {
  return { version, command, family, transport, srcIp: null, srcPort: null, dstIp: null, dstPort: null };
}

/** Indexed by the high nibble (family) and low nibble (transport) of byte 14. */
const FAMILIES: readonly ProxyFamily[] = ['UNSPEC', 'IPv4', 'IPv6', 'UNIX'];
const TRANSPORTS: readonly ProxyTransport[] = ['UNSPEC', 'STREAM', 'DGRAM'];
/** Address block sizes by family: two addresses and two ports (UNIX: two 108-byte paths). */
const ADDRESS_BYTES: Record<ProxyFamily, number> = { UNSPEC: 0, IPv4: 12, IPv6: 36, UNIX: 216 };

function parseV2(buf: Buffer): ProxyParse {
  if (buf.length < V2_FIXED_BYTES) {
    // Refuse a bad version/command or family as soon as its byte is in, not after 64 KiB more.
    if (buf.length > 12 && (buf[12] as number) >> 4 !== 2) return fail('unsupported', `v2 version ${(buf[12] as number) >> 4} is not 2`);
    return NEED;
  }
  const verCmd = buf[12] as number;
  const famProto = buf[13] as number;
  if (verCmd >> 4 !== 2) return fail('unsupported', `v2 version ${verCmd >> 4} is not 2`);
  const cmd = verCmd & 0x0f;
  if (cmd !== 0x0 && cmd !== 0x1) return fail('unsupported', `v2 command 0x${cmd.toString(16)} is neither LOCAL nor PROXY`);
  const family = FAMILIES[famProto >> 4];
  const transport = TRANSPORTS[famProto & 0x0f];
  const length = buf.readUInt16BE(14);
  const total = V2_FIXED_BYTES + length;
  // LOCAL: the load balancer speaking for itself (health checks). The spec has the receiver accept
  // it and discard the block, family included: whatever the family byte and length say.
  if (cmd === 0x0) {
    if (buf.length < total) return NEED;
    return { kind: 'header', header: noAddress(2, 'LOCAL', family ?? 'UNSPEC', transport ?? 'UNSPEC'), consumed: total };
  }
  // PROXY: only the spec's pairs (UNSPEC/UNSPEC, or a family with STREAM or DGRAM); the others
  // "must be rejected as invalid by receivers".
  if (family === undefined || transport === undefined || (family === 'UNSPEC') !== (transport === 'UNSPEC')) {
    return fail('unsupported', `v2 family/protocol byte 0x${famProto.toString(16).padStart(2, '0')} is not a pair the spec defines`);
  }
  if (length < ADDRESS_BYTES[family]) return fail('malformed', `v2 length ${length} is shorter than a ${family} address block (${ADDRESS_BYTES[family]})`);
  if (buf.length < total) return NEED;
  const command: ProxyCommand = 'PROXY';
  if (family !== 'IPv4' && family !== 'IPv6') {
    return { kind: 'header', header: noAddress(2, command, family, transport), consumed: total };
  }
  const at = V2_FIXED_BYTES;
  let srcIp: string;
  let dstIp: string;
  let portsAt: number;
  if (family === 'IPv4') {
    srcIp = formatV4(buf, at);
    dstIp = formatV4(buf, at + 4);
    portsAt = at + 8;
  } else {
    srcIp = formatIPv6(buf.subarray(at, at + 16));
    dstIp = formatIPv6(buf.subarray(at + 16, at + 32));
    portsAt = at + 32;
  }
  // What follows the address block is TLVs (ALPN, authority, CRC, vendor data): skipped.
  return {
    kind: 'header',
    header: { version: 2, command, family, transport, srcIp, srcPort: buf.readUInt16BE(portsAt), dstIp, dstPort: buf.readUInt16BE(portsAt + 2) },
    consumed: total,
  };
}

function formatV4(buf: Buffer, at: number): string {
  return `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`;
}


/** Encode a v1 line. Without addresses it is `PROXY UNKNOWN\r\n`. */
export function encodeProxyV1(addr: { srcIp: string; srcPort: number; dstIp: string; dstPort: number } | null): Buffer {
  if (addr === null) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  const proto = isIPv4(addr.srcIp) ? 'TCP4' : 'TCP6';
  return Buffer.from(`PROXY ${proto} ${addr.srcIp} ${addr.dstIp} ${addr.srcPort} ${addr.dstPort}\r\n`, 'latin1');
}

/**
 * Encode a v2 header: PROXY with TCP addresses, or LOCAL (no addresses) when `addr` is null.
 * `tlvs` is appended raw after the address block (callers build well-formed TLVs).
 */
export function encodeProxyV2(addr: { srcIp: string; srcPort: number; dstIp: string; dstPort: number } | null, tlvs: Buffer = Buffer.alloc(0)): Buffer {
  if (addr === null) {
    const out = Buffer.alloc(V2_FIXED_BYTES + tlvs.length);
    V2_SIGNATURE.copy(out);
    out[12] = 0x20;
    out[13] = 0x00;
    out.writeUInt16BE(tlvs.length, 14);
    tlvs.copy(out, V2_FIXED_BYTES);
    return out;
  }
  const v4 = isIPv4(addr.srcIp);
  const addrBytes = v4 ? 12 : 36;
  const out = Buffer.alloc(V2_FIXED_BYTES + addrBytes + tlvs.length);
  V2_SIGNATURE.copy(out);
  out[12] = 0x21;
  out[13] = v4 ? 0x11 : 0x21;
  out.writeUInt16BE(addrBytes + tlvs.length, 14);
  const ipLen = v4 ? 4 : 16;
  ipBytes(addr.srcIp, v4).copy(out, V2_FIXED_BYTES);
  ipBytes(addr.dstIp, v4).copy(out, V2_FIXED_BYTES + ipLen);
  out.writeUInt16BE(addr.srcPort, V2_FIXED_BYTES + 2 * ipLen);
  out.writeUInt16BE(addr.dstPort, V2_FIXED_BYTES + 2 * ipLen + 2);
  tlvs.copy(out, V2_FIXED_BYTES + addrBytes);
  return out;
}

function ipBytes(ip: string, v4: boolean): Buffer {
  if (v4) {
    if (!isIPv4(ip)) throw new Error(`not an IPv4 address: ${ip}`);
    return Buffer.from(ip.split('.').map(Number));
  }
  if (!isIPv6(ip)) throw new Error(`not an IPv6 address: ${ip}`);
  // Expand "::" and an embedded dotted quad, then write 8 groups.
  let text = ip;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const q = (dotted[1] as string).split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((q[0] << 8) | q[1]).toString(16)}:${((q[2] << 8) | q[3]).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? (text.split('::') as [string, string]) : [text, null];
  const h = head === '' ? [] : head.split(':');
  const t = tail === null || tail === '' ? [] : tail.split(':');
  const groups = tail === null ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(Number.parseInt(groups[i] ?? '0', 16), i * 2);
  return out;
}
