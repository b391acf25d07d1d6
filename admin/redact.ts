/**
 * Secrets out of the policy the API shows. A read token (a SOC analyst, a dashboard) must not be
 * able to read the admin tokens, and through them become admin.
 *
 * - Bearer tokens (admin and agent) become `tokenSha256` for admin scope: authentication is the
 *   same and a GET → PUT round trip keeps working, but the clear token is never served. Read scope
 *   gets "[redacted]" there too: from an admin token's sha256 a read token's holder could try
 *   guesses offline at a billion a second and become admin.
 * - For read scope also: user passwords and password hashes (scrypt hashes can be cracked
 *   offline), the signed-identity secret, credentials inside URLs (upstream proxies) and a webhook
 *   URL's path and query (where Slack-style webhooks carry their secret) are replaced by
 *   "[redacted]". Admin scope sees them: it can replace the whole policy anyway, and needs them for a
 *   faithful round trip.
 */
import { createHash } from 'node:crypto';
import { webhookOrigin } from '../gateway/alerts/alert-sinks.ts';
import type { Config } from '../policy/config.ts';
import { REDACTED } from '../policy/redacted.ts';

export { REDACTED };

function hashToken<T extends { token?: string; tokenSha256?: string }>(entry: T): T {
  if (entry.token === undefined) return entry;
  const { token, ...rest } = entry;
  return { ...rest, tokenSha256: createHash('sha256').update(token, 'utf8').digest('hex') } as T;
}

function redactUrl(url: string | null | undefined): string | null | undefined {
  if (!url) return url;
  try {
    const u = new URL(url);
    if (!u.username && !u.password) return url;
    u.username = REDACTED;
    u.password = '';
    return u.toString();
  } catch {
    return url;
  }
}

/** A copy of `config` fit to show to a principal with `scope`. */
export function redactConfig(config: Readonly<Config>, scope: 'read' | 'admin' | 'agent'): Config {
  const c = structuredClone(config) as Config;
  c.admin.tokens = c.admin.tokens.map(hashToken);
  c.identity.agents = c.identity.agents.map(hashToken);
  if (scope === 'admin') return c;
  // An unsalted sha256 is one fast hash per guess: a weak admin token falls to a wordlist offline.
  c.admin.tokens = c.admin.tokens.map((t) => ({ ...t, tokenSha256: REDACTED }));
  c.identity.agents = c.identity.agents.map((a) => ({ ...a, tokenSha256: REDACTED }));
  c.identity.users = c.identity.users.map((u) => ({
    ...u,
    ...(u.password === undefined ? {} : { password: REDACTED }),
    ...(u.passwordHash === undefined ? {} : { passwordHash: REDACTED }),
  }));
  if (c.identity.headers.signed) c.identity.headers.signed = { ...c.identity.headers.signed, secret: REDACTED };
  c.upstream = (redactUrl(c.upstream) as string | null | undefined) ?? null;
  for (const role of Object.values(c.roles)) if (role.upstream) role.upstream = redactUrl(role.upstream) ?? null;
  c.alerts.webhooks = c.alerts.webhooks.map((w) => ({ ...w, url: webhookOrigin(w.url) }));
  if (c.tls?.key) c.tls = { ...c.tls, key: c.tls.key.includes('PRIVATE KEY') ? REDACTED : c.tls.key };
  return c;
}
