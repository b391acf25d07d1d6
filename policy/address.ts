/**
 * Address classification for the SSRF floor (SPEC §4 `deny-range`).
 *
 * Pure functions over IP literals: no DNS, no sockets. The address classified is the one that will
 * be dialled; IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 well-known
 * and local-use prefixes, 6to4, Teredo) are unwrapped first so `64:ff9b::a9fe:a9fe` is treated as
 * 169.254.169.254, not as a public IPv6 address.
 *
 * Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are deliberately
 * *not* denied: they are unroutable, carry no SSRF risk, and SPEC examples and tests use them as
 * "public" destinations.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** Range labels returned by `classifyAddress`; null means a public (globally routable) address. */
export type AddressRange =
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'metadata'
  | 'cgnat'
  | 'ula'
  | 'multicast'
  | 'unspecified'
  | 'reserved'
  | 'broadcast';

interface V4Range {
  readonly net: number;
  readonly mask: number;
  readonly label: AddressRange;
}

function v4(cidr: string, label: AddressRange): V4Range {
  const [addr, len] = cidr.split('/') as [string, string];
  const bits = Number(len);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return { net: (parseIPv4(addr)! & mask) >>> 0, mask, label };
}

// Most specific first: the first hit is the label (metadata before link-local, etc.).
const V4_RANGES: readonly V4Range[] = [
  v4('169.254.169.254/32', 'metadata'), // AWS, GCP, Azure, OCI, DigitalOcean instance metadata
  v4('169.254.170.2/32', 'metadata'), // AWS ECS task metadata
  v4('100.100.100.200/32', 'metadata'), // Alibaba Cloud metadata (inside CGNAT space)
  v4('168.63.129.16/32', 'metadata'), // Azure WireServer: public-looking, reachable only in Azure
  v4('192.0.0.192/32', 'metadata'), // Oracle Cloud legacy metadata
  v4('255.255.255.255/32', 'broadcast'),
  v4('0.0.0.0/8', 'unspecified'),
  v4('10.0.0.0/8', 'private'),
  v4('100.64.0.0/10', 'cgnat'),
  v4('127.0.0.0/8', 'loopback'),
  v4('169.254.0.0/16', 'link-local'),
  v4('172.16.0.0/12', 'private'),
  v4('192.0.0.0/24', 'reserved'), // IETF protocol assignments (DS-Lite, NAT64 discovery)
  v4('192.88.99.0/24', 'reserved'), // deprecated 6to4 relay anycast
  v4('192.168.0.0/16', 'private'),
  v4('198.18.0.0/15', 'reserved'), // benchmarking; also fake-IP DNS ranges of local proxies
  v4('224.0.0.0/4', 'multicast'),
  v4('240.0.0.0/4', 'reserved'),
];

/**
 * Parses a dotted-quad IPv4 literal to an unsigned 32-bit number, or null. Hand-rolled over char
 * codes because it runs on every decision: no split, no regex, no allocation.
 */
export function parseIPv4(ip: string): number | null {
  const len = ip.length;
  if (len < 7 || len > 15) return null;
  let n = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  let leadingZero = false;
  for (let i = 0; i < len; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || dots === 3) return null;
      n = n * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      // Leading zeros are octal in some resolvers (0177.0.0.1 = 127.0.0.1): refuse them outright.
      if (digits === 1 && leadingZero) return null;
      if (digits === 0) leadingZero = c === 48;
      octet = octet * 10 + (c - 48);
      digits++;
      if (octet > 255) return null;
    } else return null;
  }
  if (digits === 0 || dots !== 3) return null;
  return (n * 256 + octet) >>> 0;
}

