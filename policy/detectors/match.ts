/**
 * Small pure matchers the detectors share: process-name lists, domain suffix lists, registrable
 * domains, identity keys and severity arithmetic.
 */
import { isIP } from 'node:net';
import { unmapIPv4 } from '../address.ts';
import { isIpLiteralLike, normalizeHostFast, parseHostPattern } from '../host-pattern.ts';
import type { Identity, ProcessInfo, Severity } from '../types.ts';
import type { FlowView } from './types.ts';

const baseCache = new Map<string, string>();

/** Basename of a process name or exe path, lower-case, without `.exe` (memoised: called per flow). */
export function baseName(nameOrPath: string | null | undefined): string {
  if (!nameOrPath) return '';
  const hit = baseCache.get(nameOrPath);
  if (hit !== undefined) return hit;
  if (baseCache.size >= 10_000) baseCache.clear();
  const b = computeBaseName(nameOrPath);
  baseCache.set(nameOrPath, b);
  return b;
}

function computeBaseName(nameOrPath: string): string {
  const slash = Math.max(nameOrPath.lastIndexOf('/'), nameOrPath.lastIndexOf('\\'));
  const base = nameOrPath.slice(slash + 1).toLowerCase();
  return base.endsWith('.exe') ? base.slice(0, -4) : base;
}

/** A compiled name list: exact names plus `prefix*` entries. */
export class NameList {
  private readonly exact = new Set<string>();
  private readonly prefixes: string[] = [];

  constructor(names: readonly string[]) {
    for (const raw of names) {
      const n = baseName(raw.trim());
      if (n.endsWith('*')) this.prefixes.push(n.slice(0, -1));
      else if (n) this.exact.add(n);
    }
  }

  /** True when the basename of `name` is on the list. */
  has(name: string | null | undefined): boolean {
    const b = baseName(name);
    if (!b) return false;
    if (this.exact.has(b)) return true;
    for (const p of this.prefixes) if (b.startsWith(p)) return true;
    return false;
  }
}

/**
 * A compiled domain list: an entry matches itself and all its subdomains (`*.` prefixes ignored).
 * Entries are read as host patterns (parseHostPattern: lower case, no trailing dot, IDN labels as
 * punycode, IPv6 in RFC 5952 text), the form the data plane gives a destination, so `pröxy.test`
 * matches `xn--prxy-6qa.test` and `[::FFFF:7F00:3]` matches `::ffff:127.0.0.3`. An IP literal matches
 * that address only, and an IPv4-mapped address is its IPv4 address on both sides: `127.0.0.3` is
 * matched by `[::ffff:127.0.0.3]` too, which dials the same host.
 */
export class DomainList {
  private readonly set = new Set<string>();

  constructor(domains: readonly string[]) {
    for (const d of domains) {
      // Validation refuses an entry that is no host pattern (config-schema.ts, domainEntry).
      const p = parseHostPattern(d);
      if ('error' in p || p.kind === 'any') continue;
      const host = p.kind === 'exact' ? p.host : p.suffix;
      this.set.add(host.includes(':') ? unmapIPv4(host) : host);
    }
  }

  /** The listed entry `host` falls under (itself or a parent domain; an IP literal: itself), or null. */
  match(host: string): string | null {
    let h = normalizeHostFast(host);
    if (isIpLiteralLike(h)) {
      if (h.includes(':')) h = unmapIPv4(h);
      return this.set.has(h) ? h : null;
    }
    for (;;) {
      if (this.set.has(h)) return h;
      const dot = h.indexOf('.');
      if (dot === -1) return null;
      h = h.slice(dot + 1);
    }
  }
}

// Second-level labels under which registrations happen (co.uk, com.au, …): a pragmatic subset of
// the Public Suffix List, enough to keep `a.co.uk` and `b.co.uk` apart.
const SECOND_LEVEL = new Set(['co', 'com', 'net', 'org', 'ac', 'gov', 'edu', 'ne', 'or', 'go']);

// Hot in every sweep (one call per flow): memoised, cleared wholesale when it grows large.
const domainCache = new Map<string, string>();

