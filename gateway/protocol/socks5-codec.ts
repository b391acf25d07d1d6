/**
 * SOCKS5 wire format (RFC 1928, RFC 1929): pure `Buffer` in → parsed value / "need more bytes" /
 * coded error out, and the encoders for replies. No sockets, no timers: the session state machine
 * (gateway/listeners/socks5-session.ts) feeds it whatever bytes have arrived so far, so a message
 * split anywhere — one byte at a time — parses the same as one written whole.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { GatewayErrorCode } from '../errors.ts';

export const SOCKS_VERSION = 0x05;
export const AUTH_VERSION = 0x01;

export const METHOD = {
  noAuth: 0x00,
  userPass: 0x02,
  noAcceptable: 0xff,
} as const;

export const CMD = {
  connect: 0x01,
  bind: 0x02,
  udpAssociate: 0x03,
} as const;

export const ATYP = {
  ipv4: 0x01,
  domain: 0x03,
  ipv6: 0x04,
} as const;

/** A parse that could not finish: either more bytes are needed, or the bytes are wrong. */
export type Incomplete = { readonly kind: 'need' };
export interface ParseError {
  readonly kind: 'error';
  /** Mapped to a SOCKS reply byte by gateway/reject.ts (the only mapper). */
  readonly code: GatewayErrorCode;
  readonly reason: string;
}
export type Parsed<T> = { readonly kind: 'ok'; readonly value: T; readonly consumed: number } | Incomplete | ParseError;

const NEED: Incomplete = Object.freeze({ kind: 'need' });

function fail(code: GatewayErrorCode, reason: string): ParseError {
  return { kind: 'error', code, reason };
}

export interface Greeting {
  readonly hasNoAuth: boolean;
  readonly hasUserPass: boolean;
  readonly methodCount: number;
}

/** RFC 1928 §3: VER NMETHODS METHODS[NMETHODS]. Zero methods is an error (nothing to select). */
export function parseGreeting(buf: Buffer): Parsed<Greeting> {
  if (buf.length < 1) return NEED;
  if (buf[0] !== SOCKS_VERSION) return fail('EGW_SOCKS_PROTOCOL', `bad version byte 0x${hex(buf[0])}`);
  if (buf.length < 2) return NEED;
  const n = buf[1] as number;
  if (n === 0) return fail('EGW_SOCKS_PROTOCOL', 'zero methods offered');
  if (buf.length < 2 + n) return NEED;
  let hasNoAuth = false;
  let hasUserPass = false;
  for (let i = 2; i < 2 + n; i++) {
    if (buf[i] === METHOD.noAuth) hasNoAuth = true;
    else if (buf[i] === METHOD.userPass) hasUserPass = true;
  }
  return { kind: 'ok', value: { hasNoAuth, hasUserPass, methodCount: n }, consumed: 2 + n };
}

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/**
 * RFC 1929 §2: VER(0x01) ULEN UNAME PLEN PASSWD. ULEN 0 is an empty username (curl
 * `--proxy-user ':pw'`): well-formed, and a failed login like an unknown user once identity
 * resolution has checked it (as HTTP's Basic `:pw` is), not a protocol error. PLEN 0 is an empty
 * password, which some clients send for token-only users.
 */
export function parseUserPass(buf: Buffer): Parsed<Credentials> {
  if (buf.length < 1) return NEED;
  if (buf[0] !== AUTH_VERSION) return fail('EGW_SOCKS_PROTOCOL', `bad auth version byte 0x${hex(buf[0])}`);
  if (buf.length < 2) return NEED;
  const ulen = buf[1] as number;
  if (buf.length < 3 + ulen) return NEED;
  const plen = buf[2 + ulen] as number;
  const end = 3 + ulen + plen;
  if (buf.length < end) return NEED;
  const username = buf.toString('utf8', 2, 2 + ulen);
  const password = buf.toString('utf8', 3 + ulen, end);
  return { kind: 'ok', value: { username, password }, consumed: end };
}

