/**
 * Compiles a validated Config into a frozen PolicySnapshot (SPEC §3/§4).
 *
 * Compilation does the work once per reload so a decision is a few Map lookups:
 * - per role, host patterns in a HostPatternMap (exact Map + wildcard-suffix Map + `*`) and CIDR
 *   entries in a prefix-indexed CidrMap;
 * - per allow entry, its MatchedRule and the two possible allow Decisions (monitor/enforce), so the
 *   allow path allocates nothing;
 * - deny.cidrs and allowRanges as CidrMaps (longest prefix decides between them).
 */
import { canonicalIPv6, classifyIPv4Number, classifyIPv6, embeddedIPv4, formatAuthority, localUseNat64IPv4s, parseIPv4 } from './address.ts';
import { CidrMap, compileCidrSet, type ParsedIp, parseCidr, parseIp } from './cidr.ts';
import type { AllowEntry, Config } from './config.ts';
import { HostPatternMap, hostKey, isIpLiteralLike, normalizeHost, normalizeHostFast, parseHostPattern } from './host-pattern.ts';
import { compilePorts, type PortMatcher, portMatches } from './ports.ts';
import type { ConnectFacts, Decision, MatchedRule, Mode, PolicySnapshot, Protocol } from './types.ts';

/** The loopback address Linux connects to for the unspecified one, as text and parsed. */
interface ReachedAddress {
  readonly text: string;
  readonly ip: ParsedIp;
}

const LOOPBACK_V4: ReachedAddress = Object.freeze({ text: '127.0.0.1', ip: Object.freeze({ v4: 0x7f000001, v6: null }) });
const LOOPBACK_V6: ReachedAddress = Object.freeze({ text: '::1', ip: Object.freeze({ v4: null, v6: Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1) }) });

/**
 * What a connect(2) or sendto(2) to `ip` reaches when it is the unspecified address: Linux takes
 * `0.0.0.0` (also as `::ffff:0.0.0.0` on a dual-stack socket) for 127.0.0.1 and `::` for ::1
 * (ip_route_connect, tcp_v6_connect). Null for every other address: one comparison for IPv4.
 */
function unspecifiedReaches(ip: ParsedIp): ReachedAddress | null {
  if (ip.v4 !== null) return ip.v4 === 0 ? LOOPBACK_V4 : null;
  const b = ip.v6;
  if (b === null || b[15] !== 0 || b[0] !== 0) return null;
  for (let i = 1; i < 15; i++) if (b[i] !== 0) return null;
  return LOOPBACK_V6;
}

/**
 * One allow entry. Its MatchedRule and allow Decisions are built on first use and then reused for
 * every flow it admits: the allow path allocates nothing, and a reload does not pay for 3 objects
 * per entry that most entries never need.
 */
class CompiledEntry {
  private ruleCache: MatchedRule | null = null;
  private monitorCache: Decision | null = null;
  private enforceCache: Decision | null = null;

  constructor(
    readonly role: string,
    readonly index: number,
    readonly ports: PortMatcher | null,
    readonly protocol: 'tcp' | 'udp' | null,
    private readonly source: AllowEntry,
  ) {}

  get rule(): MatchedRule {
    this.ruleCache ??= Object.freeze({ role: this.role, index: this.index, entry: describeEntry(this.source) });
    return this.ruleCache;
  }

  allow(mode: Mode): Decision {
    if (mode === 'enforce') {
      this.enforceCache ??= allowDecision('enforce', this.rule);
      return this.enforceCache;
    }
    this.monitorCache ??= allowDecision('monitor', this.rule);
    return this.monitorCache;
  }
}

interface CompiledRole {
  readonly mode: Mode | null;
  readonly entryCount: number;
  readonly hasCidr: boolean;
}

/**
 * The allow entries of every role in two global indexes (host patterns, CIDRs). A decision looks
 * the destination up once and keeps the candidates whose role the identity has, instead of
 * walking each role: cost O(labels + candidates), whatever the number of roles and entries.
 */
