/**
 * Core value types shared by the policy engine, the detectors and the data plane.
 * Pure data: no sockets, no timers, no clocks. Time is always an explicit argument (ms since epoch).
 */

export type Protocol = 'http' | 'connect' | 'socks5' | 'socks5-udp';
export type Mode = 'monitor' | 'enforce';
export type Verdict = 'allow' | 'block' | 'would-block';
export type Severity = 'low' | 'medium' | 'high';
export type AlertAction = 'flag' | 'block' | 'kill' | 'would-block' | 'would-kill';

/** Detector names are part of the product contract (SPEC §4); never rename one. */
export const DETECTOR_NAMES = [
  'policy.deny',
  'policy.deny-range',
  'an0081.proxyware',
  'an0081.scanner-tool',
  'an0081.scan',
  'an0081.sustained',
  'an0081.proxyjack',
  'an0080.bulk-upload',
  'an0080.split-upload',
  'an0080.long-session',
  'an0080.lineage',
  'an0080.exfil-tool',
  'quarantine',
] as const;
export type DetectorName = (typeof DETECTOR_NAMES)[number];

/**
 * Why a verdict was reached. Stable snake/kebab codes operators alert on (SPEC §4 `reason`).
 * - `allowed`: an allow entry of one of the identity's roles admitted it.
 * - `not-allowlisted`: no role of the identity allows the destination (`policy.deny`).
 * - `deny-range`: the dialled address is in a denied range (SSRF guard, `policy.deny-range`).
 * - `rate-limit`: per-identity concurrency or new-flow rate exceeded.
 * - `auth-required`: the listener requires authentication and none / a wrong one was given.
 * - `quarantine`: the identity is quarantined after a block/kill.
 * - `detector`: a detector blocked it at connect time (see `Decision.detector`).
 * - the gateway's own refusals before any judgement (GATEWAY_REFUSAL_REASONS).
 */
export type ReasonCode =
  | 'allowed'
  | 'not-allowlisted'
  | 'deny-range'
  | 'rate-limit'
  | 'auth-required'
  | 'quarantine'
  | 'detector'
  | GatewayRefusalReason;

/**
 * Refusals the gateway makes itself before the policy judged the flow, recorded as the rate limit's
 * are (verdict `block`, `enforced: true` in every mode, no detector or matched rule), the reason the
 * record's closeReason too:
 * - `bad-request`: the client connection had no address (reset before it was accepted);
 * - `shutting-down`: the gateway is draining (SIGTERM);
 * - `via-loop`: the request's `Via` names this gateway (it came back round a loop of proxies);
 * - `flow-log-unavailable`: the flow log cannot be written (`flowLog.onError: refuse`);
 * - `out-of-relay-ports`, `relay-error`: a SOCKS5 UDP ASSOCIATE got no relay socket (no port of
 *   `limits.udpRelayPorts` free; any other bind failure);
 * - `out-of-descriptors`: the destination's name could not be looked up for want of the gateway's own
 *   file descriptors (no address to judge it by). A dial that fails so after the policy judged the
 *   flow keeps the policy's verdict, with this closeReason.
 */
export const GATEWAY_REFUSAL_REASONS = ['bad-request', 'shutting-down', 'via-loop', 'flow-log-unavailable', 'out-of-relay-ports', 'relay-error', 'out-of-descriptors'] as const;
export type GatewayRefusalReason = (typeof GATEWAY_REFUSAL_REASONS)[number];

/** Whether a reason is one of the gateway's own refusals before any judgement (no policy refused it). */
export function isGatewayRefusal(reason: ReasonCode | null): reason is GatewayRefusalReason {
  return reason !== null && (GATEWAY_REFUSAL_REASONS as readonly string[]).includes(reason);
}