export type Command = 'connect' | 'bind' | 'udp-associate';

export interface SocksAddress {
  /** IP literal (no brackets) or lower-case domain name. */
  readonly host: string;
  readonly port: number;
  readonly atyp: number;
}

export interface SocksRequest extends SocksAddress {
  readonly command: Command;
}

/** Longest bytes a request can occupy: 4 + 1 + 255 + 2. Anything after it is garbage. */
export const MAX_REQUEST_BYTES = 262;

/**
 * RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT. BIND and unknown commands are parsed to the end
 * so the caller can answer 0x07 with a well-formed reply; an unknown ATYP cannot be framed, so it
 * is an error at once (0x08). RSV is ignored, as most servers do.
 */
export function parseRequest(buf: Buffer): Parsed<SocksRequest> {
  if (buf.length < 1) return NEED;
  if (buf[0] !== SOCKS_VERSION) return fail('EGW_SOCKS_PROTOCOL', `bad version byte 0x${hex(buf[0])}`);
  if (buf.length < 4) return NEED;
  const cmdByte = buf[1] as number;
  const addr = parseAddress(buf, 3);
  if (addr.kind !== 'ok') return addr;
  let command: Command;
  if (cmdByte === CMD.connect) command = 'connect';
  else if (cmdByte === CMD.udpAssociate) command = 'udp-associate';
  else if (cmdByte === CMD.bind) return fail('EGW_SOCKS_COMMAND', 'BIND is not supported');
  else return fail('EGW_SOCKS_COMMAND', `unknown command 0x${hex(cmdByte)}`);
  return { kind: 'ok', value: { command, ...addr.value }, consumed: 3 + addr.consumed };
}

/**
 * ATYP DST.ADDR DST.PORT starting at `offset`; `consumed` counts from `offset`. Used by requests
 * (once per connection), so the string allocations here are fine.
 */
export function parseAddress(buf: Buffer, offset: number): Parsed<SocksAddress> {
  if (buf.length < offset + 1) return NEED;
  const atyp = buf[offset] as number;
  let host: string;
  let len: number;
  if (atyp === ATYP.ipv4) {
    len = 1 + 4 + 2;
    if (buf.length < offset + len) return NEED;
    host = `${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}.${buf[offset + 4]}`;
  } else if (atyp === ATYP.ipv6) {
    len = 1 + 16 + 2;
    if (buf.length < offset + len) return NEED;
    host = ipv6ToString(buf, offset + 1);
  } else if (atyp === ATYP.domain) {
    if (buf.length < offset + 2) return NEED;
    const dlen = buf[offset + 1] as number;
    if (dlen === 0) return fail('EGW_SOCKS_PROTOCOL', 'empty domain name');
    len = 2 + dlen + 2;
    if (buf.length < offset + len) return NEED;
    const name = normalizeDomain(buf, offset + 2, offset + 2 + dlen);
    if (name === null) return fail('EGW_SOCKS_PROTOCOL', 'invalid domain name');
    host = name;
  } else {
    return fail('EGW_SOCKS_ADDRESS_TYPE', `unknown address type 0x${hex(atyp)}`);
  }
  const port = buf.readUInt16BE(offset + len - 2);
  return { kind: 'ok', value: { host, port, atyp }, consumed: len };
}

/**
 * A domain name as sent in ATYP 0x03, lower-cased. Only LDH labels, dots, underscores, and the
 * ':' / '[' ']' of an IP literal some clients put here are accepted: anything else (NUL, spaces,
 * '/', '@', control bytes) is a smuggling shape, not a name. A trailing dot is dropped.
 */