/** Formats an unsigned 32-bit number as dotted-quad. */
export function formatIPv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** "host:port" with brackets around an IPv6 literal (its last group is not read as the port). */
export function formatAuthority(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Parses an IPv6 literal (zone id and brackets tolerated) to 16 bytes, or null. */
export function parseIPv6(input: string): Uint8Array | null {
  let ip = input;
  if (ip.startsWith('[') && ip.endsWith(']')) ip = ip.slice(1, -1);
  const pct = ip.indexOf('%');
  if (pct !== -1) ip = ip.slice(0, pct);
  if (!isIPv6(ip)) return null;
  const out = new Uint8Array(16);
  // Trailing dotted-quad (::ffff:1.2.3.4) fills the last 4 bytes.
  let tailV4: number | null = null;
  const lastColon = ip.lastIndexOf(':');
  if (ip.indexOf('.', lastColon) !== -1) {
    tailV4 = parseIPv4(ip.slice(lastColon + 1));
    if (tailV4 === null) return null;
    ip = `${ip.slice(0, lastColon + 1)}0:0`;
  }
  const dbl = ip.indexOf('::');
  const head = dbl === -1 ? ip : ip.slice(0, dbl);
  const tail = dbl === -1 ? '' : ip.slice(dbl + 2);
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === '' ? [] : tail.split(':');
  const groups: number[] = [];
  for (const g of headGroups) groups.push(Number.parseInt(g, 16));
  const fill = 8 - headGroups.length - tailGroups.length;
  if (dbl !== -1) for (let i = 0; i < fill; i++) groups.push(0);
  for (const g of tailGroups) groups.push(Number.parseInt(g, 16));
  if (groups.length !== 8) return null;
  for (let i = 0; i < 8; i++) {
    const g = groups[i]!;
    out[i * 2] = g >>> 8;
    out[i * 2 + 1] = g & 255;
  }
  if (tailV4 !== null) {
    out[12] = tailV4 >>> 24;
    out[13] = (tailV4 >>> 16) & 255;
    out[14] = (tailV4 >>> 8) & 255;
    out[15] = tailV4 & 255;
  }
  return out;
}

function u32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

function allZero(b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * The IPv4 address an IPv6 address carries, when it is one of the embedding forms a dial can reach
 * an IPv4 host through: IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (deprecated),
 * NAT64 `64:ff9b::/96` and local-use `64:ff9b:1::/48` (RFC 6052 /48 layout), 6to4 `2002::/16`
 * and Teredo `2001::/32` (client address = last 32 bits XOR 0xffffffff). Null otherwise.
 */
export function embeddedIPv4(bytes: Uint8Array): number | null {
  // ::ffff:a.b.c.d
  if (allZero(bytes, 0, 10) && bytes[10] === 0xff && bytes[11] === 0xff) return u32(bytes, 12);
  // ::a.b.c.d (but not :: or ::1, which are their own IPv6 ranges)
  if (allZero(bytes, 0, 12)) {
    const n = u32(bytes, 12);
    return n <= 1 ? null : n;
  }
  const w0 = (bytes[0]! << 8) | bytes[1]!;
  const w1 = (bytes[2]! << 8) | bytes[3]!;
  const w2 = (bytes[4]! << 8) | bytes[5]!;
  if (w0 === 0x0064 && w1 === 0xff9b && w2 === 0 && allZero(bytes, 6, 12)) return u32(bytes, 12);
  if (w0 === 0x0064 && w1 === 0xff9b && w2 === 0x0001) {
    // RFC 6052 /48: v4 bytes at 6,7 then (byte 8 = u, always 0) 9,10.
    return ((bytes[6]! << 24) | (bytes[7]! << 16) | (bytes[9]! << 8) | bytes[10]!) >>> 0;
  }
  if (w0 === 0x2002) return u32(bytes, 2);
  if (w0 === 0x2001 && w1 === 0x0000) return (u32(bytes, 12) ^ 0xffffffff) >>> 0;
  return null;
}

/**
 * The NAT64 local-use prefix 64:ff9b:1::/48 (RFC 8215) may be deployed at any RFC 6052 length from
 * /48 to /96, and the address does not say which: the IPv4 address sits at a different place in each
 * layout. Classified under every layout, the first non-public answer wins (fail closed), so a /96
 * translator inside it cannot carry 64:ff9b:1::a9fe:a9fe to 169.254.169.254. A layout that reads
 * 0.0.0.0/8 is the zero padding of another layout, not an address: it is passed over.
 */
function classifyLocalUseNat64(b: Uint8Array): AddressRange | null {
  for (const n of localUseNat64Layouts(b)) {
    const range = classifyIPv4Number(n);
    if (range !== null && range !== 'unspecified') return range;
  }
  return null;
}

/** The IPv4 address under each RFC 6052 layout of a local-use NAT64 address (see above): /48, /56, /64, /96. */
function localUseNat64Layouts(b: Uint8Array): number[] {
  return [
    ((b[6]! << 24) | (b[7]! << 16) | (b[9]! << 8) | b[10]!) >>> 0, // /48
    ((b[7]! << 24) | (b[9]! << 16) | (b[10]! << 8) | b[11]!) >>> 0, // /56
    ((b[9]! << 24) | (b[10]! << 16) | (b[11]! << 8) | b[12]!) >>> 0, // /64
    u32(b, 12), // /96
  ];
}

/**
 * The IPv4 addresses a local-use NAT64 address (64:ff9b:1::/48) may carry, one per layout its
 * translator may use, the 0.0.0.0/8 readings (another layout's zero padding) left out; null for any
 * other address. deny.cidrs is matched against each, as classifyIPv6 classifies each (fail closed).
 */
export function localUseNat64IPv4s(b: Uint8Array): number[] | null {
  if (!isLocalUseNat64(b)) return null;
  return localUseNat64Layouts(b).filter((n) => n >>> 24 !== 0);
}

function isLocalUseNat64(b: Uint8Array): boolean {
  return b[0] === 0 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && b[4] === 0 && b[5] === 1;
}

/** Classifies parsed IPv6 bytes (embedded IPv4 unwrapped first), like `classifyAddress`. */
export function classifyIPv6(bytes: Uint8Array): AddressRange | null {
  if (isLocalUseNat64(bytes)) return classifyLocalUseNat64(bytes);
  const inner = embeddedIPv4(bytes);
  return inner !== null ? classifyIPv4Number(inner) : classifyIPv6Bytes(bytes);
}

// Ranges indexed by first octet (every range here is /8 or longer, or spans whole octets), so a
// public address — the common case on the hot path — is answered by one array read.
const V4_BY_OCTET: ReadonlyArray<readonly V4Range[]> = (() => {
  const table: V4Range[][] = Array.from({ length: 256 }, () => []);
  for (const r of V4_RANGES) {
    const first = r.net >>> 24;
    const span = r.mask >>> 24 === 0xff ? 1 : 256 - (r.mask >>> 24);
    for (let o = first; o < first + span && o < 256; o++) table[o]!.push(r);
  }
  return table;
})();

/** Classifies an IPv4 address given as a number. */
export function classifyIPv4Number(n: number): AddressRange | null {
  const list = V4_BY_OCTET[n >>> 24]!;
  for (let i = 0; i < list.length; i++) {
    const r = list[i]!;
    if (((n & r.mask) >>> 0) === r.net) return r.label;
  }
  return null;
}

function classifyIPv6Bytes(b: Uint8Array): AddressRange | null {
  const w0 = (b[0]! << 8) | b[1]!;
  const w1 = (b[2]! << 8) | b[3]!;
  if (allZero(b, 0, 15)) return b[15] === 0 ? 'unspecified' : b[15] === 1 ? 'loopback' : 'reserved';
  // AWS IMDS over IPv6 (fd00:ec2::254) sits inside ULA: label it as metadata first.
  if (w0 === 0xfd00 && w1 === 0x0ec2 && allZero(b, 4, 14) && b[14] === 0x02 && b[15] === 0x54) return 'metadata';
  if ((b[0]! & 0xfe) === 0xfc) return 'ula';
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80) return 'link-local';
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0xc0) return 'private'; // deprecated site-local fec0::/10
  if (b[0] === 0xff) return 'multicast';
  if (w0 === 0x0100 && allZero(b, 2, 8)) return 'reserved'; // discard-only 100::/64
  if (w0 === 0x2001 && w1 === 0x0002 && b[4] === 0 && b[5] === 0) return 'reserved'; // benchmarking 2001:2::/48
  if (w0 === 0x2001 && (w1 & 0xfff0) === 0x0010) return 'reserved'; // ORCHID 2001:10::/28
  if (w0 === 0x2001 && (w1 & 0xfff0) === 0x0020) return 'reserved'; // ORCHIDv2 2001:20::/28
  if (w0 === 0x5f00) return 'reserved'; // SRv6 SIDs 5f00::/16
  // Anything outside global unicast 2000::/3 is unassigned or special.
  if ((b[0]! & 0xe0) !== 0x20) return 'reserved';
  return null;
}

