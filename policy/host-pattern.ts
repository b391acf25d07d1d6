/**
 * Host names and host patterns: normalisation (case, trailing dot, IDN → punycode) and a compiled,
 * label-aware matcher. `*.example.com` matches `a.example.com` and `a.b.example.com` but not
 * `example.com`; `example.com` matches exactly; `*` matches any host. Lookups walk the name's label
 * suffixes through Maps, so the cost is O(labels), not O(patterns).
 */
import { isIP } from 'node:net';
import { domainToASCII, domainToUnicode } from 'node:url';
import { unmapIPv4, withMappedTail } from './address.ts';
import { TextMemo } from './text-memo.ts';

/** One label of a normalised host name (lower-case; `_` allowed for service names). */
export const HOST_LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * Characters no host name has that change what a URL parser or a resolver does with one: refused
 * up front, in a destination (gateway/protocol/authority.ts) as in a policy entry. domainToASCII
 * parses its input as a URL host, so it ends the name at `/`, `?`, `#` or `\` and drops tabs and
 * line breaks inside it: `api.example.com/v1` came back `api.example.com`, `a\tb.example` `ab.example`.
 */
export const NOT_IN_NAME = /[\s/?#@\\%*[\]<>^|"'`{}:,;!$&()+=~]/u;

/**
 * Canonical form of a host name or IP literal: lower-case, no trailing dot, IDN labels as punycode,
 * IPv6 without brackets in RFC 5952 form (withMappedTail). Returns null when it is not a valid host name,
 * a name with a character of NOT_IN_NAME included: it is refused whole, never cut short.
 */
export function normalizeHost(input: string): string | null {
  let h = input.trim();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  if (h.length === 0) return null;
  const kind = isIP(h);
  if (kind === 4) return h;
  if (kind === 6) return canonicalIPv6(h);
  if (NOT_IN_NAME.test(h)) return null;
  const ascii = hostToAscii(h.toLowerCase());
  if (ascii === '' || ascii.length > 253) return null;
  for (const label of ascii.split('.')) if (!HOST_LABEL.test(label)) return null;
  // A name whose last label is all digits would be read as an IPv4 address by some resolvers.
  if (/^\d+$/.test(ascii.slice(ascii.lastIndexOf('.') + 1))) return null;
  return ascii;
}

/**
 * `domainToASCII`, the same on every node: "" for a name it refuses, and also for a name with an
 * "xn--" label that is not valid punycode — node 20 and 22 refuse those in domainToASCII itself;
 * node 24 hands them back unchanged, and its domainToUnicode leaves such a label undecoded.
 */
export function hostToAscii(name: string): string {
  const ascii = domainToASCII(name);
  if (!ascii.includes('xn--')) return ascii;
  for (const label of ascii.split('.')) {
    if (!label.startsWith('xn--')) continue;
    const decoded = domainToUnicode(label);
    if (decoded === '' || decoded.startsWith('xn--')) return '';
  }
  return ascii;
}

/**
 * Compressed, lower-case IPv6 (the WHATWG URL serialiser), an IPv4-mapped address with its dotted
 * tail: the form the data plane gives a destination (gateway/protocol/authority.ts), so a rule naming
 * `[::ffff:7f00:1]` or `[::ffff:127.0.0.1]` is one key.
 */
function canonicalIPv6(ip: string): string {
  const pct = ip.indexOf('%');
  const bare = pct === -1 ? ip : ip.slice(0, pct);
  try {
    return withMappedTail(new URL(`http://[${bare}]/`).hostname.slice(1, -1));
  } catch {
    return bare.toLowerCase();
  }
}

/**
 * Cheap normalisation for the hot path: destination hosts from the data plane are already
 * canonical, so only fall back to the full normaliser when the string says it must.
 */
