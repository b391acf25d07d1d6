/**
 * CIDR parsing and a prefix-indexed CIDR map.
 *
 * Why not `node:net` BlockList on the hot path: `BlockList.check(string)` builds a SocketAddress
 * per call (~1 µs) and cannot say *which* rule matched, while `matchedRule` must name the entry and
 * the deny/allow-range precedence needs the longest prefix. `CidrMap` hashes the masked network per
 * distinct prefix length, so a lookup is one `Set.has` per prefix length in use. Its semantics
 * follow BlockList (an IPv4 rule also matches the IPv4-mapped `::ffff:a.b.c.d` form); the unit
 * tests cross-check it against BlockList.
 */
import { isIPv4 } from 'node:net';
import { parseIPv4, parseIPv6 } from './address.ts';
import { TextMemo } from './text-memo.ts';

export type Cidr =
  | { readonly family: 4; readonly net: number; readonly prefix: number; readonly text: string }
  | { readonly family: 6; readonly bytes: Uint8Array; readonly prefix: number; readonly text: string };

/** A parsed destination address, computed once per decision. */
export interface ParsedIp {
  /** IPv4 value when the address is IPv4 or IPv4-mapped IPv6; else null. */
  readonly v4: number | null;
  /** IPv6 bytes when the address is IPv6 (mapped included); else null. */
  readonly v6: Uint8Array | null;
}

