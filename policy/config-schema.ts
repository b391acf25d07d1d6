/**
 * The config file's schema (SPEC §3) in the schema language of `schema-dsl.ts`: shapes, types and
 * the per-value checks (CIDRs, host patterns, ports, time zones, URLs). Cross-field rules (roles
 * referenced but not defined, duplicate names) live in `load-config.ts`.
 */
import { isIP } from 'node:net';
import { parsePasswordHash } from '../gateway/identity/password-hash.ts';
import { parseCidr } from './cidr.ts';
import { nameTextProblem, normalizeHost, parseHostPattern } from './host-pattern.ts';
import { redactedSecret, redactedUrl } from './redacted.ts';
import { parsePortSpec } from './ports.ts';
import { type Node, s } from './schema-dsl.ts';
import { parseParentUrl, urlForMessage } from './upstream-url.ts';
import { urlTextProblem } from './url-text.ts';
import { TextMemo } from './text-memo.ts';
import { DETECTOR_DEFAULTS } from './detectors/defaults.ts';

/**
 * The longest a time in milliseconds may be: node's timers hold 2^31 − 1 ms (24.8 days) and run a
 * longer one after 1 ms instead (TimeoutOverflowWarning). An idleTimeoutMs of 3,000,000,000 ended every
 * SOCKS5 UDP association within milliseconds.
 */
export const MAX_TIMER_MS = 2_147_483_647;

const nonEmpty = (v: string): string | null => (v.trim() === '' ? 'must not be empty' : null);

/**
 * A file the gateway reads or writes: taken as written, relative to the working directory. Nothing
 * expands a leading `~` (no shell reads this file): `flowLog.path: ~/egw-flows.jsonl` made
 * `./~/egw-flows.jsonl` under the working directory without a word, so it is refused here.
 */
const filePath = (v: string): string | null =>
  nonEmpty(v) ?? (v.startsWith('~') ? `a leading ~ is not expanded (it would name a directory "~" in the working directory): write the home directory out, or ./${v} for a directory named ~` : null);

const cidr = (v: string): string | null => {
  const r = parseCidr(v);
  return 'error' in r ? r.error : null;
};

const hostPattern = (v: string): string | null => {
  const r = parseHostPattern(v);
  return 'error' in r ? r.error : null;
};

/**
 * A detection list domain (`storageDomains`, `proxywareDomains`): a host pattern (policy/detectors/
 * match.ts DomainList reads it so), never `*`, which would put every destination on the list.
 */
const domainEntry = (v: string): string | null => {
  const r = parseHostPattern(v);
  if ('error' in r) return r.error;
  return r.kind === 'any' ? `"${v}" would list every destination: name a domain, "*.domain" or an IP address` : null;
};

const ipAddress = (v: string): string | null => (isIP(v) === 0 ? `"${v}" is not an IP address` : null);

/** `nameTextProblem`'s reason as ": reason", or "" when no character gives one. */
const withProblem = (v: string): string => {
  const problem = nameTextProblem(v);
  return problem === null ? '' : `: ${problem}`;
};

/**
 * A `resolver.hosts` name: a host name. A destination written as an IP address is dialled as itself
 * and never looked up, so an entry for one (`"10.0.0.1": 127.0.0.1`) would never be read.
 */
const resolverName = (v: string): string | null => {
  const host = normalizeHost(v);
  if (host === null) return `"${v}" is not a valid host name${withProblem(v)}`;
  return isIP(host) === 0 ? null : `"${v}" is an IP address, which is dialled as itself and never looked up: name a host`;
};

/** A `resolver.hosts` answer: an IP address without a zone id (normalisation would drop it: dialled unscoped). */
const resolverAnswer = (v: string): string | null =>
  ipAddress(v) ?? (v.includes('%') ? `"${v}": zone ids are not allowed (the answer would be dialled without it)` : null);

// IANA names are at most 32 characters (`America/Argentina/ComodRivadavia`).
const timeZones = new TextMemo<boolean>('time zone', 4096, 64);
/** True when Intl knows the IANA zone (cached: building a formatter costs ~50 µs). */
export function isValidTimeZone(zone: string): boolean {
  return timeZones.get(zone, knowsTimeZone);
}
function knowsTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}
const timeZone = (v: string): string | null => (isValidTimeZone(v) ? null : `unknown time zone "${v}" (use an IANA name like Europe/Berlin)`);

const HHMM = '^(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00)$';
const hhmm = (v: string): string | null => (new RegExp(HHMM).test(v) ? null : `"${v}" is not a time of day HH:MM (00:00-24:00)`);

