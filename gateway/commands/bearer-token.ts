/**
 * A token sent as `Authorization: Bearer TOKEN`: the admin API reads `Bearer[ \t]+(\S+)[ \t]*`
 * (admin/auth.ts), so a token with whitespace in it can authenticate no request. Used by `serve` for
 * EGRESSGATE_ADMIN_TOKEN and by `agent` for its token; neither ever prints the token.
 */

/** Why such a token is refused, after the name of where it came from. */
export const BEARER_WHITESPACE_REASON = 'a Bearer token is sent without any, so no request could use it';

/** Whether `token` has whitespace in it (anywhere: callers that send it trimmed trim it first). */
export function hasWhitespace(token: string): boolean {
  return /\s/.test(token);
}