export interface ProcessInfo {
  readonly pid: number;
  readonly name: string;
  readonly exe: string | null;
  readonly cmdline: string | null;
  /** User name the process runs as (resolved from uid when possible). */
  readonly user: string | null;
  readonly uid: number | null;
  /** Audit login uid; 4294967295 (or null) = not part of a login session. */
  readonly loginuid: number | null;
  readonly ppid: number | null;
  readonly parentName: string | null;
  readonly parentExe: string | null;
  /** Where the attribution came from. */
  readonly source?: 'agent' | 'local';
}

export interface Identity {
  /** Authenticated user (proxy auth, trusted header, client cert) or null. */
  readonly user: string | null;
  /** Host name from the host inventory, a trusted header, or null. */
  readonly host: string | null;
  readonly roles: readonly string[];
  readonly process: ProcessInfo | null;
}

/** Facts about a new connection, known before DNS. */
export interface ConnectFacts {
  readonly protocol: Protocol;
  readonly clientIp: string;
  readonly clientPort: number;
  readonly identity: Identity;
  /** Destination host as the client named it: lower-case name (punycode) or an IP literal (no brackets). */
  readonly destHost: string;
  readonly destPort: number;
  /**
   * The exact address that will be dialled (after `resolver.hosts` / DNS), or null when it is not
   * known (DNS failed). With null, CIDR allow entries and deny ranges are not evaluated.
   */
  readonly destIp: string | null;
}

/** Which role and allow entry admitted a flow (SPEC §5 `matchedRule`). */
export interface MatchedRule {
  readonly role: string;
  /** Index of the entry in `roles.<role>.allow`. */
  readonly index: number;
  /** The entry in a readable form, e.g. `host=*.example.com ports=443`. */
  readonly entry: string;
}

export interface Decision {
  readonly verdict: Verdict;
  readonly reason: ReasonCode;
  /** The detector name that carries this verdict (`policy.deny`, `policy.deny-range`, …) or null on allow. */
  readonly detector: DetectorName | null;
  /** The mode in force for this identity when deciding. */
  readonly mode: Mode;
  readonly matchedRule: MatchedRule | null;
  /** Human-readable explanation lines (which roles were tried, why nothing matched). */
  readonly reasons: readonly string[];
}

/**
 * A compiled, frozen policy (SPEC §3/§4). Built by `compilePolicy(config)` in `policy/compile.ts`;
 * the data plane holds one reference and swaps it on reload. Every method is pure and synchronous.
 */
export interface PolicySnapshot {
  readonly version: number;
  readonly config: Readonly<import('./config.ts').Config>;
  /** Roles of an identity: the user's roles, the host's roles, else `defaultRoles`. */
  rolesFor(user: string | null, host: string | null): readonly string[];
  /**
   * The mode in force for these roles. A runtime override of `monitor` wins over everything (one call
   * rolls the gateway back); otherwise any role in enforce (its own mode or the global one) wins.
   */
  modeFor(roles: readonly string[], globalModeOverride?: Mode | null): Mode;
  /**
   * The one verdict for a new connection (SPEC §4). Order: deny-range on `destIp` (private/metadata,
   * `deny.cidrs`, minus `allowRanges`, IPv4-mapped / NAT64 / 6to4 / Teredo unwrapped first; always
   * `block`, whatever the mode: it is the SSRF floor, not a rollout choice) → allow entries of every
   * role (host patterns on `destHost`, CIDR entries on `destIp`, ports, protocol) → otherwise
   * `not-allowlisted`, which is `block` in enforce mode and `would-block` in monitor mode.
   */
  decide(facts: ConnectFacts, now: number, globalModeOverride?: Mode | null): Decision;
  /** Static resolver answer (`resolver.hosts`) or null. */
  staticAddress(host: string): string | null;
  /**
   * Whether an allow entry of `roles` could admit this name once it is resolved: a host entry
   * matches it (port and protocol included), or a role has CIDR entries (the address decides). When
   * false the connection is refused whatever the name resolves to, so it need not be looked up —
   * and must not be in enforce mode: the lookup itself carries the name out (a DNS tunnel).
   */
  mayAllowName(roles: readonly string[], host: string, port: number, protocol: Protocol): boolean;
}