/** `HOST:PORT` with an IPv4 address, a [bracketed] IPv6 address or a host name; port 0-65535. */
export function parseHostPort(v: string): { host: string; port: number } | { error: string } {
  const m = /^(\[[^\]]+\]|[^:[\]]+):(\d{1,5})$/.exec(v.trim());
  if (!m) return { error: `"${v}" is not HOST:PORT (IPv6 in brackets: [::1]:3128)` };
  const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
  const port = Number(m[2]);
  if (port > 65535) return { error: `port ${port} is out of range 0-65535` };
  if (m[1]!.startsWith('[') ? isIP(host) !== 6 : isIP(host) === 0 && (normalizeHost(host) === null || host !== host.trim())) {
    return { error: `"${host}" is not an IP address or host name${withProblem(host.trim() === host ? host : ' ')}` };
  }
  return { host, port };
}
const hostPort = (v: string): string | null => {
  const r = parseHostPort(v);
  return 'error' in r ? r.error : null;
};

const urlWith =
  (protocols: readonly string[], needPort: boolean) =>
  (v: string): string | null => {
    let u: URL;
    try {
      u = new URL(v);
    } catch {
      return `"${urlForMessage(v)}" is not a URL`;
    }
    if (!protocols.includes(u.protocol)) return `URL scheme must be one of ${protocols.map((p) => p.replace(':', '')).join(', ')}`;
    if (u.hostname === '') return 'URL has no host';
    if (needPort && u.port === '') return 'URL needs an explicit port';
    return null;
  };
// The schemes gateway/upstream/dial.ts speaks to a parent proxy. https (TLS to the proxy) is not one
// of them: accepting it gave every flow of the role a 502 upstream-proxy at dial time.
const UPSTREAM_SCHEMES = ['http:', 'socks5:', 'socks5h:'] as const;
const upstreamScheme = urlWith(UPSTREAM_SCHEMES, false);
const upstreamUrl = (v: string): string | null => {
  const m = upstreamScheme(v) ?? redactedUrl(v);
  if (m?.startsWith('URL scheme') && /^https:/i.test(v.trim())) return `a parent proxy over TLS (https) is not supported; ${m}`;
  if (m !== null) return m;
  // The port as the dial reads it (`http://parent:80` is port 80, not the default 3128); 0 is none.
  const parent = parseParentUrl(v);
  return 'error' in parent ? parent.error : null;
};
const webhookScheme = urlWith(['http:', 'https:'], false);
/** A webhook URL, read as written (policy/url-text.ts); a fragment is never sent, so none is taken. */
const webhookUrl = (v: string): string | null => {
  const m = webhookScheme(v) ?? redactedUrl(v);
  if (m !== null) return m;
  const text = v.trim();
  return urlTextProblem(text, new URL(text)) ?? (text.includes('#') ? 'a fragment ("#...") is never sent: leave it out' : null);
};

/**
 * `alerts.syslog.host`: an IP address (IPv6 without brackets, which `host` is written in as is) or
 * a host name. A name with a path or a port in it was taken and failed at every alert.
 */
const syslogHost = (v: string): string | null => {
  if (isIP(v) !== 0) return v.includes('%') ? `"${v}": zone ids are not allowed` : null;
  if (v.startsWith('[')) return `"${v}": write an IPv6 address without brackets`;
  return normalizeHost(v) === null || v.trim() !== v ? `"${v}" is not an IP address or host name${withProblem(v)}` : null;
};

const sha256 = (v: string): string | null => redactedSecret(v) ?? (/^[0-9a-fA-F]{64}$/.test(v) ? null : 'must be 64 hex digits (sha256)');
// Identity-owned checks (gateway/identity): the password-hash parser is pure, so validation and the
// resolver accept exactly the same hashes.
const passwordHash = (v: string): string | null => {
  const r = parsePasswordHash(v);
  return redactedSecret(v) ?? ('error' in r ? r.error : null);
};
// An HMAC key guessable offline from one captured token is no key: ask for at least 16 characters.
const hmacSecret = (v: string): string | null => redactedSecret(v) ?? (v.length < 16 ? 'must be at least 16 characters (an HMAC-SHA256 key)' : null);

const headerName = (v: string): string | null => (/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(v) ? null : `"${v}" is not an HTTP header name`);
const roleName = (v: string): string | null => (/^[A-Za-z0-9_.-]{1,64}$/.test(v) ? null : `role name "${v}" may use letters, digits, "_", "-", "." (1-64)`);

const portItem = s.or(s.int(1, 65535), s.str((v: string) => {
  const r = parsePortSpec(v);
  return 'error' in r ? r.error : null;
}));

/**
 * `limits.udpRelayPorts`: "LO-HI" (or one port), 1024-65535. Below 1024 a non-root gateway cannot
 * bind, and those are well-known services' ports a firewall rule would open to every client.
 */