/**
 * The effective IPv4 address of `ip` as dotted-quad when `ip` is IPv4 or an IPv6 form embedding one
 * (see `embeddedIPv4`); null for plain IPv6 or non-IP input.
 */
export function effectiveIPv4(ip: string): string | null {
  if (parseIPv4(ip) !== null) return ip;
  const b = parseIPv6(ip);
  if (b === null) return null;
  const n = embeddedIPv4(b);
  return n === null ? null : formatIPv4(n);
}

/**
 * Classifies the address that will be dialled. Returns a range label ('loopback', 'private',
 * 'link-local', 'metadata', 'cgnat', 'ula', 'multicast', 'unspecified', 'reserved', 'broadcast')
 * or null for a public address. IPv6 embeddings of IPv4 are unwrapped first; an embedding of a
 * public IPv4 is public. Input that is not an IP literal is 'reserved' (fail closed: callers must
 * pass the resolved address, never a name).
 */
export function classifyAddress(ip: string): AddressRange | null {
  const n4 = parseIPv4(ip);
  if (n4 !== null) return classifyIPv4Number(n4);
  const b = parseIPv6(ip);
  if (b === null) return 'reserved';
  return classifyIPv6(b);
}

/**
 * The text every record, policy key and log line gives an IPv6 address: RFC 5952 (lower case, the
 * longest zero run of ≥2 groups as `::`), and for an IPv4-mapped address (`::ffff:0:0/96`) the
 * dotted-quad tail RFC 5952 §5 recommends, `::ffff:127.0.0.3`, as node prints a dual-stack socket's
 * IPv4 peer and inet_ntop prints a DNS answer. `compressed` is already RFC 5952 hex (the WHATWG URL
 * serialiser's output, or formatIPv6's): only a mapped address is rewritten, so the usual address
 * costs one startsWith.
 */
