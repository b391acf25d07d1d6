/**
 * Username/password checks for Proxy-Authorization Basic (HTTP) and RFC 1929 (SOCKS5).
 *
 * Built once per policy snapshot. Plain passwords are kept only as their sha256 so every comparison
 * is a `timingSafeEqual` over two 32-byte digests, whatever the lengths of the strings. scrypt hashes
 * are checked on the libuv pool; the answer (a promise, so concurrent logins with the same
 * credentials share one scrypt run) is cached in an LRU keyed by sha256(user, password) with a
 * short TTL. At most half the libuv pool runs scrypt at once (work-limiter.ts), so DNS keeps its
 * threads during a login burst. The cache lives in the per-snapshot object: a reload that changes
 * a password forgets every cached answer at once.
 *
 * Every check costs the same whether the user exists or not, so timing tells no user names apart.
 * With no scrypt user configured, every check is one sha256 compare (unknown users against a random
 * digest). With at least one, every uncached check runs one scrypt derivation: a scrypt user's own,
 * and for an unknown user or a plain-password user a decoy with the same parameters (the plain user's
 * digest is compared after it). The other way round — unknown users paying only a sha256 — would
 * have left scrypt users telling themselves apart from unknown names.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { UserConfig } from '../../policy/config.ts';
import { DEFAULT_SCRYPT_PARAMS, type ParsedPasswordHash, parsePasswordHash, verifyParsedHash } from './password-hash.ts';
import { scryptLimiter } from './work-limiter.ts';

type StoredSecret = { readonly kind: 'plain'; readonly digest: Buffer } | { readonly kind: 'scrypt'; readonly parsed: ParsedPasswordHash };

export interface CredentialStats {
  /** scrypt derivations actually run (cache misses on scrypt users, and decoys). */
  scryptRuns: number;
  cacheHits: number;
  /** Checks refused unchecked because the scrypt queue was full (answered as a failed login, not cached). */
  scryptShed: number;
}

export interface CredentialCheckerOptions {
  /** Cached answers live this long (ms). */
  cacheTtlMs?: number;
  cacheMax?: number;
}

function sha256(...parts: string[]): Buffer {
  const h = createHash('sha256');
  // A NUL between parts keeps ("ab","c") and ("a","bc") apart; NUL cannot occur in a Basic user name.
  for (const p of parts) h.update(p).update('\0');
  return h.digest();
}

/** Verifies user/password pairs against `identity.users` of one snapshot. */
export class CredentialChecker {
  private readonly users = new Map<string, StoredSecret>();
  private readonly cache: LRUCache<string, Promise<boolean>>;
  /** Decoy used for unknown users, so "no such user" costs what "wrong password" costs. */
  private readonly decoy: StoredSecret;
  /** The scrypt work every uncached check pays when any scrypt user exists, else null (all plain). */
  private readonly scryptDecoy: ParsedPasswordHash | null;

  constructor(
    users: readonly UserConfig[],
    private readonly stats: CredentialStats,
    opts: CredentialCheckerOptions = {},
  ) {
    let anyScrypt: ParsedPasswordHash | null = null;
    for (const u of users) {
      if (this.users.has(u.name)) continue; // first definition wins, as in rolesFor's user map
      if (u.passwordHash !== undefined) {
        const parsed = parsePasswordHash(u.passwordHash);
        // An invalid hash (load-config rejects it) leaves the user unable to log in, never open.
        if ('error' in parsed) continue;
        this.users.set(u.name, { kind: 'scrypt', parsed });
        anyScrypt ??= parsed;
      } else if (u.password !== undefined) {
        this.users.set(u.name, { kind: 'plain', digest: sha256(u.password) });
      }
    }
    this.scryptDecoy =
      anyScrypt === null ? null : { ...DEFAULT_SCRYPT_PARAMS, ...pickParams(anyScrypt), salt: randomBytes(16), hash: randomBytes(anyScrypt.hash.length) };
    this.decoy = this.scryptDecoy === null ? { kind: 'plain', digest: randomBytes(32) } : { kind: 'scrypt', parsed: this.scryptDecoy };
    this.cache = new LRUCache({ max: opts.cacheMax ?? 4096, ttl: opts.cacheTtlMs ?? 60_000 });
  }

  /** True when a user of this name is configured with a password or hash. */
  hasUser(name: string): boolean {
    return this.users.has(name);
  }

  /**
   * True when checking this pair now would start a scrypt derivation (no cached or in-flight
   * answer): the throttle counts such checks against their source before they run.
   */
  isCostly(username: string, password: string): boolean {
    if (this.scryptDecoy === null) return false;
    return !this.cache.has(sha256(username, password).toString('base64'));
  }

  /**
   * Checks one pair; resolves false for unknown users and wrong passwords alike, and 'shed' when
   * the scrypt queue is full (nothing was checked; nothing is cached).
   */
  verify(username: string, password: string): Promise<boolean | 'shed'> {
    const stored = this.users.get(username);
    const isKnown = stored !== undefined;
    const target = stored ?? this.decoy;
    if (this.scryptDecoy === null && target.kind === 'plain') {
      // Only plain users: one sha256 compare for everyone; no cache needed.
      return Promise.resolve(timingSafeEqual(sha256(password), target.digest) && isKnown);
    }
    const key = sha256(username, password).toString('base64');
    const hit = this.cache.get(key);
    if (hit !== undefined) {
      this.stats.cacheHits++;
      return hit;
    }
    if (!scryptLimiter.hasRoom()) {
      this.stats.scryptShed++;
      return Promise.resolve('shed');
    }
    this.stats.scryptRuns++;
    const work = target.kind === 'scrypt' ? target.parsed : (this.scryptDecoy as ParsedPasswordHash);
    const answer = scryptLimiter
      .run(() => verifyParsedHash(password, work))
      // A plain user's decoy derivation says nothing; their digest does.
      .then((ok) => (target.kind === 'scrypt' ? ok : timingSafeEqual(sha256(password), target.digest)) && isKnown);
    this.cache.set(key, answer);
    // A failed derivation (never expected for parsed params) must not stay cached as a rejection.
    answer.catch(() => this.cache.delete(key));
    return answer;
  }
}

function pickParams(p: ParsedPasswordHash): { N: number; r: number; p: number } {
  return { N: p.N, r: p.r, p: p.p };
}