const relayPortRange = (v: string): string | null => {
  const r = parsePortSpec(v);
  if ('error' in r) return r.error.replace('use a number or "lo-hi"', 'use "LO-HI", e.g. "40000-40999"');
  if (r[0] < 1024) return `bad port range "${v}": relay ports are 1024-65535 (below 1024 are privileged)`;
  return null;
};

const exactlyOne =
  (a: string, b: string, optional = false) =>
  (v: Record<string, unknown>): string | null => {
    const n = Number(v[a] !== undefined) + Number(v[b] !== undefined);
    if (n === 2) return `use either ${a} or ${b}, not both`;
    if (n === 0 && !optional) return `needs ${a} or ${b}`;
    return null;
  };

/**
 * A verified client certificate names a user (identity/client-cert.ts). Without `tls.ca` node would
 * verify it against its bundled public roots (and NODE_EXTRA_CA_CERTS): any certificate a public CA
 * issued would then log in, as whatever name it carries. Client certificates need the CA that
 * issues them.
 */
const clientCertNeedsCa = (v: Record<string, unknown>): string | null =>
  v['requestClientCert'] === true && (v['ca'] === undefined || v['ca'] === null)
    ? 'requestClientCert needs ca: the CA that issues client certificates (without it every publicly trusted certificate would name a user)'
    : null;

/**
 * A clear token is sent as `Authorization: Bearer TOKEN`, which admin/auth.ts reads as `\S+`: one
 * with whitespace in it (`"abc def"`, a trailing newline from a secret file) was accepted and could
 * never authenticate, as serve refuses such an EGRESSGATE_ADMIN_TOKEN.
 */
const bearerToken = (v: string): string | null =>
  nonEmpty(v) ?? (/\s/.test(v) ? 'has whitespace in it (a trailing newline from a file?): a Bearer token is sent without any, so no request could use it' : null);

const tokenEntry = (extra: Record<string, Node | ReturnType<typeof s.req>>) =>
  s.obj({ name: s.req(s.str(nonEmpty)), token: s.str(bearerToken), tokenSha256: s.str(sha256), ...extra }, exactlyOne('token', 'tokenSha256'));

const allowEntry = s.obj(
  {
    host: s.str(hostPattern),
    cidr: s.str(cidr),
    ports: s.arr(portItem, 1),
    protocol: s.enum(['tcp', 'udp']),
  },
  exactlyOne('host', 'cidr'),
);

const names = s.arr(s.str(nonEmpty));
/**
 * What an exception may skip: the behaviour detectors. policy.deny, policy.deny-range and quarantine
 * are never skipped by one (an exception naming them was accepted and did nothing).
 */
const detectorNames = s.arr(s.enum(Object.keys(DETECTOR_DEFAULTS)), 1);

const exception = s.obj(
  {
    process: names,
    user: names,
    host: names,
    destination: s.arr(s.str(hostPattern)),
    detectors: s.req(detectorNames),
  },
  (v: Record<string, unknown>) =>
    ['process', 'user', 'host', 'destination'].some((k) => v[k] !== undefined)
      ? null
      : 'an exception needs at least one of process, user, host, destination (to turn a detector off, set its enabled: false)',
);

/**
 * Each behaviour detector's settings: enabled, action, corroborate and exactly the thresholds it
 * reads (its `DETECTOR_DEFAULTS` entry), numbers >= 0. A misspelt or mistyped threshold is an
 * error: the detector would otherwise run on its default without a word.
 */
const detectors = s.keyed(
  Object.fromEntries(
    Object.entries(DETECTOR_DEFAULTS).map(([name, d]) => [
      name,
      s.obj({
        enabled: s.bool(),
        action: s.enum(['flag', 'block', 'kill']),
        corroborate: s.bool(),
        ...Object.fromEntries(Object.keys(d.n).map((k) => [k, s.num({ min: 0 })])),
      }),
    ]),
  ),
);

const severity = s.enum(['low', 'medium', 'high']);

