/**
 * Who the client is: users, hosts, trusted and signed headers, client certificates.
 *
 * Steps of `resolve` (order matters; the first source to name a user or host wins):
 * 1. Normalise the client address (zone dropped, `::ffff:a.b.c.d` unwrapped).
 * 2. Credential checks — Basic / RFC 1929 password and the signed token header — pass the per-source
 *    throttle first (a check that starts a scrypt derivation is counted against its source before it
 *    runs), then a password check the per-user one; a wrong password or a bad/expired token is
 *    `bad-credentials`, never ignored. A check refused by either throttle or by the full scrypt
 *    queue (shed) is `bad-credentials` too, unchecked and not counted as a failure. An empty user
 *    name (what a malformed Basic value yields) fails at once, counted against its source only: it
 *    names no user whose budget it could spend.
 * 3. Proxy credentials name the user (the most specific, per-request proof).
 * 4. A valid signed token names the user and/or host (accepted from any source: the MAC is the proof).
 * 5. Plain identity headers name the user/host only from `headers.trustedSources`; from anyone else
 *    they are ignored and returned as `spoofAttempt`.
 * 6. A verified client certificate's subject names a configured user of that name, else a
 *    configured host of that name, else it is taken as the user name (the CA vouched for it).
 * 7. The host inventory names the host from the client address (most specific CIDR) if nothing did.
 * 8. `requireAuth`: some source of steps 3–6 must have succeeded, else `auth-required`.
 * 9. Roles = snapshot.rolesFor(user, host): user roles ∪ host roles, else defaultRoles.
 *
 * Everything parsed from the config (CIDRs, digests, hashes, header names) is compiled once per
 * snapshot and kept in a WeakMap, so a reload swaps it and a resolve does no parsing.
 */
import type { Identity, PolicySnapshot } from '../../policy/types.ts';
import type { IdentityClaims, IdentityResolver, IdentityResult } from '../context.ts';
import { AuthThrottle, type AuthThrottleOptions, type AuthThrottleStats, type Sleep } from './auth-throttle.ts';
import { clientAddress } from './client-address.ts';
import { CredentialChecker, type CredentialStats } from './credentials.ts';
import { describeSpoof, HeaderTrust, headerValue } from './header-trust.ts';
import { HostInventory } from './host-inventory.ts';
import { MAX_TOKEN_CHARS, verifyIdentityToken } from './signed-header.ts';
import { scryptLimiter } from './work-limiter.ts';

/**
 * The per-user failure budget: more failures are free than per source (a user mistyping on several
 * devices, a shared NAT), and while a name is over it at most 8 of its checks wait at once, so
 * guessing it from many addresses gets at most 8 guesses per delay (≤ 5 s) through.
 */
export const DEFAULT_USER_THROTTLE: Partial<AuthThrottleOptions> = Object.freeze({ freeFailures: 10, maxPendingPerSource: 8 });

interface CompiledIdentity {
  readonly requireAuth: boolean;
  readonly credentials: CredentialChecker;
  readonly userNames: ReadonlySet<string>;
  readonly inventory: HostInventory;
  readonly trust: HeaderTrust;
  readonly userHeader: string;
  readonly hostHeader: string;
  readonly signed: { readonly header: string; readonly secret: Buffer; readonly maxAgeSec: number } | null;
  readonly stripped: readonly string[];
}

/** Counters for /metrics; every field is monotonic except `throttle.sourcesTracked`. */
export interface IdentityStats {
  readonly resolvedTotal: number;
  readonly badCredentialsTotal: number;
  readonly authRequiredTotal: number;
  readonly spoofAttemptsTotal: number;
  readonly signedTokensAcceptedTotal: number;
  readonly credentials: Readonly<CredentialStats>;
  readonly throttle: Readonly<AuthThrottleStats>;
  /** The per-user failure budget (`sourcesTracked` = user names tracked). */
  readonly userThrottle: Readonly<AuthThrottleStats>;
  /** scrypt derivations waiting for a slot now (bounded by MAX_SCRYPT_QUEUED). */
  readonly scryptWaiting: number;
}

export interface IdentityResolverOptions {
  /** Clock (ms since epoch) for token expiry and the throttle window. */
  now?: () => number;
  throttle?: Partial<AuthThrottleOptions>;
  /** The per-user failure budget (keys are user names, known or not). */
  userThrottle?: Partial<AuthThrottleOptions>;
  /** How throttled checks wait; tests inject one that records instead of sleeping. */
  sleep?: Sleep;
  credentialCacheTtlMs?: number;
}