/**
 * Registrable domain of a host (`a.b.example.com` → `example.com`); an IP literal is itself, an
 * IPv4-mapped IPv6 literal (`::ffff:127.0.0.1`, what a CONNECT to `[::ffff:7f00:1]` is recorded as)
 * its dotted IPv4: one address is one destination for the windows, however the client spelt it.
 */
export function registrableDomain(host: string): string {
  const hit = domainCache.get(host);
  if (hit !== undefined) return hit;
  if (domainCache.size >= 50_000) domainCache.clear();
  const d = computeRegistrable(host);
  domainCache.set(host, d);
  return d;
}

function computeRegistrable(host: string): string {
  const h = host.toLowerCase();
  if (isIP(h) !== 0) return unmapIPv4(h);
  const labels = h.split('.');
  if (labels.length <= 2) return h;
  const tld = labels[labels.length - 1]!;
  const sld = labels[labels.length - 2]!;
  const take = tld.length === 2 && SECOND_LEVEL.has(sld) ? 3 : 2;
  return labels.slice(-take).join('.');
}

/**
 * An address as the scan windows count it: IPv4-mapped IPv6 as its dotted IPv4 (the gateway dials
 * `::ffff:127.0.0.1` for a client that named it, and it is the same host as `127.0.0.1`).
 */
export function addressKey(ip: string): string {
  return ip.includes(':') ? unmapIPv4(ip.toLowerCase()) : ip;
}

/** True when the destination was named by IP address (no host name in CONNECT / SOCKS). */
export function isIpLiteral(host: string): boolean {
  return isIP(host) !== 0;
}

/** The host part of identity keys: inventory / header host name, else the client address. */
export function hostOf(identity: Identity, clientIp?: string): string {
  return identity.host ?? clientIp ?? '-';
}

/** The user part: authenticated user, else the process's user. */
export function userOf(identity: Identity): string {
  return identity.user ?? identity.process?.user ?? '-';
}

// Identity objects live as long as their flow; with a host name the key does not depend on the
// client address, so it is computed once per identity object.
const keyCache = new WeakMap<Identity, string>();

/** `host|user|process` — the key per-identity windows are counted under (research §3). */
export function identityKeyOf(identity: Identity, clientIp?: string): string {
  if (identity.host === null) return computeKey(identity, clientIp);
  let k = keyCache.get(identity);
  if (k === undefined) {
    k = computeKey(identity, clientIp);
    keyCache.set(identity, k);
  }
  return k;
}

function computeKey(identity: Identity, clientIp?: string): string {
  return `${hostOf(identity, clientIp)}|${userOf(identity)}|${baseName(identity.process?.name ?? identity.process?.exe) || '-'}`;
}

/** The process's name candidates: name, exe basename. */
export function processNames(p: ProcessInfo | null): string[] {
  if (!p) return [];
  const out = [baseName(p.name)];
  const exe = baseName(p.exe);
  if (exe && exe !== out[0]) out.push(exe);
  return out.filter((n) => n.length > 0);
}

const LEVELS: readonly Severity[] = ['low', 'medium', 'high'];

/** Severity as a number: low 0, medium 1, high 2 (research's "critical" is 3, shown as high). */
export function severityLevel(s: Severity): number {
  return LEVELS.indexOf(s);
}

/** Clamp a numeric level to a SPEC severity (critical folds into high). */
export function severityOf(level: number): Severity {
  return LEVELS[Math.max(0, Math.min(2, level))]!;
}

/** Human-readable byte count for reasons. */
export function fmtBytes(n: number): string {
  if (n >= 1024 * 1024 * 1024) return `${(n / (1024 * 1024 * 1024)).toFixed(2)} GiB`;
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** What tells one view from another: its `partKey` when it is one destination of a flow, else its id. */
export function viewKey(f: Pick<FlowView, 'id' | 'partKey'>): string {
  return f.partKey ?? f.id;
}

/** The flows `views` are about, each once (several views may be destinations of one flow). */
export function flowIdsOf(views: readonly FlowView[]): string[] {
  const ids = new Set<string>();
  for (const f of views) ids.add(f.id);
  return [...ids];
}
