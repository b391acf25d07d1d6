/**
 * Bearer-token authentication and scopes for the admin API.
 *
 * Tokens are never kept in clear: each is reduced to its sha256 digest once (config tokens may be
 * given as `tokenSha256` already), and a presented token is hashed and compared against every
 * digest with crypto.timingSafeEqual, so neither the comparison nor which entry matched leaks
 * through timing. The token set is rebuilt when the policy version changes, so a PUT /v1/policy
 * that adds or revokes a token takes effect at once.
 *
 * Scopes: read < admin. `agent` is a side scope accepted only where a route asks for it
 * (POST /v1/agents/reports), where admin is accepted too.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { AdminTokenConfig, Config } from '../policy/config.ts';
import type { ConfigIssue, CredentialSet } from '../gateway/control.ts';

export type Scope = 'read' | 'admin' | 'agent';
/** What a route asks for: `none` = no token (health, readiness, PAC). */
export type RequiredScope = Scope | 'none';

export interface Principal {
  name: string;
  scope: Scope;
  /**
   * Where the token came from: the config's admin tokens, identity.agents, EGRESSGATE_ADMIN_TOKEN,
   * the one `serve` generated at start (no other admin token), or extra.
   */
  origin: 'config' | 'agent' | 'env' | 'generated' | 'extra';
}

interface TokenEntry {
  digest: Buffer;
  principal: Principal;
}

export interface FailureDelayOptions {
  /** Failures from one address answered without delay. */
  freeAttempts?: number;
  /** Delay of the first slowed failure; doubles with each further one. */
  baseMs?: number;
  /** Upper bound of the delay. */
  maxMs?: number;
  /** A quiet address is forgiven after this long. */
  forgetAfterMs?: number;
}

/** The lockout of a source that keeps presenting bad tokens (read live: the policy may change it). */
export interface LockoutLimits {
  /** Failed tokens within a minute before the source is locked out; 0 = never. */
  maxFailuresPerMinute: number;
  /** How long it stays locked out. */
  lockoutMs: number;
}

/** Counters for /metrics. */
export interface AuthFailureStats {
  /** Requests answered 401 (no token, or one that matched nothing). */
  failuresTotal: number;
  /** Requests answered 429 unchecked because their source was locked out. */
  lockedOutTotal: number;
  /** Times a source was locked out. */
  lockoutsTotal: number;
}

interface SourceFailures {
  /** Consecutive failures (the delay). */
  count: number;
  /** Start of the current one-minute window and the bad tokens in it (the lockout). */
  windowStart: number;
  windowFailures: number;
  /** Locked out until then (ms since epoch); 0 = not locked out. */
  lockedUntil: number;
}

const LOCKOUT_WINDOW_MS = 60_000;

export interface TokenAuthOptions {
  /** Tokens always accepted besides the live config's (e.g. a generated one). */
  tokens?: readonly AdminTokenConfig[];
  /** EGRESSGATE_ADMIN_TOKEN: admin scope. */
  envToken?: string;
  /** The token generated at start when none is configured: admin scope, named `generated`. */
  generatedToken?: string;
  /** The live token set (ControlPort.credentials). */
  credentials?: () => CredentialSet;
  failureDelay?: FailureDelayOptions;
  /** Lockout of a source after repeated bad tokens; default: never. */
  lockout?: () => LockoutLimits;
  now?: () => number;
}

/** sha256 of a token, the only form kept in memory. */
export function tokenDigest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** A fresh random admin token (printed once by `serve` when no admin token is configured). */
export function generateAdminToken(): string {
  return `egw_${randomBytes(24).toString('base64url')}`;
}

/** Does a principal with `have` satisfy a route asking for `need`? */
export function scopeAllows(have: Scope, need: RequiredScope): boolean {
  switch (need) {
    case 'none':
      return true;
    case 'read':
      return have === 'read' || have === 'admin';
    case 'admin':
      return have === 'admin';
    case 'agent':
      return have === 'agent' || have === 'admin';
  }
}

/**
 * Delay before answering the n-th consecutive failure from one address: none for the first
 * `freeAttempts`, then base·2^k, capped at `maxMs`.
 */
export function failureDelayMs(failures: number, opts: FailureDelayOptions = {}): number {
  const free = opts.freeAttempts ?? 3;
  const base = opts.baseMs ?? 250;
  const max = opts.maxMs ?? 5_000;
  if (failures <= free) return 0;
  return Math.min(max, base * 2 ** Math.min(20, failures - free - 1));
}

