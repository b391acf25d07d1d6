/**
 * Parser and reader for the kernel's socket tables: /proc/net/tcp, tcp6, udp, udp6.
 *
 * Format (see `Documentation/networking/proc_net_tcp.rst` and `tcp4_seq_show` / `tcp6_seq_show`):
 *   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode …
 *    0: 0100007F:0CEA 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000  1000        0 12345 …
 * Addresses are printed as `%08X` of each 32-bit word of the network-order address *read as a
 * host-order integer*, so on a little-endian machine the bytes of every word come out reversed
 * (127.0.0.1 → 0100007F). IPv6 addresses are four such words. Ports are plain big-endian hex.
 */

import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { endianness } from 'node:os';

export type SocketProto = 'tcp' | 'udp';

export interface SocketEntry {
  readonly proto: SocketProto;
  /** Textual address: dotted quad for IPv4 and IPv4-mapped IPv6, compressed IPv6 otherwise. */
  readonly localIp: string;
  readonly localPort: number;
  readonly remoteIp: string;
  readonly remotePort: number;
  /** Kernel state number: TCP states as in `TcpState`; connected UDP shows 1, unconnected 7. */
  readonly state: number;
  readonly uid: number;
  /** Socket inode; 0 for sockets without a file (TIME_WAIT, orphans). */
  readonly inode: number;
}

/** TCP state numbers (`include/net/tcp_states.h`). */
export const TcpState = {
  ESTABLISHED: 1,
  SYN_SENT: 2,
  SYN_RECV: 3,
  FIN_WAIT1: 4,
  FIN_WAIT2: 5,
  TIME_WAIT: 6,
  CLOSE: 7,
  CLOSE_WAIT: 8,
  LAST_ACK: 9,
  LISTEN: 10,
  CLOSING: 11,
} as const;

const HOST_IS_LE = endianness() === 'LE';

/** Reverse the byte order of one 8-hex-digit word when the host is little-endian. */
function wordBytes(hex8: string, littleEndian: boolean): number[] {
  const b = [0, 2, 4, 6].map((i) => Number.parseInt(hex8.slice(i, i + 2), 16));
  return littleEndian ? b.reverse() : b;
}

import { formatIPv6 as formatIpv6 } from '../policy/address.ts';

export { formatIpv6 };

/**
 * Decode one `/proc/net` hex address. 8 digits = IPv4, 32 digits = IPv6; IPv4-mapped IPv6
 * (`::ffff:a.b.c.d`) comes back as the dotted IPv4 form so a dual-stack socket matches the v4
 * address the other end sees. Returns null on malformed input.
 */
export function decodeProcAddress(hex: string, littleEndian: boolean = HOST_IS_LE): string | null {
  if (!/^[0-9A-Fa-f]+$/.test(hex)) return null;
  if (hex.length === 8) return wordBytes(hex, littleEndian).join('.');
  if (hex.length !== 32) return null;
  const bytes: number[] = [];
  for (let w = 0; w < 4; w++) bytes.push(...wordBytes(hex.slice(w * 8, w * 8 + 8), littleEndian));
  const isMapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  if (isMapped) return bytes.slice(12).join('.');
  return formatIpv6(bytes);
}

function parseEndpoint(field: string, littleEndian: boolean): { ip: string; port: number } | null {
  const colon = field.indexOf(':');
  if (colon < 0 || field.length - colon - 1 !== 4) return null;
  const ip = decodeCached(field.slice(0, colon), littleEndian);
  const port = Number.parseInt(field.slice(colon + 1), 16);
  if (ip === null || Number.isNaN(port)) return null;
  return { ip, port };
}

/** Decoded addresses by hex text: a busy host has thousands of sockets but few distinct addresses. */
const decodeCache = new Map<string, string | null>();

function decodeCached(hex: string, littleEndian: boolean): string | null {
  if (littleEndian !== HOST_IS_LE) return decodeProcAddress(hex, littleEndian);
  let ip = decodeCache.get(hex);
  if (ip === undefined) {
    ip = decodeProcAddress(hex, littleEndian);
    if (decodeCache.size >= 4096) decodeCache.clear();
    decodeCache.set(hex, ip);
  }
  return ip;
}

/** The first `n` space-separated fields of a line, without a regex split of the whole line. */
function fields(line: string, n: number): string[] {
  const out: string[] = [];
  let i = 0;
  const len = line.length;
  while (out.length < n) {
    while (i < len && line.charCodeAt(i) === 32) i++;
    if (i >= len) break;
    const start = i;
    while (i < len && line.charCodeAt(i) !== 32) i++;
    out.push(line.slice(start, i));
  }
  return out;
}

/** Parse one data line of a socket table; null for a header, partial or malformed line. */
export function parseProcNetLine(line: string, proto: SocketProto, littleEndian: boolean = HOST_IS_LE): SocketEntry | null {
  const f = fields(line, 10);
  // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
  if (f.length < 10 || !f[0]?.endsWith(':')) return null;
  const local = parseEndpoint(f[1] ?? '', littleEndian);
  const remote = parseEndpoint(f[2] ?? '', littleEndian);
  const state = Number.parseInt(f[3] ?? '', 16);
  const uid = Number.parseInt(f[7] ?? '', 10);
  const inode = Number.parseInt(f[9] ?? '', 10);
  if (!local || !remote || Number.isNaN(state) || Number.isNaN(uid) || Number.isNaN(inode)) return null;
  return { proto, localIp: local.ip, localPort: local.port, remoteIp: remote.ip, remotePort: remote.port, state, uid, inode };
}

