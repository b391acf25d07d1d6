/**
 * What every listener is handed by the composition root (main.ts). Listeners never build these
 * themselves, so tests can wire a gateway with injected seams (resolver map, clock, dialer).
 */
import type { ViaName } from './via.ts';
import type { SocketOwner } from '../agent/attribution.ts';
import type { ConnectFacts, Decision, Identity, Mode, PolicySnapshot, ProcessInfo } from '../policy/types.ts';
import type { Flow, FlowLeg, KnownDestination, RoutedFlow } from './flow/flow.ts';
import type { FlowTable } from './flow/flow-table.ts';
import type { DescriptorShortage } from './descriptor-shortage.ts';
import type { UdpRelayAddresses } from './udp-relay-addresses.ts';
import type { UnansweredAddresses } from './upstream/unanswered.ts';

/** The current policy: one reference, swapped on reload (gateway/policy-store.ts implements it). */
export interface PolicySource {
  current(): PolicySnapshot;
  /** Runtime global mode set through the admin API, or null for the config's own. */
  modeOverride(): Mode | null;
}

/** Credentials and headers a listener saw, for identity resolution. */
export interface IdentityClaims {
  clientIp: string;
  clientPort: number;
  /** Proxy-Authorization Basic / RFC 1929 user and password, if given. */
  username?: string | null;
  password?: string | null;
  /** Identity headers as received (lower-case names), HTTP only. */
  headers?: Readonly<Record<string, string | string[] | undefined>>;
  /** Verified TLS client certificate subject CN / SAN, if any. */
  certSubject?: string | null;
}

export type IdentityResult =
  /** `hostFromInventory`: the host is `identity.hosts`' answer for the client's address (no claim named one). */
  | { ok: true; identity: Identity; spoofAttempt?: string | null; hostFromInventory?: boolean }
  /** `spoofAttempt`: identity headers from an untrusted source, ignored, before requireAuth refused it. */
  | { ok: false; reason: 'auth-required' | 'bad-credentials'; spoofAttempt?: string | null };

/** Turns claims into an Identity (users, hosts, trusted headers, signed tokens). */
export interface IdentityResolver {
  resolve(claims: IdentityClaims, snapshot: PolicySnapshot): Promise<IdentityResult>;
  /** Names of the headers that must never be forwarded (identity + signed token headers). */
  strippedHeaders(snapshot: PolicySnapshot): readonly string[];
  /**
   * Until when (ms on `now()`) an identity resolved from `claims` may be reused without resolving
   * again (HTTP keep-alive): the expiry of a signed token among them, else Infinity.
   */
  reusableUntilMs(claims: IdentityClaims, snapshot: PolicySnapshot): number;
  /** The resolver's clock (ms since the epoch), the one token expiry is judged on. */
  now(): number;
  /** Whether identity headers from `clientIp` are believed (`identity.headers.trustedSources`). */
  trustsHeadersFrom(clientIp: string, snapshot: PolicySnapshot): boolean;
  /**
   * The host name `snapshot`'s `identity.hosts` gives `clientIp` (resolve's step 7), or null: what a
   * SOCKS5 identity resolved under an earlier policy is judged as now (its host came from there).
   */
  hostOf(clientIp: string, snapshot: PolicySnapshot): string | null;
}

/** Finds the local process behind a client socket on the gateway's own host (identity.localAttribution). */
export interface ProcessAttributor {
  /**
   * `proto` 'tcp' (default): the client's connection to serverIp:serverPort, a listener. 'udp': the
   * client's datagram socket at clientIp:clientPort, which sends to serverIp:serverPort (a relay).
   * Answers null at the latest when its wait runs out; `eventually`, when given, is called exactly
   * once with the lookup's own answer, which may come after that (a slow /proc scan).
   */
  attribute(
    clientIp: string,
    clientPort: number,
    serverIp: string,
    serverPort: number,
    proto?: 'tcp' | 'udp',
    eventually?: (p: ProcessInfo | null) => void,
  ): Promise<ProcessInfo | null>;
  /**
   * The owner uid of each client socket (the socket tables' `uid`), null where none is listed,
   * `{ shared }` (the uids) where sockets of more than one uid share a UDP port (SO_REUSEADDR) so
   * nothing tells which sent; null for all when the clients are not on this host or the lookup failed. Not bounded by a wait (the
   * caller bounds its own): which user's socket a SOCKS5 UDP association's first datagram came from
   * (socks5-udp-source.ts).
   */
  socketOwners?(
    sockets: ReadonlyArray<{ proto: 'tcp' | 'udp'; clientIp: string; clientPort: number; serverIp: string; serverPort: number }>,
  ): Promise<SocketOwner[] | null>;
}

/** Name resolution: static answers first, then DNS. Returns addresses in preference order. */
export interface Resolver {
  /** Addresses of `host`; `requester` (the client address) keeps one client's lookups from queueing everyone else's. */
  lookup(host: string, requester?: string): Promise<string[]>;
}