function digestOf(entry: { token?: string; tokenSha256?: string }): Buffer | null {
  if (entry.token) return tokenDigest(entry.token);
  if (entry.tokenSha256 && /^[0-9a-fA-F]{64}$/.test(entry.tokenSha256)) return Buffer.from(entry.tokenSha256, 'hex');
  return null;
}

/** A token accepted whatever the policy says, as its digest and the words an error names it by. */
export interface OutsideToken {
  label: string;
  digest: Buffer;
}

/**
 * The entries of `config` (admin.tokens, identity.agents) whose token, clear or as its sha256, is
 * one accepted outside the policy (EGRESSGATE_ADMIN_TOKEN, the generated one): those authenticate
 * first, so such an entry's scope, name and `sources` never apply. One issue per entry, at its
 * `token` / `tokenSha256`, as load-config's rule for two entries with one token.
 */
export function repeatsOutsideToken(config: Readonly<Config>, outside: readonly OutsideToken[]): ConfigIssue[] {
  if (outside.length === 0) return [];
  const issues: ConfigIssue[] = [];
  const check = (list: ReadonlyArray<{ token?: string; tokenSha256?: string }>, path: string): void => {
    list.forEach((entry, i) => {
      const digest = digestOf(entry);
      const same = digest === null ? undefined : outside.find((o) => o.digest.equals(digest));
      if (same === undefined) return;
      issues.push({
        path: `${path}[${i}].${entry.token ? 'token' : 'tokenSha256'}`,
        message: `the same token as ${same.label}: a token names one principal, and requests with it are ${same.label}'s (admin; this entry's scope never applies); give each entry its own token`,
      });
    });
  };
  check(config.admin.tokens, 'admin.tokens');
  check(config.identity.agents, 'identity.agents');
  return issues;
}

export class TokenAuth {
  private readonly fixed: TokenEntry[] = [];
  private live: { version: number; entries: TokenEntry[] } | null = null;
  private readonly failures: LRUCache<string, SourceFailures>;
  private readonly delayOpts: FailureDelayOptions;
  private readonly forgetAfterMs: number;
  private readonly now: () => number;
  readonly stats: AuthFailureStats = { failuresTotal: 0, lockedOutTotal: 0, lockoutsTotal: 0 };

  constructor(private readonly opts: TokenAuthOptions) {
    for (const t of opts.tokens ?? []) {
      const digest = digestOf(t);
      if (digest) this.fixed.push({ digest, principal: { name: t.name, scope: t.scope, origin: 'extra' } });
    }
    if (opts.envToken) {
      this.fixed.push({ digest: tokenDigest(opts.envToken), principal: { name: 'env', scope: 'admin', origin: 'env' } });
    }
    if (opts.generatedToken) {
      this.fixed.push({ digest: tokenDigest(opts.generatedToken), principal: { name: 'generated', scope: 'admin', origin: 'generated' } });
    }
    this.delayOpts = opts.failureDelay ?? {};
    this.forgetAfterMs = this.delayOpts.forgetAfterMs ?? 15 * 60_000;
    this.now = opts.now ?? Date.now;
    // Bounded: past 10,000 sources the least recently failing is forgotten.
    this.failures = new LRUCache({ max: 10_000, ttl: this.forgetAfterMs });
  }

  /**
   * Why `config` would leave the API without an admin: it names no admin-scope token and none is
   * accepted whatever the policy says (EGRESSGATE_ADMIN_TOKEN, a generated one). Null when an admin
   * remains. The admin API refuses such a PUT or rollback: after it, every write would get 401 or
   * 403 until a restart.
   */
  lockoutOf(config: Readonly<Config>): ConfigIssue | null {
    if (this.fixed.some((e) => e.principal.scope === 'admin')) return null;
    if (config.admin.tokens.some((t) => t.scope === 'admin')) return null;
    return {
      path: 'admin.tokens',
      message: 'no admin-scope token would remain and none is set outside the policy (EGRESSGATE_ADMIN_TOKEN): every later write would be refused; keep one',
    };
  }

