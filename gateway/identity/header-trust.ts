/**
 * Trusted identity headers (`identity.headers.user` / `.host`): believed only when the client
 * address is inside `identity.headers.trustedSources` (a sidecar, a trusted front proxy). From any
 * other source they are ignored and reported, because a client naming itself is a spoof attempt.
 */
import { type CidrMap, compileCidrSet, type ParsedIp } from '../../policy/cidr.ts';

type Headers = Readonly<Record<string, string | string[] | undefined>>;

/** Longest identity value we accept; anything longer is not a name. */
const MAX_VALUE_CHARS = 256;
// Printable ASCII without separators or controls: names land in logs, metrics and JSON records.
const VALUE_RE = /^[\x21-\x7e]+$/;

/**
 * The single value of header `name` (lower-case), trimmed. `undefined` when absent, null when
 * present but unusable (repeated with different values, empty, longer than `maxChars`, spaces or
 * control characters).
 */
export function headerValue(headers: Headers | undefined, name: string, maxChars = MAX_VALUE_CHARS): string | null | undefined {
  const raw = headers?.[name];
  if (raw === undefined) return undefined;
  let v: string | undefined;
  if (Array.isArray(raw)) {
    // Two different values is ambiguous: whoever added the second may be the attacker.
    if (raw.length === 0) return undefined;
    v = raw[0];
    for (const x of raw) if (x !== v) return null;
  } else {
    v = raw;
  }
  const t = (v ?? '').trim();
  if (t.length === 0 || t.length > maxChars || !VALUE_RE.test(t)) return null;
  return t;
}

/** The compiled trusted-source set of one snapshot. */
export class HeaderTrust {
  private readonly sources: CidrMap<string>;

  constructor(trustedSources: readonly string[]) {
    this.sources = compileCidrSet(trustedSources);
  }

  /** True when headers from this client address may name users and hosts. */
  isTrusted(ip: ParsedIp | null): boolean {
    return ip !== null && this.sources.size > 0 && this.sources.longestPrefix(ip) >= 0;
  }
}

/** A short, log-safe description of identity headers sent by an untrusted client. */
export function describeSpoof(clientIp: string, found: ReadonlyArray<[string, string | null]>): string {
  const shown = found.map(([name, v]) => `${name}=${v === null ? '(invalid)' : JSON.stringify(v.slice(0, 64))}`).join(' ');
  return `identity header from untrusted source ${clientIp}: ${shown}`;
}