class AllowIndex {
  readonly hosts = new HostPatternMap<CompiledEntry>();
  readonly cidrs = new CidrMap<CompiledEntry>();
  // Scratch state of the current decision (decide() is synchronous and never re-entered).
  private best: CompiledEntry | null = null;
  private bestRank = 0;
  private readonly scratch: CompiledEntry[] = [];

  /** The admitting entry: earliest role of `roles` first, then the lowest index in that role. */
  find(roles: readonly string[], host: string, ip: ParsedIp | null, port: number, proto: Protocol): CompiledEntry | null {
    this.best = null;
    this.bestRank = roles.length;
    const h = this.hosts;
    const exact = h.exact.get(hostKey(host));
    if (exact !== undefined) this.consider(exact, exact.length, roles, port, proto);
    if (h.wildcard.size > 0 && !isIpLiteralLike(host)) {
      // Proper suffixes, longest first, probing only label counts that some wildcard has.
      const labels = h.wildcardLabels;
      let n = 1;
      for (let k = 0; k < host.length; k++) if (host.charCodeAt(k) === 46) n++;
      let i = host.indexOf('.');
      while (i !== -1) {
        n--;
        if (labels[n] === true) {
          const list = h.wildcard.get(host.slice(i + 1));
          if (list !== undefined) this.consider(list, list.length, roles, port, proto);
        }
        i = host.indexOf('.', i + 1);
      }
    }
    if (h.any.length > 0) this.consider(h.any, h.any.length, roles, port, proto);
    if (ip !== null && this.cidrs.size > 0) {
      const count = this.cidrs.collect(ip, this.scratch);
      if (count > 0) this.consider(this.scratch, count, roles, port, proto);
    }
    const found = this.best;
    this.best = null;
    return found;
  }

  private consider(list: readonly CompiledEntry[], count: number, roles: readonly string[], port: number, proto: Protocol): void {
    for (let k = 0; k < count; k++) {
      const e = list[k]!;
      const rank = roles.length === 1 ? (roles[0] === e.role ? 0 : -1) : roles.indexOf(e.role);
      if (rank < 0 || rank > this.bestRank) continue;
      if (rank === this.bestRank && this.best !== null && e.index >= this.best.index) continue;
      if (!portMatches(e.ports, port) || !protocolMatches(e.protocol, proto)) continue;
      this.best = e;
      this.bestRank = rank;
    }
  }
}

/** Readable one-line form of an allow entry, used in matchedRule and reasons. */
export function describeEntry(e: AllowEntry): string {
  const parts: string[] = [];
  if (e.host !== undefined) parts.push(`host=${e.host}`);
  if (e.cidr !== undefined) parts.push(`cidr=${e.cidr}`);
  if (e.ports !== undefined) parts.push(`ports=${e.ports.join(',')}`);
  if (e.protocol !== undefined) parts.push(`protocol=${e.protocol}`);
  return parts.join(' ');
}

function protocolMatches(want: 'tcp' | 'udp' | null, p: Protocol): boolean {
  if (want === null) return true;
  return want === 'udp' ? p === 'socks5-udp' : p !== 'socks5-udp';
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o as Record<string, unknown>)) deepFreeze(v);
  }
  return o;
}

function allowDecision(mode: Mode, rule: MatchedRule): Decision {
  return Object.freeze({
    verdict: 'allow',
    reason: 'allowed',
    detector: null,
    mode,
    matchedRule: rule,
    reasons: Object.freeze([`allowed by role ${rule.role} allow[${rule.index}]: ${rule.entry}`]),
  });
}

function compileRole(name: string, cfg: Config['roles'][string], index: AllowIndex, ports: PortCache): CompiledRole {
  let hasCidr = false;
  const allow = cfg.allow;
  for (let i = 0; i < allow.length; i++) {
    const e = allow[i]!;
    const entry = new CompiledEntry(name, i, ports.get(e.ports), e.protocol ?? null, e);
    if (e.host !== undefined) {
      const p = parseHostPattern(e.host);
      if (!('error' in p)) index.hosts.add(p, entry);
    } else if (e.cidr !== undefined) {
      const c = parseCidr(e.cidr);
      if (!('error' in c)) {
        index.cidrs.add(c, entry);
        hasCidr = true;
      }
    }
  }
  return { mode: cfg.mode ?? null, entryCount: allow.length, hasCidr };
}