/** An IdentityResolver that also exposes its counters. */
export interface GatewayIdentityResolver extends IdentityResolver {
  stats(): IdentityStats;
  /**
   * Credential checks under way: a request or SOCKS5 login whose flow is not open yet (it opens, or
   * its refused login is recorded, once the check is answered). A drain waits for them as for flows.
   */
  checksUnderWay(): number;
}

function compile(snapshot: PolicySnapshot, credStats: CredentialStats, cacheTtlMs: number | undefined): CompiledIdentity {
  const id = snapshot.config.identity;
  const userHeader = id.headers.user.toLowerCase();
  const hostHeader = id.headers.host.toLowerCase();
  const s = id.headers.signed ?? null;
  const signed = s ? { header: s.header.toLowerCase(), secret: Buffer.from(s.secret, 'utf8'), maxAgeSec: s.maxAgeSec } : null;
  const stripped = [...new Set([userHeader, hostHeader, ...(signed ? [signed.header] : []), 'proxy-authorization'])];
  return {
    requireAuth: id.requireAuth,
    credentials: new CredentialChecker(id.users, credStats, cacheTtlMs === undefined ? {} : { cacheTtlMs }),
    userNames: new Set(id.users.map((u) => u.name)),
    inventory: new HostInventory(id.hosts),
    trust: new HeaderTrust(id.headers.trustedSources),
    userHeader,
    hostHeader,
    signed,
    stripped: Object.freeze(stripped),
  };
}