/** The whole config file. Every field is optional: `loadConfig` fills defaults from `defaultConfig()`. */
export const CONFIG_SCHEMA: Node = s.obj({
  $schema: s.str(),
  mode: s.enum(['monitor', 'enforce']),
  listen: s.obj({ http: s.str(hostPort), socks: s.str(hostPort), admin: s.str(hostPort), https: s.nul(s.str(hostPort)) }),
  tls: s.nul(s.obj({ cert: s.req(s.str(filePath)), key: s.req(s.str((v: string) => filePath(v) ?? redactedSecret(v))), ca: s.nul(s.str(filePath)), requestClientCert: s.bool() }, clientCertNeedsCa)),
  admin: s.obj({
    tokens: s.arr(tokenEntry({ scope: s.req(s.enum(['admin', 'read', 'agent'])) })),
    allowedHosts: s.arr(s.str(hostPattern)),
    maxConnectionsPerSource: s.int(0),
    maxAuthFailuresPerSource: s.int(0),
    authLockoutSec: s.int(1, Math.floor(MAX_TIMER_MS / 1000)),
    maxStreams: s.int(0),
    maxStreamsPerToken: s.int(0),
  }),
  identity: s.obj({
    requireAuth: s.bool(),
    users: s.arr(
      s.obj(
        { name: s.req(s.str(nonEmpty)), password: s.str(redactedSecret), passwordHash: s.str(passwordHash), roles: s.arr(s.str(nonEmpty)) },
        exactlyOne('password', 'passwordHash', true),
      ),
    ),
    hosts: s.arr(s.obj({ cidr: s.req(s.str(cidr)), name: s.req(s.str(nonEmpty)), roles: s.arr(s.str(nonEmpty)) })),
    headers: s.obj({
      trustedSources: s.arr(s.str(cidr)),
      user: s.str(headerName),
      host: s.str(headerName),
      signed: s.nul(s.obj({ header: s.req(s.str(headerName)), secret: s.req(s.str(hmacSecret)), maxAgeSec: s.int(1) })),
    }),
    agents: s.arr(tokenEntry({ sources: s.req(s.arr(s.str(cidr), 1)) })),
    localAttribution: s.bool(),
  }),
  roles: s.rec(s.obj({ mode: s.enum(['monitor', 'enforce']), allow: s.arr(allowEntry), upstream: s.nul(s.str(upstreamUrl)) }), roleName),
  defaultRoles: s.arr(s.str(nonEmpty)),
  deny: s.obj({ privateRanges: s.bool(), cidrs: s.arr(s.str(cidr)) }),
  allowRanges: s.arr(s.str(cidr)),
  // The DNS cache's lifetimes (0: none): a day for answers, an hour for failures at most.
  resolver: s.obj({
    hosts: s.rec(s.str(resolverAnswer), resolverName),
    timeoutMs: s.int(1, MAX_TIMER_MS),
    rememberUnansweredMs: s.int(0, MAX_TIMER_MS),
    cacheTtlSec: s.int(0, 86_400),
    negativeCacheTtlSec: s.int(0, 3600),
  }),
  schedule: s.obj({
    timezone: s.str(timeZone),
    businessHours: s.obj({
      days: s.arr(s.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'])),
      start: s.str(hhmm, { pattern: HHMM }),
      end: s.str(hhmm, { pattern: HHMM }),
    }),
  }),
  exceptions: s.arr(exception),
  approvedUploadDestinations: s.arr(s.str(hostPattern)),
  expectedScanSources: s.arr(
    s.obj({ host: s.str(nonEmpty), user: s.str(nonEmpty), process: names }, (v: Record<string, unknown>) =>
      v['host'] === undefined && v['user'] === undefined && v['process'] === undefined ? 'needs at least one of host, user, process' : null,
    ),
  ),
  detection: s.obj({
    sampleIntervalMs: s.int(1, MAX_TIMER_MS),
    detectors,
    lists: s.obj({ proxyware: names, scannerTools: names, exfilTools: names, storageDomains: s.arr(s.str(domainEntry)), proxywareDomains: s.arr(s.str(domainEntry)) }),
    quarantineSec: s.int(0),
    maxTrackedIdentities: s.int(1),
    maxTrackedDestinations: s.int(1),
  }),
  state: s.obj({ path: s.nul(s.str(filePath)) }),
  limits: s.obj({
    maxFlowsPerIdentity: s.int(1),
    maxNewFlowsPerSecPerIdentity: s.int(1),
    maxConnectionsPerSource: s.int(0),
    headerTimeoutMs: s.int(1, MAX_TIMER_MS),
    idleTimeoutMs: s.int(1, MAX_TIMER_MS),
    maxHeaderBytes: s.int(1024),
    connectTimeoutMs: s.int(1, MAX_TIMER_MS),
    drainGraceMs: s.int(0, MAX_TIMER_MS),
    udpRelayPorts: s.nul(s.str(relayPortRange)),
  }),
  flowLog: s.obj({ path: s.nul(s.str(filePath)), interimSec: s.int(0), keepClosed: s.int(0), onError: s.enum(['refuse', 'admit']) }),
  alerts: s.obj({
    webhooks: s.arr(s.obj({ url: s.req(s.str(webhookUrl)), minSeverity: severity })),
    syslog: s.nul(s.obj({ host: s.req(s.str(syslogHost)), port: s.req(s.int(1, 65535)), protocol: s.enum(['udp', 'tcp']) })),
    keep: s.int(1),
  }),
  proxyProtocol: s.obj({ trustedSources: s.arr(s.str(cidr)) }),
  upstream: s.nul(s.str(upstreamUrl)),
});