export function normalizeHostFast(h: string): string {
  const len = h.length;
  let isCanonical = len > 0 && h.charCodeAt(len - 1) !== 46;
  for (let i = 0; i < len && isCanonical; i++) {
    const c = h.charCodeAt(i);
    // a-z 0-9 . - _ : (IPv6 literals) are already canonical; anything else needs the full path.
    isCanonical = (c >= 97 && c <= 122) || (c >= 48 && c <= 58) || c === 46 || c === 45 || c === 95;
  }
  return isCanonical ? h : (normalizeHost(h) ?? h.toLowerCase());
}

/**
 * The key an exact pattern and a normalised destination are looked up by: an IPv4-mapped address
 * (`::ffff:127.0.0.3`, as normalizeHost and the data plane write it) as its IPv4 address, since a dial
 * to it reaches that IPv4 host; anything else unchanged. So a rule naming `127.0.0.3` admits
 * `[::ffff:127.0.0.3]` and one naming `[::ffff:7f00:3]` admits `127.0.0.3`. Names are never keyed by
 * their address: a name rule matches the name the client used, an IP rule no name.
 */
export function hostKey(host: string): string {
  return host.charCodeAt(0) === 58 && host.startsWith('::ffff:') ? unmapIPv4(host) : host;
}

export type HostPattern =
  | { readonly kind: 'any' }
  | { readonly kind: 'exact'; readonly host: string }
  | { readonly kind: 'wildcard'; readonly suffix: string };

// Validation and compilation both parse every pattern, and a reload re-parses mostly the same
// ones: memoise (bounded) so IDN conversion runs once per distinct pattern.
// A name is at most 253 characters (its Unicode spelling fewer), `*.` and spaces around it a few more.
const patternCache = new TextMemo<HostPattern | { error: string }>('host pattern', 200_000, 300);
const parseFrozen = (pattern: string): HostPattern | { error: string } => Object.freeze(parseHostPatternUncached(pattern));

/** Parses an allow-entry / list host pattern; returns an error message when it is not valid. */
export function parseHostPattern(pattern: string): HostPattern | { error: string } {
  return patternCache.get(pattern, parseFrozen);
}

function parseHostPatternUncached(pattern: string): HostPattern | { error: string } {
  const p = pattern.trim();
  if (p === '*') return { kind: 'any' };
  if (p.startsWith('*.')) {
    const rest = p.slice(2);
    if (rest.includes('*')) return { error: `bad host pattern "${pattern}": only one leading "*." is allowed` };
    const suffix = normalizeHost(rest);
    if (suffix === null || isIP(suffix) !== 0) {
      const problem = suffix === null ? nameTextProblem(rest) : null;
      return { error: `bad host pattern "${pattern}": "${rest}" is not a host name${problem === null ? '' : `: ${problem}`}` };
    }
    return { kind: 'wildcard', suffix };
  }
  if (p.includes('*')) return { error: `bad host pattern "${pattern}": "*" is allowed only as a leading "*." label` };
  // normalizeHost drops an IPv6 zone id ("fe80::1%eth0" is fe80::1), which would turn an entry
  // scoped to one interface into one for the bare address; no destination carries a zone (the data
  // plane refuses "%25eth0"), so such an entry is refused, as parseCidr refuses one.
  if (p.includes('%') && isIP(p.replace(/^\[|\]$/g, '')) === 6) return { error: `bad host pattern "${pattern}": zone ids are not allowed (no destination carries one)` };
  const host = normalizeHost(p);
  if (host === null) return { error: `bad host pattern "${pattern}": ${nameTextProblem(p) ?? 'not a host name or IP address'}` };
  return { kind: 'exact', host };
}

/**
 * Why a text that is no host name is none, when a character says so: what it looks like instead (a
 * URL, a path, a port), for the error at the entry's path. Null when no character does.
 */
