import { beforeAll, describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../policy/compile.ts';
import { type Config, defaultConfig } from '../../../policy/config.ts';
import type { PolicySnapshot } from '../../../policy/types.ts';
import type { IdentityClaims, IdentityResult } from '../../../gateway/context.ts';
import { createIdentityResolver } from '../../../gateway/identity/identity-resolver.ts';
import { hashPassword } from '../../../gateway/identity/password-hash.ts';
import { signIdentityToken } from '../../../gateway/identity/signed-header.ts';
import { MAX_SCRYPT_QUEUED, scryptLimiter } from '../../../gateway/identity/work-limiter.ts';

const NOW = Date.UTC(2026, 10, 25, 12, 0, 0);
const NOW_SEC = NOW / 1000;
const SECRET = 'sidecar-secret';
// Small scrypt cost keeps the suite fast; the format and code path are the production ones.
const FAST = { N: 1024, r: 8, p: 1 };

function config(hash: string, patch: (c: Config) => void = () => {}): Config {
  const c = defaultConfig();
  c.identity.users = [
    { name: 'alice', password: 'alice-pw', roles: ['developer'] },
    { name: 'bob', passwordHash: hash, roles: ['ops'] },
    { name: 'svc-cert', password: 'unused', roles: ['svc'] },
  ];
  c.identity.hosts = [
    { cidr: '10.0.0.0/8', name: 'corp', roles: ['corp'] },
    { cidr: '10.1.0.0/16', name: 'build-farm', roles: ['ci'] },
    { cidr: '10.1.2.3/32', name: 'build-17', roles: ['ci', 'special'] },
    { cidr: '2001:db8:1::/48', name: 'v6-lab', roles: ['lab'] },
    { cidr: '2001:db8:1:2::/64', name: 'v6-rack', roles: ['rack'] },
    { cidr: '192.0.2.0/24', name: 'cert-host', roles: ['edge'] },
  ];
  c.identity.headers = {
    trustedSources: ['127.0.0.1/32', 'fd00::/8'],
    user: 'X-Egress-User',
    host: 'x-egress-host',
    signed: { header: 'X-Egress-Token', secret: SECRET, maxAgeSec: 300 },
  };
  c.defaultRoles = ['default'];
  c.roles = { developer: { allow: [] }, ops: { allow: [] }, ci: { allow: [] }, corp: { allow: [] }, default: { allow: [] } };
  patch(c);
  return c;
}

let bobHash = '';
let snap: PolicySnapshot;
beforeAll(async () => {
  bobHash = await hashPassword('bob-pw', FAST);
  snap = compilePolicy(config(bobHash));
});

function token(claims: { user?: string; host?: string; exp?: number }, secret = SECRET): string {
  return signIdentityToken({ exp: NOW_SEC + 60, ...claims }, secret);
}

function resolver() {
  const waits: number[] = [];
  const r = createIdentityResolver({
    now: () => NOW,
    sleep: async (ms) => {
      waits.push(ms);
    },
  });
  return { r, waits };
}

interface Row {
  name: string;
  claims: Omit<IdentityClaims, 'clientPort'>;
  want: { user: string | null; host: string | null; roles?: string[]; spoof?: boolean } | { fail: 'bad-credentials' | 'auth-required'; spoof?: boolean };
  requireAuth?: boolean;
}

const rows = (): Row[] => [
  // (f) host inventory: most specific CIDR, IPv4 and IPv6, mapped addresses unwrapped
  { name: 'no claims, unknown address → default roles', claims: { clientIp: '198.51.100.7' }, want: { user: null, host: null, roles: ['default'] } },
  { name: 'inventory /8', claims: { clientIp: '10.9.9.9' }, want: { user: null, host: 'corp', roles: ['corp'] } },
  { name: 'inventory /16 beats /8', claims: { clientIp: '10.1.200.1' }, want: { user: null, host: 'build-farm', roles: ['ci'] } },
  { name: 'inventory /32 beats /16', claims: { clientIp: '10.1.2.3' }, want: { user: null, host: 'build-17', roles: ['ci', 'special'] } },
  { name: 'IPv4-mapped IPv6 unwrapped', claims: { clientIp: '::ffff:10.1.2.3' }, want: { user: null, host: 'build-17' } },
  { name: 'IPv6 /48', claims: { clientIp: '2001:db8:1:9::1' }, want: { user: null, host: 'v6-lab', roles: ['lab'] } },
  { name: 'IPv6 /64 beats /48', claims: { clientIp: '2001:DB8:1:2::5' }, want: { user: null, host: 'v6-rack' } },
  { name: 'IPv6 with zone id', claims: { clientIp: '2001:db8:1:2::5%eth0' }, want: { user: null, host: 'v6-rack' } },
  // (a) users: plain and scrypt, wrong password, unknown user
  { name: 'plain password', claims: { clientIp: '10.9.9.9', username: 'alice', password: 'alice-pw' }, want: { user: 'alice', host: 'corp', roles: ['developer', 'corp'] } },
  { name: 'scrypt password', claims: { clientIp: '198.51.100.7', username: 'bob', password: 'bob-pw' }, want: { user: 'bob', host: null, roles: ['ops'] } },
  { name: 'wrong plain password', claims: { clientIp: '198.51.100.7', username: 'alice', password: 'alice-pw ' }, want: { fail: 'bad-credentials' } },
  { name: 'wrong scrypt password', claims: { clientIp: '198.51.100.7', username: 'bob', password: 'alice-pw' }, want: { fail: 'bad-credentials' } },
  { name: 'unknown user', claims: { clientIp: '198.51.100.7', username: 'mallory', password: 'x' }, want: { fail: 'bad-credentials' } },
  { name: 'user name is case-sensitive', claims: { clientIp: '198.51.100.7', username: 'Alice', password: 'alice-pw' }, want: { fail: 'bad-credentials' } },
  { name: 'missing password', claims: { clientIp: '198.51.100.7', username: 'alice', password: null }, want: { fail: 'bad-credentials' } },
  // (b) requireAuth
  { name: 'requireAuth, nothing given', requireAuth: true, claims: { clientIp: '10.9.9.9' }, want: { fail: 'auth-required' } },
  { name: 'requireAuth, password ok', requireAuth: true, claims: { clientIp: '10.9.9.9', username: 'alice', password: 'alice-pw' }, want: { user: 'alice', host: 'corp' } },
  { name: 'requireAuth, spoofed header is not auth', requireAuth: true, claims: { clientIp: '10.9.9.9', headers: { 'x-egress-user': 'alice' } }, want: { fail: 'auth-required', spoof: true } },
  { name: 'requireAuth, cert is auth', requireAuth: true, claims: { clientIp: '10.9.9.9', certSubject: 'alice' }, want: { user: 'alice', host: 'corp' } },
  { name: 'requireAuth, trusted header is auth', requireAuth: true, claims: { clientIp: '127.0.0.1', headers: { 'x-egress-user': 'carol' } }, want: { user: 'carol', host: null } },
  // (c) trusted identity headers
  { name: 'trusted header user+host', claims: { clientIp: '127.0.0.1', headers: { 'x-egress-user': 'alice', 'x-egress-host': 'ws-17' } }, want: { user: 'alice', host: 'ws-17', roles: ['developer'] } },
  { name: 'trusted header host names a known host', claims: { clientIp: '127.0.0.1', headers: { 'x-egress-host': 'build-farm' } }, want: { user: null, host: 'build-farm', roles: ['ci'] } },
  { name: 'trusted over IPv6 source', claims: { clientIp: 'fd00::5', headers: { 'x-egress-user': 'alice' } }, want: { user: 'alice', host: null } },
  { name: 'trusted via mapped source', claims: { clientIp: '::ffff:127.0.0.1', headers: { 'x-egress-user': 'alice' } }, want: { user: 'alice', host: null } },
  { name: 'untrusted header ignored + spoof', claims: { clientIp: '10.1.2.3', headers: { 'x-egress-user': 'alice', 'x-egress-host': 'x' } }, want: { user: null, host: 'build-17', spoof: true } },
  { name: 'untrusted header with valid password: password wins, spoof noted', claims: { clientIp: '10.9.9.9', username: 'alice', password: 'alice-pw', headers: { 'x-egress-user': 'bob' } }, want: { user: 'alice', host: 'corp', spoof: true } },
  { name: 'trusted header with repeated different values ignored', claims: { clientIp: '127.0.0.1', headers: { 'x-egress-user': ['alice', 'bob'] } }, want: { user: null, host: null } },
  { name: 'trusted header with control chars ignored', claims: { clientIp: '127.0.0.1', headers: { 'x-egress-user': 'al\u0001ice' } }, want: { user: null, host: null } },
  // (d) signed header, any source
  { name: 'signed token from untrusted source', claims: { clientIp: '203.0.113.9', headers: { 'x-egress-token': token({ user: 'alice', host: 'pod-1' }) } }, want: { user: 'alice', host: 'pod-1' } },
  { name: 'signed token longer than a plain header value (long names)', claims: { clientIp: '203.0.113.9', headers: { 'x-egress-token': token({ user: 'u'.repeat(200), host: 'h'.repeat(200) }) } }, want: { user: 'u'.repeat(200), host: 'h'.repeat(200) } },
  { name: 'signed token host only', claims: { clientIp: '10.9.9.9', headers: { 'x-egress-token': token({ host: 'build-farm' }) } }, want: { user: null, host: 'build-farm', roles: ['ci'] } },
  { name: 'signed token satisfies requireAuth', requireAuth: true, claims: { clientIp: '203.0.113.9', headers: { 'x-egress-token': token({ host: 'pod-1' }) } }, want: { user: null, host: 'pod-1' } },
  { name: 'signed token expired', claims: { clientIp: '203.0.113.9', headers: { 'x-egress-token': token({ user: 'alice', exp: NOW_SEC - 1 }) } }, want: { fail: 'bad-credentials' } },
  { name: 'signed token too long-lived', claims: { clientIp: '203.0.113.9', headers: { 'x-egress-token': token({ user: 'alice', exp: NOW_SEC + 301 }) } }, want: { fail: 'bad-credentials' } },
  { name: 'signed token wrong secret', claims: { clientIp: '203.0.113.9', headers: { 'x-egress-token': token({ user: 'alice' }, 'other') } }, want: { fail: 'bad-credentials' } },
  { name: 'password beats signed token user', claims: { clientIp: '10.9.9.9', username: 'bob', password: 'bob-pw', headers: { 'x-egress-token': token({ user: 'alice', host: 'pod-1' }) } }, want: { user: 'bob', host: 'pod-1' } },
  { name: 'signed token beats trusted header', claims: { clientIp: '127.0.0.1', headers: { 'x-egress-token': token({ user: 'alice' }), 'x-egress-user': 'bob', 'x-egress-host': 'hh' } }, want: { user: 'alice', host: 'hh' } },
  // (e) client certificate subject
  { name: 'cert subject names a user', claims: { clientIp: '203.0.113.9', certSubject: 'svc-cert' }, want: { user: 'svc-cert', host: null, roles: ['svc'] } },
  { name: 'cert subject names a host', claims: { clientIp: '203.0.113.9', certSubject: 'build-farm' }, want: { user: null, host: 'build-farm', roles: ['ci'] } },
  { name: 'cert subject unknown → user, default roles', claims: { clientIp: '203.0.113.9', certSubject: 'new-svc' }, want: { user: 'new-svc', host: null, roles: ['default'] } },
  { name: 'cert user + inventory host', claims: { clientIp: '10.1.2.3', certSubject: 'alice' }, want: { user: 'alice', host: 'build-17', roles: ['developer', 'ci', 'special'] } },
  { name: 'trusted header beats cert', claims: { clientIp: '127.0.0.1', certSubject: 'alice', headers: { 'x-egress-user': 'bob' } }, want: { user: 'bob', host: null } },
  { name: 'cert host beats inventory', claims: { clientIp: '10.9.9.9', certSubject: 'cert-host' }, want: { user: null, host: 'cert-host', roles: ['edge'] } },
];

describe('createIdentityResolver: every identity source and precedence', () => {
  for (const row of rows()) {
    it(row.name, async () => {
      const s = row.requireAuth ? compilePolicy(config(bobHash, (c) => (c.identity.requireAuth = true))) : snap;
      const { r } = resolver();
      const res: IdentityResult = await r.resolve({ clientPort: 40000, ...row.claims }, s);
      if ('fail' in row.want) {
        // A refusal still carries the spoof attempt it ignored (admission logs it).
        expect(res).toEqual(row.want.spoof ? { ok: false, reason: row.want.fail, spoofAttempt: expect.stringMatching(/untrusted source/) } : { ok: false, reason: row.want.fail });
        return;
      }
      expect(res.ok).toBe(true);
      if (!res.ok) return;
      expect(res.identity.user).toBe(row.want.user);
      expect(res.identity.host).toBe(row.want.host);
      expect(res.identity.process).toBeNull();
      if (row.want.roles) expect([...res.identity.roles]).toEqual(row.want.roles);
      else expect(res.identity.roles).toEqual(s.rolesFor(row.want.user, row.want.host));
      if (row.want.spoof) expect(res.spoofAttempt).toMatch(/untrusted source/);
      else expect(res.spoofAttempt ?? null).toBeNull();
    });
  }
});

describe('createIdentityResolver: details', () => {
  it('strips identity, token and proxy auth headers, lower-case', () => {
    const { r } = resolver();
    expect([...r.strippedHeaders(snap)].sort()).toEqual(['proxy-authorization', 'x-egress-host', 'x-egress-token', 'x-egress-user']);
    const plain = compilePolicy(defaultConfig());
    expect([...r.strippedHeaders(plain)].sort()).toEqual(['proxy-authorization', 'x-egress-host', 'x-egress-user']);
  });

  it('trusts identity headers from trustedSources only, however the address is spelled', () => {
    const { r } = resolver();
    expect(r.trustsHeadersFrom('127.0.0.1', snap)).toBe(true);
    expect(r.trustsHeadersFrom('::ffff:127.0.0.1', snap)).toBe(true);
    expect(r.trustsHeadersFrom('127.0.0.2', snap)).toBe(false);
    expect(r.trustsHeadersFrom('', snap)).toBe(false);
  });

  it('spoof attempt text names the header and source, bounded', async () => {
    const { r } = resolver();
    const res = await r.resolve({ clientIp: '::ffff:10.1.2.3', clientPort: 1, headers: { 'x-egress-user': 'a'.repeat(200) } }, snap);
    expect(res.ok && res.spoofAttempt).toContain('x-egress-user');
    expect(res.ok && res.spoofAttempt).toContain('10.1.2.3');
    expect(res.ok && res.spoofAttempt!.length).toBeLessThan(200);
    expect(r.stats().spoofAttemptsTotal).toBe(1);
  });

  it('caches scrypt answers per snapshot and forgets them on a new snapshot', async () => {
    const { r } = resolver();
    const claims = { clientIp: '198.51.100.7', clientPort: 1, username: 'bob', password: 'bob-pw' };
    const [a, b] = await Promise.all([r.resolve(claims, snap), r.resolve(claims, snap)]);
    expect(a.ok && b.ok).toBe(true);
    await r.resolve(claims, snap);
    expect(r.stats().credentials.scryptRuns).toBe(1);
    expect(r.stats().credentials.cacheHits).toBe(2);
    // A reload (new snapshot) where bob's password changed must not accept the old one from cache.
    const newHash = await hashPassword('bob-new', FAST);
    const reloaded = compilePolicy(config(newHash));
    expect(await r.resolve(claims, reloaded)).toEqual({ ok: false, reason: 'bad-credentials' });
    expect((await r.resolve({ ...claims, password: 'bob-new' }, reloaded)).ok).toBe(true);
  });

  it('unknown users cost a decoy scrypt when scrypt users exist (no user enumeration by timing)', async () => {
    const { r } = resolver();
    await r.resolve({ clientIp: '198.51.100.7', clientPort: 1, username: 'nobody', password: 'x' }, snap);
    expect(r.stats().credentials.scryptRuns).toBe(1);
  });

  it('every path costs one scrypt run when a scrypt user exists: plain user right or wrong, scrypt user, unknown user (regression: a known plain user cost one sha256, an unknown one a scrypt decoy)', async () => {
    const cases = [
      { username: 'alice', password: 'alice-pw', ok: true },
      { username: 'alice', password: 'wrong', ok: false },
      { username: 'bob', password: 'bob-pw', ok: true },
      { username: 'bob', password: 'wrong', ok: false },
      { username: 'nobody', password: 'x', ok: false },
    ];
    for (const [i, c] of cases.entries()) {
      const { r } = resolver();
      const res = await r.resolve({ clientIp: `198.51.100.${20 + i}`, clientPort: 1, username: c.username, password: c.password }, snap);
      expect(res.ok, `${c.username}:${c.password}`).toBe(c.ok);
      expect(r.stats().credentials.scryptRuns, `${c.username}:${c.password}`).toBe(1);
    }
    // A plain user's answer is cached like a scrypt user's: the successful path stays one derivation per TTL.
    const { r } = resolver();
    const alice = { clientIp: '198.51.100.30', clientPort: 1, username: 'alice', password: 'alice-pw' };
    expect((await r.resolve(alice, snap)).ok).toBe(true);
    expect((await r.resolve(alice, snap)).ok).toBe(true);
    expect(r.stats().credentials).toMatchObject({ scryptRuns: 1, cacheHits: 1 });
  });

  it('with only plain users no path runs scrypt (known, wrong, unknown alike)', async () => {
    const { r } = resolver();
    const plainOnly = compilePolicy(config(bobHash, (c) => (c.identity.users = c.identity.users.filter((u) => u.password !== undefined))));
    for (const [username, password] of [['alice', 'alice-pw'], ['alice', 'wrong'], ['nobody', 'x']] as const) {
      await r.resolve({ clientIp: '198.51.100.40', clientPort: 1, username, password }, plainOnly);
    }
    expect(r.stats().credentials.scryptRuns).toBe(0);
  });

  it('counts failures and throttles the source after 5, successes included, other sources untouched', async () => {
    const { r, waits } = resolver();
    const bad = { clientIp: '198.51.100.50', clientPort: 1, username: 'alice', password: 'nope' };
    for (let i = 0; i < 5; i++) expect((await r.resolve(bad, snap)).ok).toBe(false);
    expect(waits).toEqual([]);
    expect((await r.resolve({ ...bad, password: 'alice-pw' }, snap)).ok).toBe(true);
    expect(waits).toEqual([250]);
    await r.resolve(bad, snap);
    await r.resolve({ ...bad, clientIp: '::ffff:198.51.100.50' }, snap);
    expect(waits).toEqual([250, 250, 500]);
    // Another source, and a credential-less connection from the same source, never wait.
    await r.resolve({ ...bad, clientIp: '198.51.100.51' }, snap);
    await r.resolve({ clientIp: '198.51.100.50', clientPort: 1 }, snap);
    expect(waits).toEqual([250, 250, 500]);
    const st = r.stats();
    expect(st.badCredentialsTotal).toBe(8);
    expect(st.throttle.failuresTotal).toBe(8);
    expect(st.throttle.delayedTotal).toBe(3);
    expect(st.throttle.sourcesTracked).toBe(2);
  });

  it('a per-user failure budget slows guessing one name from many addresses (regression: failures counted per source only)', async () => {
    const { r, waits } = resolver();
    // One wrong guess for alice from each of 12 addresses: no source is ever over its own budget.
    for (let i = 0; i < 12; i++) expect((await r.resolve({ clientIp: `198.51.100.${100 + i}`, clientPort: 1, username: 'alice', password: `guess-${i}` }, snap)).ok).toBe(false);
    // Free up to 10 failures per user; the 11th and 12th guesses waited 250 and 500 ms.
    expect(waits).toEqual([250, 500]);
    // Another user is untouched; alice herself waits too (a quick success would tell a guesser it hit).
    await r.resolve({ clientIp: '198.51.100.200', clientPort: 1, username: 'bob', password: 'bob-pw' }, snap);
    expect(waits).toEqual([250, 500]);
    expect((await r.resolve({ clientIp: '198.51.100.201', clientPort: 1, username: 'alice', password: 'alice-pw' }, snap)).ok).toBe(true);
    expect(waits).toEqual([250, 500, 1000]);
    const st = r.stats();
    expect(st.userThrottle.failuresTotal).toBe(12);
    expect(st.userThrottle.delayedTotal).toBe(3);
    expect(st.throttle.delayedTotal).toBe(0);
  });

  it('a full scrypt queue sheds checks at once, counted and never cached as failures (regression: the queue was unbounded)', async () => {
    // A per-source share large enough that the process-wide queue bound is what holds.
    const r = createIdentityResolver({ now: () => NOW, throttle: { maxPendingPerSource: 1000 }, sleep: async () => {} });
    const N = MAX_SCRYPT_QUEUED + 72;
    const answers = await Promise.all(Array.from({ length: N }, (_, i) => r.resolve({ clientIp: '198.51.100.77', clientPort: 1, username: `nobody-${i}`, password: 'x' }, snap)));
    expect(answers.every((a) => !a.ok)).toBe(true);
    const st = r.stats();
    expect(st.credentials.scryptShed).toBeGreaterThan(0);
    expect(st.credentials.scryptRuns + st.credentials.scryptShed).toBe(N);
    expect(st.credentials.scryptRuns).toBeLessThanOrEqual(MAX_SCRYPT_QUEUED + scryptLimiter.maxConcurrent);
    // Shed checks were not failures: only the checked ones count towards the throttle.
    expect(st.throttle.failuresTotal).toBe(st.credentials.scryptRuns);
    expect(st.scryptWaiting).toBe(0);
    // The queue drains: bob's own login right after is checked and succeeds.
    expect((await r.resolve({ clientIp: '198.51.100.78', clientPort: 1, username: 'bob', password: 'bob-pw' }, snap)).ok).toBe(true);
  });

  it('an invalid signed token counts as a failed attempt', async () => {
    const { r } = resolver();
    await r.resolve({ clientIp: '203.0.113.9', clientPort: 1, headers: { 'x-egress-token': 'garbage' } }, snap);
    expect(r.stats().throttle.failuresTotal).toBe(1);
  });

  it('signed header is ignored when not configured (treated as an ordinary header)', async () => {
    const { r } = resolver();
    const s = compilePolicy(config(bobHash, (c) => (c.identity.headers.signed = null)));
    const res = await r.resolve({ clientIp: '203.0.113.9', clientPort: 1, headers: { 'x-egress-token': 'garbage' } }, s);
    expect(res).toMatchObject({ ok: true, identity: { user: null, host: null } });
  });
});
