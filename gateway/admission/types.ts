/**
 * What admission takes and gives back (gateway/admission.ts `admit`): the listener's request, the
 * lookup's answer, an admitted flow and a refusal.
 */
import type { Identity, PolicySnapshot, ProcessInfo, Protocol } from '../../policy/types.ts';
import type { IdentityClaims } from '../context.ts';
import type { GatewayErrorCode } from '../errors.ts';
import type { Flow, RoutedFlow } from '../flow/flow.ts';
import type { RejectMapping } from '../reject.ts';

export interface AdmissionRequest {
  protocol: Protocol;
  listener: 'http' | 'https' | 'socks';
  claims: IdentityClaims;
  /** Destination as the client named it: lower-case name or IP literal without brackets. */
  destHost: string;
  destPort: number;
  /**
   * Where the client reached us (the accepted socket): read only when local attribution needs it,
   * since each first read of a socket's local address is a getsockname() system call.
   */
  server: LocalEndpoint;
  /** An identity already resolved on this client connection (keep-alive, SOCKS after auth). */
  identity?: Identity;
  /**
   * The policy a SOCKS5 login (claims.username, null for "no authentication") was made under, when
   * `identity` comes from it: refused `auth-required` if the running policy no longer admits that
   * login (login-standing.ts).
   */
  loginSince?: PolicySnapshot;
  /**
   * The process already attributed to this client connection (an earlier request of an HTTP
   * keep-alive connection): the flow's process when its identity names none.
   */
  knownProcess?: ProcessInfo | null;
  /**
   * A SOCKS5 UDP association's TCP control connection (claims.clientPort is then the client's
   * datagram socket and `server` the relay): attributed too, and taken when the datagram socket's
   * holder is not found (gone already, not visible).
   */
  control?: { readonly clientPort: number; readonly server: LocalEndpoint };
  /**
   * The request's Via already names this gateway (viaNamesUs): it came back round a loop of
   * proxies, and is refused 508 `via-loop` before limits, lookup and policy.
   */
  isLooped?: boolean;
  /** The destination's DNS answer, looked up ahead of admission (`lookUp`, socks5-udp-admissions.ts); else admission looks it up. */
  lookedUp?: LookedUp;
  /**
   * The listener's watch on a client that waits for its flow (CONNECT, an Upgrade, SOCKS5 CONNECT):
   * admission names the flow on it as soon as it is open, so the client leaving during the lookup or
   * the dial ends the flow at once (FlowTable.clientLeft), not when the lookup or the dial ends.
   */
  watch?: ClientWatch;
}

/** See AdmissionRequest.watch: a field the listener reads when its client leaves (no closure per flow). */
export interface ClientWatch {
  flow: Flow | null;
}

/**
 * A name's DNS answer: the address to classify and dial first, the answer's other addresses (each
 * classified before it is dialled, only when the one before it refused or, on the tunnels, has not
 * answered within the attempt delay: `admitAlternate`), or why there is none.
 */
export interface LookedUp {
  readonly ip: string | null;
  readonly alternates: readonly string[];
  readonly dnsError: GatewayErrorCode | null;
  /** The errno the descriptor probe saw (EMFILE, ENFILE) when `dnsError` is EGW_OUT_OF_DESCRIPTORS; absent otherwise. */
  readonly shortage?: string;
}

export interface LocalEndpoint {
  readonly localAddress?: string | undefined;
  readonly localPort?: number | undefined;
  /** Set by the PROXY protocol front on a socket whose client a balancer named (kBalanced). */
  readonly [kBalanced]?: BalancedEndpoints | undefined;
  /** When the listener took the connection (kAcceptedAt). */
  readonly [kAcceptedAt]?: number | undefined;
}

/**
 * The key of when a listener took a client connection (ms, Date.now(); gateConnections stamps it,
 * carryRemoteToTls copies it to the TLS socket). An agent report that arrived before it, less a
 * grace, was about another connection from the same port (FlowTable's waiting reports).
 */
export const kAcceptedAt: unique symbol = Symbol('egressgate.acceptedAt');

/** The key of what the PROXY protocol front records on a socket a balancer handed over. */
export const kBalanced: unique symbol = Symbol('egressgate.balanced');

/**
 * A connection a trusted balancer handed over with a PROXY header naming its client: the balancer's
 * own address (the socket's real peer), and the address and port the client's socket is connected
 * to (the header's destination: the balancer's front, not this listener).
 */
export interface BalancedEndpoints {
  readonly balancerIp: string;
  readonly reachedIp: string;
  readonly reachedPort: number;
}

export interface Admitted {
  ok: true;
  flow: RoutedFlow;
  /** The checked address to dial. */
  ip: string;
  /**
   * The name's other addresses (empty for an IP literal, a `resolver.hosts` name, a one-address
   * answer), families interleaved (dialOrder): dialled after it, each checked
   * first (`admitAlternate`), staggered (dialFirstReachable; for an absolute-URI request inside
   * undici's connector, http-origin-dial.ts StaggeredOrigin).
   */
  alternates: readonly string[];
  /** Parent proxy URL or null. */
  upstream: string | null;
  snapshot: PolicySnapshot;
}

export interface Refused {
  ok: false;
  flow: RoutedFlow;
  reject: RejectMapping;
  /** Seconds for Retry-After on 429. */
  retryAfterSec?: number;
  /** Killed while admission awaited (admin DELETE, a late report's detector, the drain's end), not refused. */
  isKilled?: true;
}

/**
 * The address and port the client's own socket is connected to: the listener's (the accepted
 * socket's local end), or, for a client a balancer named, the balancer's front the PROXY header
 * names. The client's socket is that 4-tuple in the socket tables; the one with this listener's
 * end is the balancer's (or, on a shared port, an unrelated direct client's).
 */
export function clientReached(server: LocalEndpoint): { ip: string; port: number } {
  const balanced = server[kBalanced];
  if (balanced !== undefined) return { ip: balanced.reachedIp, port: balanced.reachedPort };
  return { ip: server.localAddress ?? '', port: server.localPort ?? 0 };
}