/** Port lists repeat across entries ([443], [80, 443]): compile each distinct list once. */
class PortCache {
  private readonly map = new Map<string, PortMatcher | null>();
  get(ports: ReadonlyArray<number | string> | undefined): PortMatcher | null {
    if (ports === undefined) return null;
    const key = ports.join(',');
    let m = this.map.get(key);
    if (m === undefined) {
      m = compilePorts(ports);
      this.map.set(key, m);
    }
    return m;
  }
}

function addRoles(map: Map<string, string[]>, key: string, roles: readonly string[]): void {
  const list = map.get(key) ?? [];
  for (const r of roles) if (!list.includes(r)) list.push(r);
  map.set(key, list);
}

export interface CompileOptions {
  /**
   * The caller hands the config over (a fresh object from `loadConfig`, as the policy store does):
   * freeze it in place instead of deep-copying it first. Default false.
   */
  owned?: boolean;
}

/**
 * Builds the frozen snapshot the data plane decides with. `config` must already be validated
 * (`loadConfig`); it is deep-copied and frozen (unless `owned`), so the caller's object stays
 * mutable.
 */
export function compilePolicy(config: Config, version = 1, opts: CompileOptions = {}): PolicySnapshot {
  const cfg = deepFreeze(opts.owned ? config : structuredClone(config));
  const roles = new Map<string, CompiledRole>();
  const index = new AllowIndex();
  const portCache = new PortCache();
  for (const [name, r] of Object.entries(cfg.roles)) roles.set(name, compileRole(name, r, index, portCache));

  const userRoles = new Map<string, string[]>();
  for (const u of cfg.identity.users) addRoles(userRoles, u.name, u.roles);
  const hostRoles = new Map<string, string[]>();
  for (const h of cfg.identity.hosts) addRoles(hostRoles, h.name, h.roles);
  const defaultRoles = Object.freeze([...cfg.defaultRoles]);

  const denyCidrs = compileCidrSet(cfg.deny.cidrs);
  const allowRanges = compileCidrSet(cfg.allowRanges);
  const privateRanges = cfg.deny.privateRanges;

  const staticHosts = new Map<string, string>();
  for (const [name, ip] of Object.entries(cfg.resolver.hosts)) {
    const key = normalizeHost(name);
    // The answer in the form every other path records (an IPv6 literal in RFC 5952 text).
    if (key !== null) staticHosts.set(key, ip.includes(':') ? canonicalIPv6(ip) : ip);
  }

  function rolesFor(user: string | null, host: string | null): readonly string[] {
    const fromUser = user === null ? undefined : userRoles.get(user);
    const fromHost = host === null ? undefined : hostRoles.get(host);
    if (fromUser === undefined && fromHost === undefined) return defaultRoles;
    if (fromHost === undefined) return fromUser!;
    if (fromUser === undefined) return fromHost;
    const out = [...fromUser];
    for (const r of fromHost) if (!out.includes(r)) out.push(r);
    return out;
  }

  function modeFor(ids: readonly string[], globalModeOverride?: Mode | null): Mode {
    // A runtime switch to monitor is the operator's emergency brake: it wins over every role, so
    // one call rolls the whole gateway back. Otherwise each role's mode is its own override or the
    // global one, and enforce wins over monitor.
    if (globalModeOverride === 'monitor') return 'monitor';
    const global = globalModeOverride ?? cfg.mode;
    if (ids.length === 0) return global;
    for (const id of ids) {
      const r = roles.get(id);
      if ((r?.mode ?? global) === 'enforce') return 'enforce';
    }
    return 'monitor';
  }

  /**
   * Longest prefix of `set` containing the address as dialled or the IPv4 it embeds, on IPv6's scale
   * (CidrMap.longestOnV6Scale): an IPv4 /32 names one address, as an IPv6 /128 does, so `deny.cidrs:
   * [169.254.169.254/32]` is more specific than `allowRanges: [64:ff9b::/96]` for
   * 64:ff9b::a9fe:a9fe. Compared as written (32 against 96) the allowRanges entry won it. -1: none.
   */
  function longest(set: CidrMap<string>, ip: ParsedIp, inner: ParsedIp | null): number {
    if (set.size === 0) return -1;
    const a = set.longestOnV6Scale(ip);
    return inner === null ? a : Math.max(a, set.longestOnV6Scale(inner));
  }

  /**
   * Why the dialled address is denied, or null when it may be dialled. The unspecified address is
   * judged as the loopback address Linux dials for it too (unspecifiedReaches): with
   * `privateRanges: false` and loopback in deny.cidrs, `0.0.0.0`, `::` and `::ffff:0.0.0.0` reached
   * this host's loopback services.
   */
  function denyRange(destIp: string, ip: ParsedIp | null): string | null {
    if (ip === null) return `destination address "${destIp}" is not an IP address`;
    const why = rangeRefusal(destIp, ip);
    if (why !== null) return why;
    const reached = unspecifiedReaches(ip);
    if (reached === null) return null;
    const asDialled = rangeRefusal(reached.text, reached.ip);
    return asDialled === null ? null : `${asDialled} (${destIp} is dialled as ${reached.text}: the unspecified address reaches this host)`;
  }

  /** denyRange's judgement of one address as written. */
  function rangeRefusal(destIp: string, ip: ParsedIp): string | null {
    if (ip.v4 === null) {
      const carried = localUseNat64IPv4s(ip.v6!);
      if (carried !== null) return localUseRefusal(destIp, ip, carried);
    }
    // Plain IPv4 and IPv4-mapped carry v4; other IPv6 forms may embed one (NAT64, 6to4, Teredo).
    const n = ip.v4 === null ? embeddedIPv4(ip.v6!) : null;
    const label = !privateRanges ? null : ip.v4 !== null ? classifyIPv4Number(ip.v4) : classifyIPv6(ip.v6!);
    if (label === null && denyCidrs.size === 0) return null;
    const inner: ParsedIp | null = n === null ? null : { v4: n, v6: null };
    return verdictOf(destIp, label, longest(allowRanges, ip, inner), longest(denyCidrs, ip, inner));
  }

  /**
   * A local-use NAT64 address (64:ff9b:1::/48) carries a different IPv4 address under each RFC 6052
   * layout its translator may use (localUseNat64IPv4s), and any of them may be the one reached: it
   * is refused when one reading would be, judged as that IPv4 address is (its range, deny.cidrs, and
   * an allowRanges exception for that reading or for the IPv6 address as written). An exception for
   * one reading never admits another: allowRanges 10.0.0.0/8 admitted 64:ff9b:1:a00:0:100:a9fe:a9fe
   * (/48 reading 10.0.0.1), which a /96 translator carries to 169.254.169.254. Only these addresses
   * pay for it: up to four readings, two CIDR lookups each.
   */
  function localUseRefusal(destIp: string, ip: ParsedIp, carried: readonly number[]): string | null {
    const allow6 = longest(allowRanges, ip, null);
    const deny6 = longest(denyCidrs, ip, null);
    for (const v4 of carried) {
      const reading: ParsedIp = { v4, v6: null };
      const label = privateRanges ? classifyIPv4Number(v4) : null;
      const why = verdictOf(destIp, label, Math.max(allow6, longest(allowRanges, reading, null)), Math.max(deny6, longest(denyCidrs, reading, null)));
      if (why !== null) return why;
    }
    return carried.length === 0 ? verdictOf(destIp, null, allow6, deny6) : null;
  }

  /** The refusal for an address of range `label` (null: public) given its longest allowRanges and deny.cidrs prefixes, or null. */
  function verdictOf(destIp: string, label: string | null, allowLen: number, denyLen: number): string | null {
    // A deny.cidrs entry at least as specific as the allowRanges exception still denies (the
    // precedence surprise of smokescreen #236 is avoided: the most specific rule wins).
    if (denyLen >= 0 && denyLen >= allowLen) return `destination address ${destIp} is in deny.cidrs`;
    if (label !== null && allowLen < 0) return `destination address ${destIp} is in a denied range (${label})`;
    return null;
  }

  /** The refusal with its explanation: per role, what came close or that nothing matched. */
  function notAllowed(facts: ConnectFacts, host: string, ip: ParsedIp | null, mode: Mode): Decision {
    const reasons: string[] = [];
    const ids = facts.identity.roles;
    if (ids.length === 0) reasons.push('identity has no roles (no configured user or host matched, and defaultRoles is empty)');
    // Entries whose destination matches (host pattern or CIDR) but whose port/protocol does not.
    const candidates: CompiledEntry[] = [];
    index.hosts.forEachMatch(host, (e) => {
      candidates.push(e);
      return false;
    });
    if (ip !== null) {
      const hits: CompiledEntry[] = [];
      const count = index.cidrs.collect(ip, hits);
      for (let k = 0; k < count; k++) candidates.push(hits[k]!);
    }
    for (const id of ids) {
      const r = roles.get(id);
      if (r === undefined) {
        reasons.push(`role ${id}: not defined in roles`);
        continue;
      }
      if (r.entryCount === 0) {
        reasons.push(`role ${id}: has no allow entries`);
        continue;
      }
      const near = candidates.filter((e) => e.role === id).sort((a, b) => a.index - b.index);
      for (const e of near) {
        const what = !portMatches(e.ports, facts.destPort) ? `port ${facts.destPort}` : `protocol ${facts.protocol}`;
        reasons.push(`role ${id}: allow[${e.index}] (${e.rule.entry}) matches the destination but not ${what}`);
      }
      if (near.length === 0) {
        const addr = facts.destIp !== null && r.hasCidr ? ` or address ${facts.destIp}` : '';
        reasons.push(`role ${id}: no allow entry matches host ${host}${addr}`);
      }
    }
    if (facts.destIp === null) reasons.push('destination address unknown: CIDR entries were not evaluated');
    const verdict = mode === 'enforce' ? 'block' : 'would-block';
    reasons.push(`not allowlisted: ${formatAuthority(host, facts.destPort)} ${mode === 'enforce' ? 'is blocked' : 'would be blocked in enforce mode (monitor mode records it)'}`);
    return Object.freeze({ verdict, reason: 'not-allowlisted', detector: 'policy.deny', mode, matchedRule: null, reasons });
  }

  // One reusable ParsedIp for plain IPv4 destinations (the common case): decide() is synchronous
  // and the value never outlives the call, so the hot path need not allocate it.
  const v4Scratch: { v4: number | null; v6: Uint8Array | null } = { v4: 0, v6: null };
  function parseDestIp(destIp: string): ParsedIp | null {
    const n = parseIPv4(destIp);
    if (n === null) return parseIp(destIp);
    v4Scratch.v4 = n;
    return v4Scratch;
  }

  function decide(facts: ConnectFacts, _now: number, globalModeOverride?: Mode | null): Decision {
    const ids = facts.identity.roles;
    const mode = modeFor(ids, globalModeOverride);
    const ip = facts.destIp === null ? null : parseDestIp(facts.destIp);
    // 1. SSRF floor on the dialled address: block in every mode.
    if (facts.destIp !== null) {
      const why = denyRange(facts.destIp, ip);
      if (why !== null) {
        return Object.freeze({
          verdict: 'block',
          reason: 'deny-range',
          detector: 'policy.deny-range',
          mode,
          matchedRule: null,
          reasons: [why],
        });
      }
    }
    // 2. Allow entries of every role: the earliest entry of the first admitting role is matchedRule.
    const host = normalizeHostFast(facts.destHost);
    const hit = ids.length === 0 ? null : index.find(ids, host, ip, facts.destPort, facts.protocol);
    if (hit !== null) return hit.allow(mode);
    // 3. Nothing admitted it.
    return notAllowed(facts, host, ip, mode);
  }

  function staticAddress(host: string): string | null {
    return staticHosts.get(normalizeHostFast(host)) ?? null;
  }

  function mayAllowName(ids: readonly string[], host: string, port: number, protocol: Protocol): boolean {
    if (ids.length === 0) return false;
    for (const id of ids) if (roles.get(id)?.hasCidr === true) return true;
    return index.find(ids, normalizeHostFast(host), null, port, protocol) !== null;
  }

  return Object.freeze({ version, config: cfg, rolesFor, modeFor, decide, staticAddress, mayAllowName });
}
