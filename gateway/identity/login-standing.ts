/**
 * Whether a SOCKS5 login still admits after a reload. A SOCKS5 client logs in once per connection
 * (RFC 1929, or "no authentication"), and what it asks afterwards — its CONNECT request, a UDP
 * association's datagrams to each new destination — is judged later, maybe under another policy.
 * The login made under `since` stands under `running` unless the running policy would refuse it
 * now: `identity.requireAuth` turned on for a client that never logged in, or the user's password
 * (or hash) changed or the user removed. As an HTTP keep-alive connection's next request is
 * resolved again under a new policy (its cached identity is per version), so these are refused
 * `auth-required`. The password is not kept to check again: an unchanged secret is an unchanged answer.
 */
import type { UserConfig } from '../../policy/config.ts';
import type { PolicySnapshot } from '../../policy/types.ts';
import type { IdentityClaims } from '../context.ts';
import { headerValue } from './header-trust.ts';
import { MAX_TOKEN_CHARS } from './signed-header.ts';

/** True when a login as `username` (null: none) made under `since` still admits under `running`. */
export function loginStands(username: string | null, since: PolicySnapshot, running: PolicySnapshot): boolean {
  if (since === running) return true;
  const identity = running.config.identity;
  if (username === null) return !identity.requireAuth;
  const was = userNamed(since.config.identity.users, username);
  const is = userNamed(identity.users, username);
  return was !== undefined && is !== undefined && was.password === is.password && was.passwordHash === is.passwordHash;
}

/** The user entry a login as `name` is checked against: the first of that name (credentials.ts). */
function userNamed(users: readonly UserConfig[], name: string): UserConfig | undefined {
  for (const u of users) if (u.name === name) return u;
  return undefined;
}

/**
 * True when the credentials of `claims` that identity resolution checked under `since` (an HTTP
 * Basic password, a signed identity token) still admit under `running`: a check that waited (a
 * scrypt derivation, the failure throttle) may span a reload. The password as loginStands says; a
 * token while the signed-header settings (header, secret, maxAgeSec) are unchanged, as its MAC and
 * expiry window are then. Claims without either (trusted headers, a client certificate, none) stand.
 */
export function credentialsStand(claims: IdentityClaims, since: PolicySnapshot, running: PolicySnapshot): boolean {
  if (since === running) return true;
  if (claims.username !== undefined && claims.username !== null && !loginStands(claims.username, since, running)) return false;
  const was = since.config.identity.headers.signed;
  if (!was || headerValue(claims.headers, was.header.toLowerCase(), MAX_TOKEN_CHARS) === undefined) return true;
  const is = running.config.identity.headers.signed;
  return !!is && is.header.toLowerCase() === was.header.toLowerCase() && is.secret === was.secret && is.maxAgeSec === was.maxAgeSec;
}