export function withMappedTail(compressed: string): string {
  if (!compressed.startsWith('::ffff:')) return compressed;
  const colon = compressed.indexOf(':', 7);
  // Exactly two groups after ::ffff: (a third would make it another address, ::ffff:a:b:c).
  if (colon < 0 || compressed.indexOf(':', colon + 1) >= 0) return compressed;
  const hi = Number.parseInt(compressed.slice(7, colon), 16);
  const lo = Number.parseInt(compressed.slice(colon + 1), 16);
  if (!(hi >= 0 && hi <= 0xffff && lo >= 0 && lo <= 0xffff)) return compressed;
  return `::ffff:${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

/**
 * Any IPv6 spelling in the form withMappedTail describes (`0:0:0:0:0:FFFF:7F00:3` →
 * `::ffff:127.0.0.3`); the input unchanged when it is not an IPv6 literal.
 */
export function canonicalIPv6(ip: string): string {
  const b = parseIPv6(ip);
  return b === null ? ip : formatIPv6(b);
}

/** IPv6 text as withMappedTail gives it (RFC 5952, an IPv4-mapped address with its dotted tail). */
export function formatIPv6(bytes: ArrayLike<number>): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  const head = hex.slice(0, bestStart).join(':');
  const tail = hex.slice(bestStart + bestLen).join(':');
  return withMappedTail(`${head}::${tail}`);
}

/**
 * An IPv4-mapped IPv6 address (`::ffff:0:0/96`) as its dotted IPv4 `a.b.c.d`, in any spelling: the
 * dotted-tail form node reports for a dual-stack socket's IPv4 peer, and the hex form
 * (`::ffff:7f00:1`) the URL parser gives and so a SOCKS5 domain name carries; any other address
 * unchanged. Flows are known by their client's address in this form, as agents report it, and a
 * SOCKS5 UDP destination must be known by it too: the kernel reports replies to a mapped address
 * from `::ffff:a.b.c.d`, so it is sent as IPv4.
 */
export function unmapIPv4(ip: string): string {
  if (ip.startsWith('::ffff:') && isIPv4(ip.slice(7))) return ip.slice(7);
  // Only a string naming ffff can be another spelling: the usual address is not parsed.
  if (!ip.includes(':') || !/ffff/i.test(ip)) return ip;
  const b = parseIPv6(ip);
  return b !== null && allZero(b, 0, 10) && b[10] === 0xff && b[11] === 0xff ? formatIPv4(u32(b, 12)) : ip;
}