function normalizeDomain(buf: Buffer, start: number, end: number): string | null {
  for (let i = start; i < end; i++) {
    const c = buf[i] as number;
    const ok =
      (c >= 0x61 && c <= 0x7a) || // a-z
      (c >= 0x41 && c <= 0x5a) || // A-Z
      (c >= 0x30 && c <= 0x39) || // 0-9
      c === 0x2d || // -
      c === 0x2e || // .
      c === 0x5f || // _
      c === 0x3a || // : (IPv6 literal)
      c === 0x5b || // [
      c === 0x5d; // ]
    if (!ok) return null;
  }
  let name = buf.toString('latin1', start, end).toLowerCase();
  if (name.startsWith('[') && name.endsWith(']')) name = name.slice(1, -1);
  if (name.endsWith('.') && name.length > 1) name = name.slice(0, -1);
  if (name.includes('[') || name.includes(']')) return null;
  if (name.includes(':') && !isIPv6(name)) return null;
  if (name.length === 0 || name.startsWith('.') || name.includes('..')) return null;
  return name;
}

function ipv6ToString(buf: Buffer, offset: number): string {
  // Compressed canonical form via the URL parser would allocate more; build hextets, then let
  // the longest zero run collapse (RFC 5952) so the string matches what other modules print.
  const parts: string[] = new Array(8);
  for (let i = 0; i < 8; i++) parts[i] = buf.readUInt16BE(offset + i * 2).toString(16);
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (parts[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && parts[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  // IPv4-mapped in its dotted form, as every other path gives it (policy/address.ts, withMappedTail).
  if (bestStart === 0 && bestLen === 5 && parts[5] === 'ffff') {
    return `::ffff:${buf[offset + 12]}.${buf[offset + 13]}.${buf[offset + 14]}.${buf[offset + 15]}`;
  }
  if (bestStart < 0) return parts.join(':');
  const head = parts.slice(0, bestStart).join(':');
  const tail = parts.slice(bestStart + bestLen).join(':');
  return `${head}::${tail}`;
}

function hex(b: number | undefined): string {
  return (b ?? 0).toString(16).padStart(2, '0');
}

/** Method selection reply: VER METHOD. */
export function encodeMethod(method: number): Buffer {
  return Buffer.from([SOCKS_VERSION, method]);
}

/** RFC 1929 status reply: VER(0x01) STATUS (0x00 success, anything else failure). */
export function encodeAuthStatus(ok: boolean): Buffer {
  return Buffer.from([AUTH_VERSION, ok ? 0x00 : 0x01]);
}

/**
 * Reply: VER REP RSV ATYP BND.ADDR BND.PORT. `ip` must be an IP literal (the bound address of the
 * upstream socket or the UDP relay); failures carry 0.0.0.0:0 as RFC 1928 allows.
 */
export function encodeReply(rep: number, ip: string | null = null, port = 0): Buffer {
  const addr = encodeAddress(ip ?? '0.0.0.0', port);
  const out = Buffer.allocUnsafe(3 + addr.length);
  out[0] = SOCKS_VERSION;
  out[1] = rep;
  out[2] = 0x00;
  addr.copy(out, 3);
  return out;
}

/**
 * ATYP ADDR PORT for an IP literal (IPv4-mapped IPv6 is written as IPv4) or, failing that, a domain
 * name. Used for replies and for the per-destination UDP reply header (built once, then reused).
 */
export function encodeAddress(host: string, port: number): Buffer {
  const v4 = isIPv4(host) ? host : mappedV4(host);
  if (v4 !== null) {
    const out = Buffer.allocUnsafe(7);
    out[0] = ATYP.ipv4;
    const octets = v4.split('.');
    for (let i = 0; i < 4; i++) out[1 + i] = Number(octets[i]);
    out.writeUInt16BE(port, 5);
    return out;
  }
  if (isIPv6(host)) {
    const out = Buffer.alloc(19);
    out[0] = ATYP.ipv6;
    writeIPv6(host, out, 1);
    out.writeUInt16BE(port, 17);
    return out;
  }
  const name = Buffer.from(host, 'latin1');
  if (name.length === 0 || name.length > 255) throw new RangeError(`domain name length ${name.length} out of range`);
  const out = Buffer.allocUnsafe(2 + name.length + 2);
  out[0] = ATYP.domain;
  out[1] = name.length;
  name.copy(out, 2);
  out.writeUInt16BE(port, 2 + name.length);
  return out;
}

function mappedV4(host: string): string | null {
  const lower = host.toLowerCase();
  if (!lower.startsWith('::ffff:')) return null;
  const rest = lower.slice(7);
  return isIPv4(rest) ? rest : null;
}

function writeIPv6(host: string, out: Buffer, offset: number): void {
  let text = host;
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  // A trailing dotted quad takes the last two hextets.
  const words: number[] = [];
  const lastColon = text.lastIndexOf(':');
  let tailV4: number[] | null = null;
  if (text.indexOf('.', lastColon) > lastColon) {
    tailV4 = text
      .slice(lastColon + 1)
      .split('.')
      .map(Number);
    text = text.slice(0, lastColon + 1) + '0:0';
  }
  const [headText, tailText] = text.includes('::') ? (text.split('::') as [string, string]) : [text, null];
  const head = headText ? headText.split(':').map((h) => Number.parseInt(h, 16)) : [];
  const tail = tailText ? tailText.split(':').map((h) => Number.parseInt(h, 16)) : [];
  words.push(...head);
  if (tailText !== null) for (let i = head.length + tail.length; i < 8; i++) words.push(0);
  words.push(...tail);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(words[i] ?? 0, offset + i * 2);
  if (tailV4) for (let i = 0; i < 4; i++) out[offset + 12 + i] = tailV4[i] ?? 0;
}

/**
 * The parsed SOCKS UDP request header (RFC 1928 §7: RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA).
 * Mutable and reused by the relay for every datagram, so the hot path allocates nothing here; the
 * address is left as a byte range [addrStart, addrEnd) of the datagram for allocation-free lookup.
 */
export interface UdpHeader {
  frag: number;
  atyp: number;
  /** Byte range of ATYP..DST.PORT inclusive: the cache key of the destination. */
  keyStart: number;
  keyEnd: number;
  port: number;
  dataOffset: number;
}

/** A fresh reusable header holder. */
export function newUdpHeader(): UdpHeader {
  return { frag: 0, atyp: 0, keyStart: 0, keyEnd: 0, port: 0, dataOffset: 0 };
}

/**
 * Parse the SOCKS UDP header into `out` without allocating. Returns false when the datagram is
 * truncated, has non-zero RSV, an unknown ATYP, an empty domain or DST.PORT 0 (no datagram can be
 * sent there). FRAG is reported, not judged: the relay drops fragments and counts them.
 */
export function parseUdpHeader(buf: Buffer, out: UdpHeader): boolean {
  if (buf.length < 4) return false;
  if (buf[0] !== 0 || buf[1] !== 0) return false;
  out.frag = buf[2] as number;
  const atyp = buf[3] as number;
  out.atyp = atyp;
  let addrLen: number;
  if (atyp === ATYP.ipv4) addrLen = 4;
  else if (atyp === ATYP.ipv6) addrLen = 16;
  else if (atyp === ATYP.domain) {
    if (buf.length < 5) return false;
    addrLen = 1 + (buf[4] as number);
    if (addrLen === 1) return false;
  } else return false;
  const portAt = 4 + addrLen;
  if (buf.length < portAt + 2) return false;
  const port = buf.readUInt16BE(portAt);
  if (port === 0) return false;
  out.keyStart = 3;
  out.keyEnd = portAt + 2;
  out.port = port;
  out.dataOffset = portAt + 2;
  return true;
}

/** The destination host named by a parsed UDP header (allocates: call only on a cache miss). */
export function udpHeaderHost(buf: Buffer, h: UdpHeader): string | null {
  const parsed = parseAddress(buf, h.keyStart);
  return parsed.kind === 'ok' ? parsed.value.host : null;
}

/** The UDP reply header naming a destination: RSV RSV FRAG(0) ATYP ADDR PORT. Built once per destination. */
export function encodeUdpHeader(host: string, port: number): Buffer {
  const addr = encodeAddress(host, port);
  const out = Buffer.alloc(3 + addr.length);
  addr.copy(out, 3);
  return out;
}
