/**
 * The admin listener's Host header check, against DNS rebinding: a page in an operator's browser
 * whose name is made to resolve to the gateway would otherwise reach every route that needs no
 * token (`/healthz`, `/readyz`, `/proxy.pac`, and any cookie-free one added later) and read the
 * answers as same-origin. A rebound request always carries the attacker's name in Host, so the
 * name is what is checked:
 *
 * - IP literals (`127.0.0.1:9180`, `[::1]:9180`, `10.0.0.5:9180`) and loopback names (`localhost`,
 *   `*.localhost`, which browsers resolve to loopback themselves) are always accepted: no one can
 *   rebind them. No Host at all (HTTP/1.0) is accepted too.
 * - `admin.allowedHosts` set: any other name must match one of its patterns (`*` turns the check off).
 * - `admin.allowedHosts` empty: any other name is refused on a connection that arrived on a loopback
 *   address, and accepted on one that did not (the PAC file is fetched by whatever name the clients
 *   were configured with; a gateway serving it on its network address keeps working unconfigured).
 *
 * An absolute-form target's authority is checked in place of Host (RFC 9112 §3.2.2: the server
 * ignores Host then).
 *
 * The port in Host is not compared: a rebinding page already has the listener's port, and tunnels
 * (`ssh -L`, `kubectl port-forward`) legitimately change it.
 */
import { isIP } from 'node:net';
import { compileHostSet, type HostPatternMap, normalizeHost } from '../policy/host-pattern.ts';

/** True for an address on the loopback interface (127/8, ::1, IPv4-mapped 127/8). */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (address === undefined) return false;
  return address.startsWith('127.') || address === '::1' || address.startsWith('::ffff:127.');
}

/**
 * The warning `serve` prints when the admin API listens on a wildcard or network address (`listening`
 * as the listening line gives it, `host:port`, IPv6 in brackets), or null on a loopback one. The
 * API is token-protected either way; the line says it is reachable from other hosts, and, when
 * admin.allowedHosts is empty, that its token-free routes answer any Host name there (DNS rebinding).
 */
export function adminExposureWarning(listening: string, allowedHosts: readonly string[]): string | null {
  const host = listening.slice(0, listening.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  if (isLoopbackAddress(host)) return null;
  const hosts = allowedHosts.length > 0 ? '' : '; admin.allowedHosts is empty, so its token-free routes (/healthz, /readyz, /proxy.pac) answer any Host name there';
  return `the admin API listens on ${listening}, not a loopback address: it is reachable from other hosts (token required)${hosts}`;
}

/** The name part of a Host header value (no port, no brackets), or null when it cannot be one. */
export function hostHeaderName(value: string): string | null {
  const v = value.trim();
  if (v.startsWith('[')) {
    const end = v.indexOf(']');
    if (end < 0) return null;
    const rest = v.slice(end + 1);
    if (rest !== '' && !/^:\d{1,5}$/.test(rest)) return null;
    return v.slice(1, end);
  }
  const colon = v.indexOf(':');
  if (colon < 0) return v;
  if (!/^\d{1,5}$/.test(v.slice(colon + 1))) return null;
  return v.slice(0, colon);
}

/**
 * An absolute-form request target (`http://authority/path`, RFC 9112 §3.2.2): its authority, which
 * stands for Host, and its origin-form path (query kept). Null for any other form. A server must
 * accept the form; fastify's router finds the route by the path inside it, but `request.url` kept
 * the whole target, so whatever read the path from it went wrong.
 */
export function absoluteForm(url: string): { authority: string; path: string } | null {
  const m = /^https?:\/\/([^/?#]*)([^#]*)$/i.exec(url);
  if (!m) return null;
  const rest = m[2] ?? '';
  return { authority: m[1] ?? '', path: rest.startsWith('/') ? rest : `/${rest}` };
}

/**
 * The authority a request names: an absolute-form target's (RFC 9112 §3.2.2: Host is then ignored),
 * else its Host field. What HostCheck judges, and what `/proxy.pac` builds its proxy address from,
 * so a client cannot get one name checked and another handed out.
 */
export function requestAuthority(originalUrl: string, hostHeader: string | undefined): string | undefined {
  const target = absoluteForm(originalUrl);
  return target ? target.authority : hostHeader;
}

export class HostCheck {
  private compiled: { patterns: readonly string[]; set: HostPatternMap<true> } | null = null;

  /** `allowedHosts`: the live `admin.allowedHosts` (recompiled only when the array changes). */
  constructor(private readonly allowedHosts: () => readonly string[]) {}

  /** Whether a request with this Host header, arrived on `localAddress`, may be answered. */
  accepts(host: string | undefined, localAddress: string | undefined): boolean {
    if (host === undefined) return true;
    const raw = hostHeaderName(host);
    if (raw === null) return false;
    if (isIP(raw) !== 0) return true;
    const name = normalizeHost(raw);
    if (name === null) return false;
    if (name === 'localhost' || name.endsWith('.localhost')) return true;
    const patterns = this.allowedHosts();
    if (patterns.length === 0) return !isLoopbackAddress(localAddress);
    if (this.compiled?.patterns !== patterns) this.compiled = { patterns, set: compileHostSet(patterns) };
    return this.compiled.set.matches(name);
  }
}