  /** Entries of `config` that repeat a token accepted outside the policy (repeatsOutsideToken). */
  repeatsOf(config: Readonly<Config>): ConfigIssue[] {
    const outside = this.fixed.map((e) => ({
      digest: e.digest,
      label: e.principal.origin === 'env' ? 'EGRESSGATE_ADMIN_TOKEN' : e.principal.origin === 'generated' ? 'the admin token generated at start' : `the built-in token "${e.principal.name}"`,
    }));
    return repeatsOutsideToken(config, outside);
  }

  /** How many tokens are accepted right now (0 means nobody can use the API). */
  get tokenCount(): number {
    return this.entries().length;
  }

  /** The principal of an `Authorization` header value, or null. */
  authenticate(header: string | undefined): Principal | null {
    const m = header ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header) : null;
    if (!m?.[1]) return null;
    const digest = tokenDigest(m[1]);
    let found: Principal | null = null;
    // Compare against every entry, no early exit: timing says nothing about which one matched.
    for (const e of this.entries()) {
      if (timingSafeEqual(e.digest, digest) && !found) found = e.principal;
    }
    return found;
  }

  /**
   * A check that `header` still names a principal with `need`, for an answer that outlives its
   * request (the alert stream): a PUT or reload may revoke the token or narrow its scope meanwhile.
   * It authenticates again only when the token set has changed (a new policy version), so a call
   * between changes is one comparison.
   */
  watch(header: string | undefined, need: RequiredScope): () => boolean {
    let version = this.opts.credentials?.().version;
    let isAllowed = true;
    return () => {
      const now = this.opts.credentials?.().version;
      if (now !== version) {
        version = now;
        const principal = this.authenticate(header);
        isAllowed = principal !== null && scopeAllows(principal.scope, need);
      }
      return isAllowed;
    };
  }

  /**
   * Seconds `ip` stays locked out (answered 429 before any token is looked at), or 0. Checked
   * before `authenticate`, so a locked-out source gets no token compared at all.
   */
  lockedOutFor(ip: string): number {
    const f = this.failures.get(ip);
    if (f === undefined || f.lockedUntil === 0) return 0;
    const left = f.lockedUntil - this.now();
    if (left <= 0) {
      f.lockedUntil = 0;
      return 0;
    }
    this.stats.lockedOutTotal++;
    return Math.ceil(left / 1000);
  }

  /**
   * Count a failed attempt from `ip`; returns how long to hold the 401. `presented`: a token was
   * sent (and matched nothing); only those count toward the lockout, a missing one guesses nothing.
   */
  recordFailure(ip: string, presented = true): number {
    const at = this.now();
    const f = this.failures.get(ip) ?? { count: 0, windowStart: at, windowFailures: 0, lockedUntil: 0 };
    f.count++;
    this.stats.failuresTotal++;
    let ttl = this.forgetAfterMs;
    const limits = presented ? this.opts.lockout?.() : undefined;
    if (limits && limits.maxFailuresPerMinute > 0) {
      if (at - f.windowStart >= LOCKOUT_WINDOW_MS) {
        f.windowStart = at;
        f.windowFailures = 0;
      }
      f.windowFailures++;
      if (f.windowFailures >= limits.maxFailuresPerMinute) {
        // The limit-th bad token is still answered 401; from the next request on, 429 unchecked.
        f.lockedUntil = at + limits.lockoutMs;
        f.windowStart = f.lockedUntil;
        f.windowFailures = 0;
        this.stats.lockoutsTotal++;
        ttl = Math.max(ttl, limits.lockoutMs);
      }
    }
    this.failures.set(ip, f, { ttl });
    return failureDelayMs(f.count, this.delayOpts);
  }

  /** A good token resets the address's count. */
  recordSuccess(ip: string): void {
    this.failures.delete(ip);
  }

  private entries(): TokenEntry[] {
    const creds = this.opts.credentials?.();
    if (!creds) return this.fixed;
    if (this.live?.version !== creds.version) {
      const entries = [...this.fixed];
      for (const t of creds.adminTokens) {
        const digest = digestOf(t);
        if (digest) entries.push({ digest, principal: { name: t.name, scope: t.scope, origin: 'config' } });
      }
      for (const a of creds.agents) {
        const digest = digestOf(a);
        if (digest) entries.push({ digest, principal: { name: a.name, scope: 'agent', origin: 'agent' } });
      }
      this.live = { version: creds.version, entries };
    }
    return this.live.entries;
  }
}