export function nameTextProblem(text: string): string | null {
  const t = text.trim();
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(t)) return 'a URL, not a host name: write the host alone (no scheme, port or path)';
  if (/^[0-9a-f.:]+\/\d+$/i.test(t)) return 'a CIDR, not a host name (an allow entry takes one as cidr:)';
  if (/^(?:\[[^\]]*\]|[^:[\]]*):\d+$/.test(t)) return 'a port is no part of a host name (ports are written apart from it)';
  const m = NOT_IN_NAME.exec(t);
  if (m === null) return null;
  const c = m[0];
  if (/\s/u.test(c)) return 'white space inside a host name';
  if (c === '/') return '"/" starts a path, which is no part of a host name: write the host alone';
  if (c === '?' || c === '#') return `"${c}" starts a URL's query or fragment, which is no part of a host name: write the host alone`;
  if (c === '@') return '"@" ends a URL\'s user name, which is no part of a host name: write the host alone';
  if (c === ':') return '":" is no part of a host name (an IPv6 address is written alone, without a port)';
  if (c === '%') return '"%" is no part of a host name (percent-encoding is not decoded; a zone id is not allowed)';
  return `"${c}" is no character of a host name`;
}

/**
 * True when `host` (normalised) is an IP literal: IPv6 has ':', IPv4's last label is all digits
 * (a valid host name never ends in an all-digit label, see `normalizeHost`).
 */
export function isIpLiteralLike(host: string): boolean {
  if (host.includes(':')) return true;
  for (let i = host.length - 1; i >= 0; i--) {
    const c = host.charCodeAt(i);
    if (c === 46) return i < host.length - 1;
    if (c < 48 || c > 57) return false;
  }
  return host.length > 0;
}

/**
 * Patterns compiled into Maps. Values are kept in insertion order per key so callers can pick the
 * earliest entry.
 */
export class HostPatternMap<T> {
  readonly exact = new Map<string, T[]>();
  readonly wildcard = new Map<string, T[]>();
  readonly any: T[] = [];
  /** wildcardLabels[n] is true when some wildcard suffix has n labels: lookups skip other lengths. */
  readonly wildcardLabels: boolean[] = [];
  size = 0;

  /** Adds a parsed pattern with its value. */
  add(pattern: HostPattern, value: T): void {
    this.size++;
    if (pattern.kind === 'any') {
      this.any.push(value);
      return;
    }
    if (pattern.kind === 'wildcard') this.wildcardLabels[pattern.suffix.split('.').length] = true;
    const map = pattern.kind === 'exact' ? this.exact : this.wildcard;
    const key = pattern.kind === 'exact' ? hostKey(pattern.host) : pattern.suffix;
    const list = map.get(key);
    if (list) list.push(value);
    else map.set(key, [value]);
  }

  /**
   * Calls `visit` for every value whose pattern matches `host` (already normalised); stops early when
   * `visit` returns true. Order: exact, then wildcards from the most to the least specific, then `*`.
   */
  forEachMatch(host: string, visit: (value: T) => boolean): void {
    const ex = this.exact.get(hostKey(host));
    if (ex) for (const v of ex) if (visit(v)) return;
    if (this.wildcard.size > 0 && !isIpLiteralLike(host)) {
      // Most specific first: walk the proper suffixes from the longest down, probing only the label
      // counts some wildcard has (each probe hashes a fresh string).
      const labels = this.wildcardLabels;
      let n = 1;
      for (let i = 0; i < host.length; i++) if (host.charCodeAt(i) === 46) n++;
      let i = host.indexOf('.');
      while (i !== -1) {
        n--;
        if (labels[n] === true) {
          const list = this.wildcard.get(host.slice(i + 1));
          if (list) for (const v of list) if (visit(v)) return;
        }
        i = host.indexOf('.', i + 1);
      }
    }
    for (const v of this.any) if (visit(v)) return;
  }

  /** True when any pattern matches `host` (normalised). */
  matches(host: string): boolean {
    let hit = false;
    this.forEachMatch(host, () => {
      hit = true;
      return true;
    });
    return hit;
  }
}

/** A compiled set of host patterns from a config list (invalid patterns are skipped: validate first). */
export function compileHostSet(patterns: readonly string[]): HostPatternMap<true> {
  const set = new HostPatternMap<true>();
  for (const p of patterns) {
    const parsed = parseHostPattern(p);
    if (!('error' in parsed)) set.add(parsed, true);
  }
  return set;
}