/** Builds the gateway's identity resolver (one per process; it keeps per-snapshot compiled state). */
export function createIdentityResolver(opts: IdentityResolverOptions = {}): GatewayIdentityResolver {
  const now = opts.now ?? Date.now;
  const throttle = new AuthThrottle(opts.throttle, now, opts.sleep);
  const userThrottle = new AuthThrottle({ ...DEFAULT_USER_THROTTLE, ...opts.userThrottle }, now, opts.sleep);
  const credStats: CredentialStats = { scryptRuns: 0, cacheHits: 0, scryptShed: 0 };
  const counters = { resolvedTotal: 0, badCredentialsTotal: 0, authRequiredTotal: 0, spoofAttemptsTotal: 0, signedTokensAcceptedTotal: 0 };
  const compiled = new WeakMap<PolicySnapshot, CompiledIdentity>();
  /** Credential checks begun and not yet answered (a throttle's wait, a scrypt derivation). */
  let checksUnderWay = 0;

  function compiledFor(snapshot: PolicySnapshot): CompiledIdentity {
    let c = compiled.get(snapshot);
    if (c === undefined) {
      c = compile(snapshot, credStats, opts.credentialCacheTtlMs);
      compiled.set(snapshot, c);
    }
    return c;
  }

  function fail(source: string, reason: 'bad-credentials' | 'auth-required', username: string | null = null): IdentityResult {
    if (reason === 'bad-credentials') {
      counters.badCredentialsTotal++;
      throttle.recordFailure(source);
      if (username !== null) userThrottle.recordFailure(username);
    } else {
      counters.authRequiredTotal++;
    }
    return { ok: false, reason };
  }

  async function resolve(claims: IdentityClaims, snapshot: PolicySnapshot): Promise<IdentityResult> {
    const c = compiledFor(snapshot);
    const addr = clientAddress(claims.clientIp);
    const hasPassword = claims.username !== undefined && claims.username !== null;
    const token = c.signed ? headerValue(claims.headers, c.signed.header, MAX_TOKEN_CHARS) : undefined;

    let user: string | null = null;
    let host: string | null = null;
    let isAuthenticated = false;

    // Steps 2–4: checks a guesser could learn from go through the throttle.
    if (hasPassword || token !== undefined) {
      // Counted while it may wait (the throttles, a derivation): the drain waits for it (checksUnderWay).
      checksUnderWay++;
      try {
        // An empty name (a malformed Basic value, Basic `:pw`, RFC 1929 ULEN 0) names no account unless
        // one is configured so: it fails at once, counted against its source only. Under the per-user
        // budget all such checks, from everyone, shared the one name '' and slowed each other.
        const namesNoUser = hasPassword && claims.username === '' && !c.credentials.hasUser('');
        const username = hasPassword && !namesNoUser ? claims.username! : null;
        const password = claims.password ?? '';
        const release = await throttle.acquire(addr.text, username !== null && c.credentials.isCostly(username, password));
        if (release === null) {
          counters.badCredentialsTotal++;
          return { ok: false, reason: 'bad-credentials' };
        }
        if (namesNoUser) {
          release();
          return fail(addr.text, 'bad-credentials');
        }
        // Only a user over its failure budget waits here (and is shed past its pending share).
        const releaseUser = username === null ? null : await userThrottle.acquire(username);
        try {
          if (username !== null && releaseUser === null) {
            counters.badCredentialsTotal++;
            return { ok: false, reason: 'bad-credentials' };
          }
          if (username !== null) {
            const ok = await c.credentials.verify(username, password);
            if (ok === 'shed') {
              counters.badCredentialsTotal++;
              return { ok: false, reason: 'bad-credentials' };
            }
            if (!ok) return fail(addr.text, 'bad-credentials', username);
            user = username;
            isAuthenticated = true;
          }
          if (token !== undefined && c.signed) {
            const v = token === null ? null : verifyIdentityToken(token, c.signed.secret, now(), c.signed.maxAgeSec);
            if (v === null || !v.ok) return fail(addr.text, 'bad-credentials');
            counters.signedTokensAcceptedTotal++;
            user ??= v.user;
            host ??= v.host;
            isAuthenticated = true;
          }
        } finally {
          releaseUser?.();
          release();
        }
      } finally {
        checksUnderWay--;
      }
    }

    // Step 5: plain identity headers.
    let spoofAttempt: string | null = null;
    const hu = headerValue(claims.headers, c.userHeader);
    const hh = headerValue(claims.headers, c.hostHeader);
    if (hu !== undefined || hh !== undefined) {
      if (c.trust.isTrusted(addr.parsed)) {
        if (hu) user ??= hu;
        if (hh) host ??= hh;
        if (hu || hh) isAuthenticated = true;
      } else {
        counters.spoofAttemptsTotal++;
        const found: Array<[string, string | null]> = [];
        if (hu !== undefined) found.push([c.userHeader, hu]);
        if (hh !== undefined) found.push([c.hostHeader, hh]);
        spoofAttempt = describeSpoof(addr.text, found);
      }
    }

    // Step 6: a verified client certificate (the listener only passes verified subjects).
    const subject = claims.certSubject ?? null;
    if (subject !== null && subject.length > 0) {
      if (c.userNames.has(subject)) user ??= subject;
      else if (c.inventory.names.has(subject)) host ??= subject;
      else user ??= subject;
      isAuthenticated = true;
    }

    // Step 7: host inventory. A host no claim named is its answer (null too): a reload re-derives it.
    const hostFromInventory = host === null;
    if (hostFromInventory && addr.parsed !== null) host = c.inventory.lookup(addr.parsed)?.name ?? null;

    if (c.requireAuth && !isAuthenticated) {
      // The spoof attempt goes with the refusal too (logged by admission, as for an admitted request).
      const refused = fail(addr.text, 'auth-required');
      return spoofAttempt === null ? refused : { ...refused, spoofAttempt };
    }

    counters.resolvedTotal++;
    const identity: Identity = { user, host, roles: snapshot.rolesFor(user, host), process: null };
    return spoofAttempt === null ? { ok: true, identity, hostFromInventory } : { ok: true, identity, spoofAttempt, hostFromInventory };
  }

  /**
   * A keep-alive connection reuses the identity resolved for its first request while the
   * credentials stay the same; a signed token bounds that: never past its `exp`, nor past
   * `maxAgeSec` from now (the verifier already holds exp to that). Re-verified here, so an expired,
   * forged or malformed token gives 0 (resolve again, and fail).
   */
  function reusableUntilMs(claims: IdentityClaims, snapshot: PolicySnapshot): number {
    const c = compiledFor(snapshot);
    if (!c.signed) return Number.POSITIVE_INFINITY;
    const token = headerValue(claims.headers, c.signed.header, MAX_TOKEN_CHARS);
    if (token === undefined) return Number.POSITIVE_INFINITY;
    if (token === null) return 0;
    const t = now();
    const v = verifyIdentityToken(token, c.signed.secret, t, c.signed.maxAgeSec);
    return v.ok ? Math.min(v.exp * 1000, t + c.signed.maxAgeSec * 1000) : 0;
  }

  return {
    resolve,
    strippedHeaders: (snapshot) => compiledFor(snapshot).stripped,
    reusableUntilMs,
    now,
    trustsHeadersFrom: (clientIp, snapshot) => compiledFor(snapshot).trust.isTrusted(clientAddress(clientIp).parsed),
    hostOf: (clientIp, snapshot) => {
      const parsed = clientAddress(clientIp).parsed;
      return parsed === null ? null : (compiledFor(snapshot).inventory.lookup(parsed)?.name ?? null);
    },
    checksUnderWay: () => checksUnderWay,
    stats: () => ({ ...counters, credentials: { ...credStats }, throttle: { ...throttle.stats }, userThrottle: { ...userThrottle.stats }, scryptWaiting: scryptLimiter.waiting }),
  };
}
