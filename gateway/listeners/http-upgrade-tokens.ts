/**
 * The protocols an `Upgrade` field names (RFC 9110 §7.8: `protocol-name ["/" protocol-version]`, a
 * comma-separated list), and whether an origin's 101 switches only to protocols the request offered.
 */

/** Append the protocols a comma-separated Upgrade value names to `into`, lower-case, empty elements skipped. */
function upgradeTokens(value: string, into: string[]): void {
  for (const element of value.split(',')) {
    const token = element.trim().toLowerCase();
    if (token !== '') into.push(token);
  }
}

/**
 * Whether a 101's fields (`headers`, a flat name/value list) say what it switches to, and only to what
 * was offered (RFC 9110 §7.8: a server that sends 101 MUST send Upgrade naming the protocol(s) it
 * switches to, and MUST NOT switch to one the request did not list): at least one protocol in its
 * Upgrade fields, each equal to one in `offered` (the Upgrade value sent to the origin). Compared
 * case-insensitively as whole tokens, name and optional version: `WebSocket` is `websocket`,
 * `IRC/6.9` is `irc/6.9`, `websocket/13` is not `websocket`. Runs once per 101, never per chunk.
 */
export function switchesToOffered(headers: readonly string[], offered: string): boolean {
  const named: string[] = [];
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const name = headers[i] as string;
    if (name.length === 7 && name.toLowerCase() === 'upgrade') upgradeTokens(headers[i + 1] as string, named);
  }
  if (named.length === 0) return false;
  const allowed: string[] = [];
  upgradeTokens(offered, allowed);
  return named.every((token) => allowed.includes(token));
}