function maskV4(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Parses `a.b.c.d/n`, `x::/n` or a bare address (= /32 or /128). Host bits are masked off (so
 * `10.1.2.3/8` is `10.0.0.0/8`). Returns an error message for anything else.
 */
export function parseCidr(text: string): Cidr | { error: string } {
  if (typeof text !== 'string') return { error: 'a CIDR is a string like 10.0.0.0/8' };
  // Validation and compilation both parse every CIDR: memoise (bounded). Results are read-only.
  return cidrCache.get(text, parseCidrUncached);
}

// The longest valid text is 49 characters (`0000:0000:0000:0000:0000:ffff:255.255.255.255/128`).
const cidrCache = new TextMemo<Cidr | { error: string }>('cidr', 200_000, 64);

function parseCidrUncached(text: string): Cidr | { error: string } {
  const t = text.trim();
  const slash = t.indexOf('/');
  const addr = slash === -1 ? t : t.slice(0, slash);
  const lenText = slash === -1 ? null : t.slice(slash + 1);
  if (lenText !== null && !/^\d{1,3}$/.test(lenText)) return { error: `bad CIDR "${text}": prefix length must be a number` };
  if (isIPv4(addr)) {
    const n = parseIPv4(addr);
    if (n === null) return { error: `bad CIDR "${text}": bad IPv4 address` };
    const prefix = lenText === null ? 32 : Number(lenText);
    if (prefix > 32) return { error: `bad CIDR "${text}": IPv4 prefix length is 0-32` };
    const net = (n & maskV4(prefix)) >>> 0;
    return { family: 4, net, prefix, text: t };
  }
  if (addr.includes('%')) return { error: `bad CIDR "${text}": zone ids are not allowed` };
  const b = parseIPv6(addr);
  if (b === null) return { error: `bad CIDR "${text}": not an IPv4 or IPv6 address` };
  const prefix = lenText === null ? 128 : Number(lenText);
  if (prefix > 128) return { error: `bad CIDR "${text}": IPv6 prefix length is 0-128` };
  // Inside ::ffff:0:0/96 a rule names IPv4 addresses (`::ffff:198.51.100.0/120`): it is kept as the
  // IPv4 rule it means, so it matches an IPv4 destination as well as its mapped form (as BlockList).
  if (prefix >= 96 && isMappedPrefix(b)) {
    const v4Prefix = prefix - 96;
    const n = ((b[12]! << 24) | (b[13]! << 16) | (b[14]! << 8) | b[15]!) >>> 0;
    return { family: 4, net: (n & maskV4(v4Prefix)) >>> 0, prefix: v4Prefix, text: t };
  }
  return { family: 6, bytes: maskV6(b, prefix), prefix, text: t };
}

/** The first 96 bits are those of ::ffff:0:0 (IPv4-mapped). */
function isMappedPrefix(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

function maskV6(b: Uint8Array, prefix: number): Uint8Array {
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) {
    const bits = Math.max(0, Math.min(8, prefix - i * 8));
    out[i] = bits === 0 ? 0 : b[i]! & ((0xff << (8 - bits)) & 0xff);
  }
  return out;
}

function v6Key(b: Uint8Array, prefix: number): string {
  const m = maskV6(b, prefix);
  let s = '';
  const n = Math.ceil(prefix / 8);
  for (let i = 0; i < n; i++) s += String.fromCharCode(m[i]!);
  return s;
}

/** Parses an IP literal for CIDR lookups; null when it is not an IP. */
export function parseIp(ip: string): ParsedIp | null {
  const n = parseIPv4(ip);
  if (n !== null) return { v4: n, v6: null };
  const b = parseIPv6(ip);
  if (b === null) return null;
  let mapped: number | null = null;
  let isMapped = b[10] === 0xff && b[11] === 0xff;
  for (let i = 0; i < 10 && isMapped; i++) if (b[i] !== 0) isMapped = false;
  if (isMapped) mapped = ((b[12]! << 24) | (b[13]! << 16) | (b[14]! << 8) | b[15]!) >>> 0;
  return { v4: mapped, v6: b };
}

/** CIDR → values, indexed by prefix length; lookups return hits from the longest prefix down. */
export class CidrMap<T> {
  private readonly v4 = new Map<number, Map<number, T[]>>();
  private readonly v6 = new Map<number, Map<string, T[]>>();
  private v4Prefixes: number[] = [];
  private v6Prefixes: number[] = [];
  size = 0;

  /** Adds a parsed CIDR with its value. */
  add(c: Cidr, value: T): void {
    this.size++;
    if (c.family === 4) {
      let m = this.v4.get(c.prefix);
      if (!m) {
        m = new Map();
        this.v4.set(c.prefix, m);
        this.v4Prefixes = [...this.v4.keys()].sort((a, b) => b - a);
      }
      const list = m.get(c.net);
      if (list) list.push(value);
      else m.set(c.net, [value]);
    } else {
      let m = this.v6.get(c.prefix);
      if (!m) {
        m = new Map();
        this.v6.set(c.prefix, m);
        this.v6Prefixes = [...this.v6.keys()].sort((a, b) => b - a);
      }
      const key = v6Key(c.bytes, c.prefix);
      const list = m.get(key);
      if (list) list.push(value);
      else m.set(key, [value]);
    }
  }

  /**
   * Calls `visit(value, prefix)` for every entry containing `ip`, longest prefix first; stops early
   * when `visit` returns true.
   */
  forEachMatch(ip: ParsedIp, visit: (value: T, prefix: number) => boolean): void {
    if (ip.v4 !== null) {
      for (const p of this.v4Prefixes) {
        const list = this.v4.get(p)!.get((ip.v4 & maskV4(p)) >>> 0);
        if (list) for (const v of list) if (visit(v, p)) return;
      }
    }
    if (ip.v6 !== null) {
      for (const p of this.v6Prefixes) {
        const list = this.v6.get(p)!.get(v6Key(ip.v6, p));
        if (list) for (const v of list) if (visit(v, p)) return;
      }
    }
  }

  /**
   * Writes every value containing `ip` into `out` from index 0 (longest prefix first) and returns
   * how many it wrote; entries past that count are stale. Callback-free and without resizing
   * `out`, so the per-decision path allocates nothing.
   */
  collect(ip: ParsedIp, out: T[]): number {
    let n = 0;
    if (ip.v4 !== null) {
      for (const p of this.v4Prefixes) {
        const list = this.v4.get(p)!.get((ip.v4 & maskV4(p)) >>> 0);
        if (list) for (const v of list) out[n++] = v;
      }
    }
    if (ip.v6 !== null) {
      for (const p of this.v6Prefixes) {
        const list = this.v6.get(p)!.get(v6Key(ip.v6, p));
        if (list) for (const v of list) out[n++] = v;
      }
    }
    return n;
  }

  /**
   * Longest matching prefix on IPv6's scale, or -1: an IPv4 rule's length counts 96 more (it names as
   * few addresses as the IPv4-mapped rule would), an IPv6 rule's as written. An IPv4-mapped address
   * may be held by rules of both families, each scaled as its own (an IPv6 rule holding it is at most
   * a /95: a longer one is kept as the IPv4 rule it means, parseCidr).
   */
  longestOnV6Scale(ip: ParsedIp): number {
    if (ip.v4 !== null) {
      for (const p of this.v4Prefixes) if (this.v4.get(p)!.has((ip.v4 & maskV4(p)) >>> 0)) return p + 96;
    }
    if (ip.v6 !== null) {
      for (const p of this.v6Prefixes) if (this.v6.get(p)!.has(v6Key(ip.v6, p))) return p;
    }
    return -1;
  }

  /** Longest matching prefix length, or -1 when nothing contains `ip`. */
  longestPrefix(ip: ParsedIp): number {
    if (ip.v4 !== null) {
      for (const p of this.v4Prefixes) if (this.v4.get(p)!.has((ip.v4 & maskV4(p)) >>> 0)) return p;
    }
    if (ip.v6 !== null) {
      for (const p of this.v6Prefixes) if (this.v6.get(p)!.has(v6Key(ip.v6, p))) return p;
    }
    return -1;
  }
}

/** Builds a CidrMap from config strings (invalid ones are skipped: validate first). */
export function compileCidrSet(cidrs: readonly string[]): CidrMap<string> {
  const set = new CidrMap<string>();
  for (const c of cidrs) {
    const parsed = parseCidr(c);
    if (!('error' in parsed)) set.add(parsed, parsed.text);
  }
  return set;
}
