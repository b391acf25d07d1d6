/**
 * The placeholder the admin API shows in place of a secret (admin/redact.ts: read-scope copies of
 * the policy), and the check that keeps it from ever becoming one. A read copy of the policy PUT
 * back by an admin (a dashboard's GET, an edit, the admin's PUT) would otherwise set every user's
 * password to the placeholder itself, a password anyone who has seen a read copy knows, and send
 * webhooks and parent-proxy logins to the placeholder too.
 */

/** What a redacted secret reads as. */
export const REDACTED = '[redacted]';

const ENCODED = encodeURIComponent(REDACTED);

/** Why `v` cannot be a secret: it is the placeholder. Null when it is not. */
export function redactedSecret(v: string): string | null {
  return v === REDACTED ? `"${REDACTED}" is the placeholder GET /v1/policy shows read tokens, not a secret: use the copy an admin token reads, or give the value` : null;
}

/** Why URL `v` cannot be used: a read copy's placeholder stands for its credentials or its path. Null when it is not. */
export function redactedUrl(v: string): string | null {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    return null;
  }
  const has = (part: string): boolean => part.includes(REDACTED) || part.includes(ENCODED);
  if (!has(u.username) && !has(u.password) && !has(u.pathname)) return null;
  return `"${REDACTED}" in this URL is the placeholder GET /v1/policy shows read tokens for its credentials or path: use the copy an admin token reads, or give the URL`;
}