/**
 * Parse the text of one /proc/net/{tcp,tcp6,udp,udp6} file. Malformed lines are skipped, never
 * thrown on: the file is read while the kernel changes it, and a partial last line is normal.
 */
export function parseProcNet(text: string, proto: SocketProto, littleEndian: boolean = HOST_IS_LE): SocketEntry[] {
  const out: SocketEntry[] = [];
  const lines = text.split('\n');
  // Line 0 is the header.
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    if (line === undefined || line.length === 0) continue;
    const e = parseProcNetLine(line, proto, littleEndian);
    if (e) out.push(e);
  }
  return out;
}

/**
 * Parse only the lines containing one of `needles` (hex address text from `encodeProcEndpoint`).
 * On a host with thousands of sockets this skips parsing almost every line: `indexOf` over the raw
 * text is far cheaper than splitting each line. Callers still check the parsed fields (a needle may
 * match the other column).
 */
export function parseProcNetMatching(text: string, proto: SocketProto, needles: readonly string[], littleEndian: boolean = HOST_IS_LE): SocketEntry[] {
  const out: SocketEntry[] = [];
  const seenLines = new Set<number>();
  for (const needle of needles) {
    if (needle.length === 0) continue;
    for (let at = text.indexOf(needle); at >= 0; at = text.indexOf(needle, at + needle.length)) {
      const start = text.lastIndexOf('\n', at) + 1;
      if (start === 0 || seenLines.has(start)) continue; // line 0 is the header
      seenLines.add(start);
      const end = text.indexOf('\n', at);
      const e = parseProcNetLine(text.slice(start, end < 0 ? text.length : end), proto, littleEndian);
      if (e) out.push(e);
    }
  }
  return out;
}

function ipBytes(ip: string): number[] | null {
  if (isIP(ip) === 4) return ip.split('.').map(Number);
  if (isIP(ip) !== 6) return null;
  const [head, tail] = ip.includes('::') ? (ip.split('::') as [string, string]) : [ip, null];
  const parse = (part: string): number[] => (part.length === 0 ? [] : part.split(':').map((g) => Number.parseInt(g, 16)));
  const h = parse(head);
  const t = tail === null ? [] : parse(tail);
  const groups = tail === null ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  if (groups.length !== 8 || groups.some((g) => Number.isNaN(g))) return null;
  return groups.flatMap((g) => [g >> 8, g & 255]);
}

function hexWords(bytes: readonly number[], littleEndian: boolean): string {
  let out = '';
  for (let w = 0; w < bytes.length; w += 4) {
    const word = bytes.slice(w, w + 4);
    for (const b of littleEndian ? word.reverse() : word) out += b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/**
 * The text an endpoint has in a socket table: `0100007F:0C38` in tcp/udp, 32 hex digits (IPv4 as
 * `::ffff:a.b.c.d`) in tcp6/udp6. Null when the address cannot appear in that table (IPv6 in a v4
 * table) or is not an IP. `port` null gives just the address and the colon.
 */
export function encodeProcEndpoint(ip: string, port: number | null, isV6Table: boolean, littleEndian: boolean = HOST_IS_LE): string | null {
  const bytes = ipBytes(ip.replace(/%.*$/, ''));
  if (!bytes) return null;
  let full: number[];
  if (bytes.length === 4) full = isV6Table ? [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...bytes] : bytes;
  else if (isV6Table) full = bytes;
  else return null;
  const p = port === null ? '' : port.toString(16).toUpperCase().padStart(4, '0');
  return `${hexWords(full, littleEndian)}:${p}`;
}

export type ProcNetFile = 'tcp' | 'tcp6' | 'udp' | 'udp6';
export const ALL_PROC_NET_FILES: readonly ProcNetFile[] = ['tcp', 'tcp6', 'udp', 'udp6'];

/**
 * Read and parse the given socket tables of the caller's network namespace (async; a missing
 * file, e.g. tcp6 with IPv6 disabled, yields no entries). With `needlesFor`, only lines containing
 * one of that table's needles are parsed (see `parseProcNetMatching`).
 */
export async function readProcNet(
  files: readonly ProcNetFile[] = ALL_PROC_NET_FILES,
  procRoot = '/proc',
  needlesFor?: (file: ProcNetFile) => readonly string[],
): Promise<SocketEntry[]> {
  const parts = await Promise.all(
    files.map(async (file) => {
      const needles = needlesFor?.(file);
      if (needles?.length === 0) return [];
      try {
        // One readFile: the kernel hands a socket table out a page per read() and resumes by
        // (bucket, offset), so an entry can be missed while sockets churn; callers retry misses.
        const text = await readFile(`${procRoot}/net/${file}`, 'latin1');
        const proto = file.startsWith('tcp') ? 'tcp' : 'udp';
        return needles ? parseProcNetMatching(text, proto, needles) : parseProcNet(text, proto);
      } catch {
        return [];
      }
    }),
  );
  return parts.flat();
}