/** Connect-time hooks of the detection engine (quarantine, process-name detectors, byte budgets). */
export interface DetectionHooks {
  /**
   * Called after the policy admitted a flow, before dialling. Returns a refusing Decision
   * (quarantine, proxyware, scanner tool, …) or null. Must be synchronous and cheap.
   */
  onConnect(flow: RoutedFlow, snapshot: PolicySnapshot, mode: Mode): import('../policy/types.ts').Decision | null;
  /**
   * One more destination of an open flow, after the policy admitted it (a SOCKS5 UDP association
   * relays to many destinations under one flow): the same connect-time checks as `onConnect` for
   * that destination (quarantine, proxyware, exfil tools, …), and the destination counts towards
   * the identity's fan-out as a new flow's would. Returns a refusing Decision or null, which names
   * `matchedRule`, the allow entry the policy admitted this destination by (not the flow's first).
   */
  onDestination(
    flow: RoutedFlow,
    destination: KnownDestination,
    snapshot: PolicySnapshot,
    mode: Mode,
    matchedRule: import('../policy/types.ts').MatchedRule | null,
  ): import('../policy/types.ts').Decision | null;
  /**
   * A destination a flow that relays to several (SOCKS5 UDP) now relays to, as `leg`: it counts
   * towards the identity's fan-out and domains, and gets its own byte budget (`leg.budgetOut`,
   * `leg.onBudget`) and sweep judgement on its own bytes, as a flow to it alone would. A leg whose
   * `destination` is not `destination` is shared (FlowTable.addLeg at its bound): fan-out only.
   * `judged`: what admission decided for this destination. Monitor mode's would-block by policy
   * (isRefusedByPolicy) is enforce mode's refusal of it, counted as that refusal once, as its
   * refused record would be, and never as a destination relayed to (the leg is marked and not judged).
   */
  onRelayed(
    flow: RoutedFlow,
    leg: FlowLeg,
    snapshot: PolicySnapshot,
    destination: KnownDestination,
    judged: { readonly verdict: import('../policy/types.ts').Verdict; readonly reason: import('../policy/types.ts').ReasonCode | null },
  ): void;
  /** A byte budget towards the destination for this flow, or null. */
  uploadBudget(flow: RoutedFlow, snapshot: PolicySnapshot): number | null;
  /**
   * Admission's step 8 as enforce mode runs it, for a flow monitor mode let through `would-block`
   * (a quarantine, a connect-time detector) that is still being dialled when a change puts it in
   * enforce mode (admission.ts refuseDialsAfterChange): an enforced quarantine refuses it (monitor
   * mode's would-be one does not), else the connect-time detectors judge it on `facts` as at
   * admission, a refusing finding alerted `block` and quarantining the identity. The refusal, or null;
   * it names `matchedRule`, the allow entry the running policy (`snapshot`) admits the flow by.
   */
  onEnforcedWhileDialled(flow: RoutedFlow, facts: ConnectFacts, snapshot: PolicySnapshot, matchedRule: import('../policy/types.ts').MatchedRule | null): Decision | null;
  /** A connect failed or was refused (feeds scan detection). */
  onConnectFailed(flow: Flow): void;
}

export interface Logger {
  info(obj: Record<string, unknown>, msg?: string): void;
  warn(obj: Record<string, unknown>, msg?: string): void;
  error(obj: Record<string, unknown>, msg?: string): void;
}

export interface GatewayContext {
  readonly flows: FlowTable;
  readonly policy: PolicySource;
  readonly identity: IdentityResolver;
  readonly attributor: ProcessAttributor | null;
  readonly resolver: Resolver;
  readonly detection: DetectionHooks | null;
  readonly log: Logger;
  /** "ip:port" of every listener of this gateway: never dialled. */
  readonly selfAddresses: Set<string>;
  /** The live SOCKS5 UDP associations' relay sockets: never a UDP destination either. */
  readonly udpRelays: UdpRelayAddresses;
  /** This gateway's name in Via (via.ts): drawn at start, its own loop check. */
  readonly via: ViaName;
  /** True once SIGTERM started draining: refuse new flows. */
  isDraining(): boolean;
  /**
   * True while new flows are refused because the flow log cannot be written and
   * `flowLog.onError` is `refuse` (admission refuses; readiness says not ready); absent = never.
   */
  isRefusingUnrecorded?(): boolean;
  /** Records held in memory while the flow log cannot take them (absent = 0). */
  flowLogBacklog?(): number;
  /** Dials failing for want of a descriptor: logged once per ten seconds (absent = per flow only). */
  readonly descriptors?: DescriptorShortage;
  /** Addresses that lately did not answer a dial: dialled last among a name's (absent = none remembered). */
  readonly unanswered?: UnansweredAddresses;
}
