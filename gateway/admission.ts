/**
 * The connect-time pipeline every listener shares. One call per new flow:
 *
 *  1. identify: credentials / trusted headers / host inventory → Identity (or 407)
 *  2. open the flow in the FlowTable (so even a refusal leaves one record)
 *  3. draining? → 503; per-identity concurrency and new-flow rate → 429
 *  4. local process attribution (clients on the gateway's own host), in parallel with
 *  5. resolve: IP literal, `resolver.hosts`, then DNS — the one address that is classified and dialled
 *     (the answer's others are kept: dialled when it refuses or is slow, each classified first, admitAlternate)
 *     (in enforce mode a name the roles can never admit is refused unresolved, its process named;
 *     a reload or mode switch during the lookup judges the flow on the running policy: runningPolicy)
 *  6. never the gateway's own listeners (nor, for UDP, a live association's relay socket)
 *  7. policy decide (deny-range, role allowlist, mode) → block / would-block / allow
 *  8. detection hooks: quarantine and process-name detectors; byte budget
 *  9. upstream: a parent proxy for the identity's roles, if any
 *
 * A refusal closes the flow with its reason and hands back what the client must see.
 */
import { parentName } from './upstream/parent-label.ts';
import { isIP, isIPv4 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { effectiveIPv4, unmapIPv4 } from '../policy/address.ts';
import type { ConnectFacts, Decision, GatewayRefusalReason, Identity, Mode, PolicySnapshot, ProcessInfo, Protocol } from '../policy/types.ts';
import type { GatewayContext, IdentityClaims, ProcessAttributor } from './context.ts';
import { GatewayError, type GatewayErrorCode, isOwnShortage } from './errors.ts';
import type { Flow, RoutedFlow, UnknownDestination } from './flow/flow.ts';
import { clientTransport } from './flow/flow-table.ts';
import { dialOrder } from './upstream/resolve.ts';
import { mapDecision, mapError, mapKill, type RejectMapping } from './reject.ts';

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
  /** The destination's DNS answer, looked up ahead of admission (`lookUp`, socks5-udp.ts); else admission looks it up. */
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
}

const NO_ALTERNATES: readonly string[] = Object.freeze([]);

export interface LocalEndpoint {
  readonly localAddress?: string | undefined;
  readonly localPort?: number | undefined;
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

/** Records the flow log may hold before refusals for want of it are counted instead of recorded. */
export const REFUSAL_RECORDS_HELD = 10_000;

const ANONYMOUS: Identity = Object.freeze({ user: null, host: null, roles: Object.freeze([]) as readonly string[], process: null });

/** Run the connect-time pipeline for one new flow. Never throws. */
export async function admit(ctx: GatewayContext, req: AdmissionRequest): Promise<Admitted | Refused> {
  // Re-read after each wait below: a reload or mode switch meanwhile judges the flow (runningPolicy).
  let snapshot = ctx.policy.current();
  let override = ctx.policy.modeOverride();
  // 1. identify
  let identity = req.identity;
  let authFailed = false;
  if (!identity) {
    const result = await ctx.identity.resolve(req.claims, snapshot);
    if (result.ok) {
      identity = result.identity;
      if (result.spoofAttempt) ctx.log.warn({ client: req.claims.clientIp, header: result.spoofAttempt }, 'identity header from untrusted source ignored');
    } else {
      identity = { ...ANONYMOUS, roles: snapshot.rolesFor(null, null) };
      authFailed = true;
    }
  }
  if (req.knownProcess && !identity.process) identity = { ...identity, process: req.knownProcess };
  // 2. open
  const flow = ctx.flows.open({
    protocol: req.protocol,
    listener: req.listener,
    // A dual-stack listener's IPv4 client as plain IPv4: the form agent reports and records use.
    client: { ip: unmapIPv4(req.claims.clientIp), port: req.claims.clientPort },
    identity,
    destination: { host: req.destHost, ip: null, port: req.destPort },
    controlPort: req.control?.clientPort,
  });
  if (req.watch !== undefined) req.watch.flow = flow;
  let mode = snapshot.modeFor(identity.roles, override);
  // A client without an address (reset before it was accepted) cannot be identified: never judged.
  // The gateway's own refusals before any judgement are recorded as the rate limit's are (block,
  // enforced, in every mode: gatewayRefusal), so a log filtered for what was refused finds them.
  if (req.claims.clientIp === '') return refuse(ctx, flow, gatewayRefusal('bad-request', mode, NO_CLIENT_ADDRESS));
  if (authFailed) {
    yieldRecordToFlows(ctx, flow);
    return refuse(ctx, flow, loginRefusal(mode));
  }
  // 3. draining and limits
  if (ctx.isDraining()) return refuse(ctx, flow, gatewayRefusal('shutting-down', mode, DRAINING));
  // Before the rate: the looping copies of one request are not the client's new flows.
  if (req.isLooped === true) return refuse(ctx, flow, gatewayRefusal('via-loop', mode, LOOPED));
  // No flow the log cannot record (its record, this refusal's included, waits in the log's backlog).
  if (ctx.isRefusingUnrecorded?.() === true) {
    yieldRecordToFlows(ctx, flow);
    return refuse(ctx, flow, gatewayRefusal('flow-log-unavailable', mode, NO_FLOW_LOG));
  }
  const limits = snapshot.config.limits;
  if (!ctx.flows.withinLimits(flow, limits.maxFlowsPerIdentity, limits.maxNewFlowsPerSecPerIdentity)) {
    const r = refuse(ctx, flow, fixed('rate-limit', null, mode, ['per-identity flow limit exceeded']));
    r.retryAfterSec = 1;
    return r;
  }
  // 4. local attribution, in parallel with resolution
  const attribution =
    ctx.attributor && !flow.identity.process && snapshot.config.identity.localAttribution && isLocalAddress(req.claims.clientIp)
      ? attributeLocally(ctx.attributor, req)
      : null;
  // In enforce mode a name no allow entry of these roles can admit is refused before it is looked
  // up: the lookup would carry the name out (a DNS tunnel through the gateway's own resolver). The
  // refusal still names the local process that tried (who asked for a forbidden name is the point).
  if (isRefusedUnresolved(snapshot, mode, flow, req.destHost, req.destPort, req.protocol)) {
    if (attribution) await attachProcess(ctx, flow, attribution);
    if (flow.state === 'closed') return killedMeanwhile(flow);
    return refuse(ctx, flow, snapshot.decide(factsOf(flow, req.protocol, req.destHost, req.destPort, null), ctx.flows.now(), override));
  }
  // 5. resolution: an IP literal or a `resolver.hosts` entry needs no lookup (and no await).
  let ip: string | null = knownAddress(snapshot, req.destHost);
  let alternates = NO_ALTERNATES;
  let dnsError: GatewayErrorCode | null = null;
  if (ip === null && req.lookedUp !== undefined) ({ ip, alternates, dnsError } = req.lookedUp);
  else if (ip === null) {
    const lookup = lookUp(ctx, req.destHost, flow.client.ip);
    let answer = await lookUpUntilKilled(flow, lookup);
    // A reload or mode switch while it was looked up (refuseLookupsAfterChange woke the wait): a name
    // the running policy can no longer admit is refused now, as a new flow's would be, unresolved.
    while (answer === POLICY_CHANGED && flow.state !== 'closed') {
      ({ snapshot, override, mode } = runningPolicy(ctx, flow));
      if (isRefusedUnresolved(snapshot, mode, flow, req.destHost, req.destPort, req.protocol)) {
        return refuse(ctx, flow, snapshot.decide(factsOf(flow, req.protocol, req.destHost, req.destPort, null), ctx.flows.now(), override));
      }
      answer = await lookUpUntilKilled(flow, lookup);
    }
    ({ ip, alternates, dnsError } = answer);
  }
  if (attribution && flow.state !== 'closed') await attachProcess(ctx, flow, attribution);
  // Killed while it was looked up (admin DELETE, a late report's detector, the drain's end, the
  // client leaving): answered now, not when the lookup ends (after the process, at the drain's end).
  // The lookup cannot be cancelled: its answer is not used and nothing is dialled.
  if (flow.state === 'closed') return killedMeanwhile(flow);
  // Judged on the policy running now, not the one its admission began under: a reload, push,
  // rollback or mode switch during the lookup or the local attribution applies to this flow too (it
  // is not established yet). Its roles are the new policy's; a `resolver.hosts` entry it added is the address.
  if (ctx.policy.current() !== snapshot || ctx.policy.modeOverride() !== override) {
    ({ snapshot, override, mode } = runningPolicy(ctx, flow));
    const known = knownAddress(snapshot, req.destHost);
    if (known !== null) ({ ip, alternates, dnsError } = { ip: known, alternates: NO_ALTERNATES, dnsError: null });
  }
  if (ip) ctx.flows.setDestinationIp(flow, ip);
  // 6. self-dial
  const self = ip ? selfDialDecision(ctx, ip, req.destPort, req.protocol, mode) : null;
  if (self !== null) return refuse(ctx, flow, self);
  // 7. policy
  const decision = snapshot.decide(factsOf(flow, req.protocol, req.destHost, req.destPort, ip), ctx.flows.now(), override);
  ctx.flows.decide(flow, decision, decision.verdict === 'block');
  if (decision.verdict === 'block') return refuse(ctx, flow, decision);
  if (!ip) return refuseCode(ctx, flow, dnsError ?? 'EGW_DNS_FAILED');
  // 8. detection at connect time. Not for a flow monitor mode relays as would-block by policy:
  // enforce mode refuses it at step 7, and never reaches its quarantine, its connect-time
  // detectors (whose would-quarantine would then mark the identity's allowed flows) or its budget.
  if (ctx.detection && decision.verdict === 'allow') {
    const found = ctx.detection.onConnect(flow, snapshot, mode);
    if (found) {
      if (found.verdict === 'block') {
        ctx.flows.decide(flow, found, true);
        return refuse(ctx, flow, found);
      }
      if (found.verdict === 'would-block' && flow.verdict === 'allow') ctx.flows.decide(flow, found, false);
    }
    // A UDP association's budgets are its destinations' own, set as each is relayed to (onRelayed).
    const budget = req.protocol === 'socks5-udp' ? null : ctx.detection.uploadBudget(flow, snapshot);
    if (budget !== null) flow.budgetOut = budget;
  }
  // 9. upstream: the record names the parent (never its credentials), dialled or failed.
  const upstream = upstreamOf(snapshot, flow.identity.roles);
  if (upstream !== null) flow.upstream = parentName(upstream);
  return { ok: true, flow, ip, alternates, upstream, snapshot };
}

/**
 * Whether the admitted flow may go on to `ip`, another address of its name's answer, before it is
 * dialled (the address before it refused the connection, could not be reached, or has not answered
 * within the attempt delay): judged now as that address would be (never the gateway's own;
 * deny-range, CIDR entries, mode), on the snapshot the flow was admitted on. An allowed flow goes on
 * only to an address the policy allows; a monitor-mode flow relayed as would-block to any the policy
 * would not block outright. When it may, the flow's record names `ip` from now on. `isOutcome`: `ip`
 * is the address the dial ended with (the one that answered, or whose failure the flow takes), one
 * already judged: the record names it, nothing is judged again.
 */
export function admitAlternate(ctx: GatewayContext, admitted: Admitted, ip: string, isOutcome = false): boolean {
  const { flow, snapshot } = admitted;
  if (!isOutcome) {
    const override = ctx.policy.modeOverride();
    const mode = snapshot.modeFor(flow.identity.roles, override);
    if (selfDialDecision(ctx, ip, flow.destination.port, flow.protocol, mode) !== null) return false;
    const decision = snapshot.decide(factsOf(flow, flow.protocol, flow.destination.host, flow.destination.port, ip), ctx.flows.now(), override);
    if (decision.verdict === 'block' || (decision.verdict !== 'allow' && flow.verdict === 'allow')) return false;
  }
  if (flow.destination.ip !== ip) ctx.flows.setDestinationIp(flow, ip);
  return true;
}

/** A SOCKS5 login refused before its request names no destination (flow.ts, UnknownDestination). */
const NO_DESTINATION: UnknownDestination = Object.freeze({ host: null, ip: null, port: null });

/**
 * Record a login refused before the client named a destination: SOCKS5 RFC 1929 checks the
 * credentials before the request, and the server must close the connection after a failure. One
 * flow, opened and closed at once, as an HTTP request with wrong credentials is recorded (verdict
 * block, reason and closeReason `auth-required`, the anonymous identity: never the claimed name,
 * never the password), with destination { host: null, ip: null, port: null }. It is judged by no
 * policy, counts towards no per-identity rate and no detector (nothing was dialled), and yields
 * its record to real flows as other refusals do while the flow log cannot be written.
 */
export function refuseLogin(ctx: GatewayContext, req: { protocol: Protocol; listener: AdmissionRequest['listener']; clientIp: string; clientPort: number }): void {
  const snapshot = ctx.policy.current();
  const identity: Identity = { ...ANONYMOUS, roles: snapshot.rolesFor(null, null) };
  const flow = ctx.flows.open({
    protocol: req.protocol,
    listener: req.listener,
    client: { ip: unmapIPv4(req.clientIp), port: req.clientPort },
    identity,
    destination: NO_DESTINATION,
  });
  yieldRecordToFlows(ctx, flow);
  const decision = loginRefusal(snapshot.modeFor(identity.roles, ctx.policy.modeOverride()));
  ctx.flows.decide(flow, decision, true);
  ctx.flows.close(flow, decision.reason);
}

const NO_CLIENT_ADDRESS: readonly string[] = Object.freeze(['the client connection has no address (reset before it was accepted)']);
const DRAINING: readonly string[] = Object.freeze(['the gateway is draining: no new flows']);
const LOOPED: readonly string[] = Object.freeze(['the request\'s Via names this gateway: it came back round a loop of proxies']);
const NO_FLOW_LOG: readonly string[] = Object.freeze(['the flow log cannot be written (flowLog.onError: refuse)']);

/**
 * A refusal the gateway makes itself before the policy judged the flow (policy/types.ts
 * GATEWAY_REFUSAL_REASONS): recorded as the rate limit's is, verdict block and enforced in every
 * mode (nothing was let through), no detector, no matched rule; `reasons` say why.
 */
export function gatewayRefusal(reason: GatewayRefusalReason, mode: Mode, reasons: readonly string[]): Decision {
  return fixed(reason, null, mode, reasons);
}

/** Wrong or missing credentials: refused in every mode (they protect the gateway, not the policy). */
function loginRefusal(mode: Mode): Decision {
  return fixed('auth-required', 'policy.deny', mode, ['proxy authentication required']);
}

/**
 * While the flow log cannot be written, refusals yield to real flows for the backlog's room: past
 * REFUSAL_RECORDS_HELD held records they are counted, not kept, or a flood of refused attempts
 * would push out the records of flows that carried traffic (reproduced: a tunnel's record lost
 * behind 487,000 refusals).
 */
function yieldRecordToFlows(ctx: GatewayContext, flow: Flow): void {
  if (ctx.isRefusingUnrecorded?.() === true && (ctx.flowLogBacklog?.() ?? 0) >= REFUSAL_RECORDS_HELD) flow.isRecordSkipped = true;
}

/**
 * A local lookup: `timely` is what admission waits for (null once the attributor's wait runs out),
 * `eventual` the lookup's own answer, the same unless it came after that.
 */
interface LocalLookup {
  readonly timely: Promise<ProcessInfo | null>;
  readonly eventual: Promise<ProcessInfo | null>;
}

/**
 * The local process behind a new flow's client. A UDP association is the process whose datagram
 * socket sends what is relayed (the relay accepts only that socket's address and port), looked up
 * in the udp tables; its TCP control connection, which must stay open for the association's life
 * (RFC 1928 §7) and is in practice the same process's, answers when that socket is not found.
 * Both lookups start in the same tick and share one batch of the attributor.
 */
function attributeLocally(attributor: ProcessAttributor, req: AdmissionRequest): LocalLookup {
  const { clientIp, clientPort } = req.claims;
  const isUdp = req.protocol === 'socks5-udp';
  const own = lookUpLocal(attributor, clientIp, clientPort, req.server.localAddress ?? '', req.server.localPort ?? 0, isUdp ? 'udp' : 'tcp');
  const control = isUdp && req.control ? req.control : null;
  if (control === null) return own;
  const viaControl = lookUpLocal(attributor, clientIp, control.clientPort, control.server.localAddress ?? '', control.server.localPort ?? 0, 'tcp');
  const either = ([p, c]: Array<ProcessInfo | null>): ProcessInfo | null => p ?? c ?? null;
  return { timely: Promise.all([own.timely, viaControl.timely]).then(either), eventual: Promise.all([own.eventual, viaControl.eventual]).then(either) };
}

function lookUpLocal(attributor: ProcessAttributor, clientIp: string, clientPort: number, serverIp: string, serverPort: number, proto: 'tcp' | 'udp'): LocalLookup {
  let settle: (p: ProcessInfo | null) => void = () => undefined;
  const eventual = new Promise<ProcessInfo | null>((resolve) => {
    settle = resolve;
  });
  const timely = attributor.attribute(clientIp, clientPort, serverIp, serverPort, proto, settle).catch(() => {
    settle(null);
    return null;
  });
  return { timely, eventual };
}

/** Wait for a local lookup as admission does, then name the flow's process (or let it come late). */
async function attachProcess(ctx: GatewayContext, flow: Flow, attribution: LocalLookup): Promise<void> {
  const process = await attribution.timely;
  if (process && flow.state === 'active') ctx.flows.attribute(flow.client.ip, flow.client.port, clientTransport(flow.protocol), process);
  else if (process === null) attributeWhenKnown(ctx, flow, attribution.eventual);
}

/**
 * A lookup that outlasted admission's wait still names the process when it ends (a /proc slowed by
 * descriptors held open must not hide a process): a live flow is attributed then and judged by the
 * detectors as on an agent report after the flow started (killed in enforce mode when they refuse
 * it; record `attributedLate`). A flow that ended meanwhile is recorded without its process: logged.
 */
function attributeWhenKnown(ctx: GatewayContext, flow: Flow, eventual: Promise<ProcessInfo | null>): void {
  void eventual.then((p) => {
    if (p === null || ctx.flows.attributeLate(flow, p) || flow.identity.process) return;
    if (flow.verdict !== 'block') ctx.log.warn({ flowId: flow.id, pid: p.pid, process: p.name }, 'local attribution came after the flow ended');
  });
}

/**
 * A dial (or the origin request) failed after admission: close the flow with the failure's code,
 * tell the detectors (failed connects feed scan detection), and return what the client must see.
 */
export function failFlow(ctx: GatewayContext, flow: Flow, err: unknown): RejectMapping {
  // Killed while it dialled (FlowTable.kill destroyed the connecting socket): its record is written,
  // with the kill's reason; the client hears what the kill means. Nothing failed at the destination.
  if (flow.state === 'closed') return mapKill(flow.closeReason ?? 'admin');
  const code: GatewayErrorCode = err instanceof GatewayError ? err.code : 'EGW_DIAL_UNREACHABLE';
  const mapping = mapError(code);
  // The gateway's own descriptors, local ports or socket memory ran out: no attempt reached the
  // destination, so the detectors see none (the flow closes as `out-of-descriptors` or
  // `out-of-sockets`, not a failed connect).
  if (isOwnShortage(code)) ctx.descriptors?.dialFailed(errnoOf(err));
  else ctx.detection?.onConnectFailed(flow);
  ctx.flows.close(flow, mapping.reason);
  return mapping;
}

/** The errno under a dial's GatewayError (EMFILE, ENFILE, EADDRNOTAVAIL, …), for the log. */
function errnoOf(err: unknown): string {
  const cause = (err as { cause?: { code?: unknown } } | null)?.cause;
  return typeof cause?.code === 'string' ? cause.code : 'unknown';
}

/** A flow killed while admission awaited (its record written by the kill): refused as the kill says. */
function killedMeanwhile(flow: RoutedFlow): Refused {
  return { ok: false, flow, reject: mapKill(flow.closeReason ?? 'admin'), isKilled: true };
}

function refuse(ctx: GatewayContext, flow: RoutedFlow, decision: Decision): Refused {
  if (flow.verdict === 'allow' && decision.verdict !== 'allow') ctx.flows.decide(flow, decision, decision.verdict === 'block');
  const reject = mapDecision(decision);
  if (decision.reason === 'not-allowlisted' || decision.reason === 'deny-range') ctx.detection?.onConnectFailed(flow);
  ctx.flows.close(flow, decision.reason);
  return { ok: false, flow, reject };
}

function refuseCode(ctx: GatewayContext, flow: RoutedFlow, code: GatewayErrorCode): Refused {
  const reject = mapError(code);
  if (code === 'EGW_DNS_FAILED') ctx.detection?.onConnectFailed(flow);
  ctx.flows.close(flow, reject.reason);
  return { ok: false, flow, reject };
}

function fixed(reason: Decision['reason'], detector: Decision['detector'], mode: Mode, reasons: readonly string[]): Decision {
  return { verdict: 'block', reason, detector, mode, matchedRule: null, reasons };
}

/** The parent proxy egress of `roles` goes through: the first of them that names one, else the top-level one (no array per flow). */
function upstreamOf(snapshot: PolicySnapshot, roles: readonly string[]): string | null {
  for (const r of roles) {
    const upstream = snapshot.config.roles[r]?.upstream;
    if (upstream) return upstream;
  }
  return snapshot.config.upstream;
}

/** What the policy decides on for a flow's destination. */
function factsOf(flow: Flow, protocol: Protocol, destHost: string, destPort: number, destIp: string | null): ConnectFacts {
  return { protocol, clientIp: flow.client.ip, clientPort: flow.client.port, identity: flow.identity, destHost, destPort, destIp };
}

/** The address of an IP literal or a `resolver.hosts` name, without DNS; null = look it up. */
function knownAddress(snapshot: PolicySnapshot, host: string): string | null {
  if (isIP(host)) return host;
  return snapshot.staticAddress(host) ?? null;
}

/**
 * DNS for admission: the address, or the error code a refusal names. Never throws. A SOCKS5 UDP
 * association looks its new destinations up side by side with this (when needsLookUp) and hands
 * each answer to `admit` or `admitDestination` (`lookedUp`).
 */
export async function lookUp(ctx: GatewayContext, host: string, requester: string): Promise<LookedUp> {
  let ips: string[];
  try {
    ips = await ctx.resolver.lookup(host, requester);
  } catch (err) {
    return { ip: null, alternates: NO_ALTERNATES, dnsError: err instanceof GatewayError ? err.code : 'EGW_DNS_FAILED' };
  }
  // Prefer IPv4 when both families answer: most egress paths are v4-first. The rest are dialled
  // staggered after it, families interleaved (dialOrder).
  const ip = ips.find((a) => isIPv4(a)) ?? (ips[0] as string);
  return { ip, alternates: ips.length > 1 ? dialOrder(ips, ip) : NO_ALTERNATES, dnsError: null };
}

/** What admission's wait for a lookup ends with when its flow is killed meanwhile (the answer is not used). */
const KILLED_LOOKUP: LookedUp = Object.freeze({ ip: null, alternates: NO_ALTERNATES, dnsError: null });

/** What admission's wait for a lookup ends with when the policy changed meanwhile (the lookup goes on). */
const POLICY_CHANGED: LookedUp = Object.freeze({ ip: null, alternates: NO_ALTERNATES, dnsError: null });

/**
 * Admission's wait for `lookup`, its flow's: a kill meanwhile (FlowTable.kill calls `flow.abort`)
 * ends the wait at once, so the client is answered what the kill means then, not when the lookup
 * ends: a name whose servers do not answer held it for `resolver.timeoutMs`, and at a drain's end
 * past the process's exit (a SOCKS5 client got no reply; an HTTP CONNECT held the exit). A reload
 * or mode switch (refuseLookupsAfterChange) ends it with POLICY_CHANGED, the flow still live. One
 * closure per looked-up flow (one more per change that woke it), registered only while the lookup
 * is under way.
 */
function lookUpUntilKilled(flow: RoutedFlow, lookup: Promise<LookedUp>): Promise<LookedUp> {
  return new Promise((resolve) => {
    const onKill = (): void => {
      flow.isLookingUp = false;
      resolve(flow.state === 'closed' ? KILLED_LOOKUP : POLICY_CHANGED);
    };
    flow.abort = onKill;
    flow.isLookingUp = true;
    void lookup.then((answer) => {
      if (flow.abort === onKill) {
        flow.abort = null;
        flow.isLookingUp = false;
      }
      resolve(answer);
    });
  });
}

/**
 * After a reload, push, rollback or mode switch: wake admission's wait of every flow whose name is
 * being looked up, so each is judged on the policy running now at once (a name it can no longer
 * admit refused then, unresolved), not when its lookup ends. O(live flows), once per change.
 */
export function refuseLookupsAfterChange(ctx: Pick<GatewayContext, 'flows'>): void {
  for (const flow of ctx.flows.activeFlows().values()) {
    if (flow.isLookingUp) flow.abort?.('policy-change');
  }
}

/**
 * The policy running now for a flow admission holds: its snapshot and override, and the flow's roles
 * under it (roles are the policy's: identity-resolver step 9) with the mode they give.
 */
function runningPolicy(ctx: GatewayContext, flow: RoutedFlow): { snapshot: PolicySnapshot; override: Mode | null; mode: Mode } {
  const snapshot = ctx.policy.current();
  const override = ctx.policy.modeOverride();
  const roles = snapshot.rolesFor(flow.identity.user, flow.identity.host);
  if (!sameRoles(roles, flow.identity.roles)) ctx.flows.setIdentity(flow, { ...flow.identity, roles });
  return { snapshot, override, mode: snapshot.modeFor(flow.identity.roles, override) };
}

function sameRoles(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}

/** Enforce mode's refusal before any lookup: a name no allow entry of the flow's roles can admit (step 4). */
function isRefusedUnresolved(snapshot: PolicySnapshot, mode: Mode, flow: Flow, host: string, port: number, protocol: Protocol): boolean {
  return mode === 'enforce' && knownAddress(snapshot, host) === null && !snapshot.mayAllowName(flow.identity.roles, host, port, protocol);
}

/**
 * Whether admission would look `host` up: not for an IP literal or a `resolver.hosts` name, nor (enforce
 * mode) for a name no allow entry of these roles can admit, which is refused unlooked-up (step 4).
 */
export function needsLookUp(ctx: GatewayContext, identity: Identity, protocol: Protocol, host: string, port: number): boolean {
  const snapshot = ctx.policy.current();
  if (knownAddress(snapshot, host) !== null) return false;
  const mode = snapshot.modeFor(identity.roles, ctx.policy.modeOverride());
  return mode !== 'enforce' || snapshot.mayAllowName(identity.roles, host, port, protocol);
}

/** How long a listing of this machine's interface addresses is used (DHCP and hot-plug change them). */
const LOCAL_ADDRESSES_MS = 60_000;
let localAddresses: Set<string> | null = null;
let localListedAt = Number.NEGATIVE_INFINITY;
let isListingWarned = false;

/**
 * This machine's own addresses, listed again after LOCAL_ADDRESSES_MS; null when they cannot be
 * listed (os.networkInterfaces() needs a netlink socket, which a sandbox may forbid): the callers
 * then take every address for a local one, so the self-dial guard fails closed.
 */
function localSet(): Set<string> | null {
  const now = Date.now();
  if (now - localListedAt < LOCAL_ADDRESSES_MS) return localAddresses;
  localListedAt = now;
  const set = new Set(['127.0.0.1', '::1', '0.0.0.0', '::']);
  try {
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) set.add(a.address);
    localAddresses = set;
  } catch (err) {
    localAddresses = null;
    if (!isListingWarned) {
      isListingWarned = true;
      process.emitWarning(
        `cannot list this machine's network addresses (${(err as Error).message}): every address on a port the gateway listens on with a wildcard listener is taken for the gateway's own and refused. Allow netlink sockets (systemd: RestrictAddressFamilies=… AF_NETLINK).`,
        { code: 'EGRESSGATE_NO_INTERFACES' },
      );
    }
  }
  return localAddresses;
}

/**
 * The address a dial to `ip` reaches, in the form listener addresses are written: an IPv4 address
 * carried in IPv6 (IPv4-mapped in any spelling, `::ffff:7f00:1` as much as `::ffff:127.0.0.1`; NAT64,
 * 6to4, Teredo, IPv4-compatible) as that IPv4 address, and the unspecified address as loopback
 * (Linux dials 0.0.0.0 as 127.0.0.1 and :: as ::1).
 */
function dialledForm(ip: string): string {
  const v4 = ip.includes(':') ? (effectiveIPv4(ip) ?? ip) : ip;
  if (v4 === '0.0.0.0') return '127.0.0.1';
  if (v4 === '::') return '::1';
  return v4;
}

/** Is this address one of this machine's own (loopback or an interface), in any spelling? */
export function isLocalAddress(ip: string): boolean {
  const bare = dialledForm(ip);
  if (bare.startsWith('127.')) return true;
  const local = localSet();
  return local === null || local.has(bare);
}

/** Ports of the gateway's own listeners, rebuilt when the set of listeners changes. */
let selfPorts: { from: ReadonlySet<string>; size: number; ports: Set<number> } | null = null;
function selfPortSet(addresses: ReadonlySet<string>): Set<number> {
  if (selfPorts === null || selfPorts.from !== addresses || selfPorts.size !== addresses.size) {
    const ports = new Set<number>();
    for (const a of addresses) ports.add(Number(a.slice(a.lastIndexOf(':') + 1)));
    selfPorts = { from: addresses, size: addresses.size, ports };
  }
  return selfPorts.ports;
}

/**
 * Step 6's refusal of a dial to the gateway itself (`selfKind`): block, deny-range, whatever the
 * mode, or null when `ip:port` is not the gateway's. The policy dry run (control-evaluate.ts) asks
 * the same of the running gateway, so its answer is the data plane's.
 */
export function selfDialDecision(ctx: Pick<GatewayContext, 'selfAddresses' | 'udpRelays'>, ip: string, port: number, protocol: Protocol, mode: Mode): Decision | null {
  const self = selfKind(ctx, ip, port, protocol);
  return self === null ? null : fixed('deny-range', 'policy.deny-range', mode, [`${ip}:${port} is ${self} of this gateway`]);
}

/**
 * Whether `ip:port` is the gateway's own, and what: one of its listeners, or (a UDP destination) the
 * relay socket of a live SOCKS5 UDP association, its own or another's. Sending there would loop
 * through the gateway, and a relay whose client on this host associated for any port would take the
 * datagram for its client's and relay it on under that client's identity. Null: not the gateway's.
 */
function selfKind(ctx: Pick<GatewayContext, 'selfAddresses' | 'udpRelays'>, ip: string, port: number, protocol: Protocol): 'a listener' | 'a UDP relay' | null {
  const isListenerPort = selfPortSet(ctx.selfAddresses).has(port);
  const isRelayPort = protocol === 'socks5-udp' && ctx.udpRelays.hasPort(port);
  // Most destinations are not on a port the gateway listens or relays on: no string building for those.
  if (!isListenerPort && !isRelayPort) return null;
  const bare = dialledForm(ip);
  // Relays are bound on the address their client reached (never a wildcard): that address only.
  if (isRelayPort && ctx.udpRelays.has(bare, port)) return 'a UDP relay';
  if (!isListenerPort) return null;
  const key = bare.includes(':') ? `[${bare}]:${port}` : `${bare}:${port}`;
  if (ctx.selfAddresses.has(key)) return 'a listener';
  // A listener on a wildcard address answers on every local address.
  return (ctx.selfAddresses.has(`0.0.0.0:${port}`) || ctx.selfAddresses.has(`[::]:${port}`)) && isLocalAddress(bare) ? 'a listener' : null;
}

/** The answer for one more destination of an already-open flow (see admitDestination). */
export type DestinationAdmission =
  | { ok: true; ip: string; decision: Decision; upstream: string | null }
  | { ok: false; decision: Decision | null; reject: RejectMapping; reason: string; ip: string | null };

/**
 * Admit one more destination for a flow that is already open — a SOCKS5 UDP association relays to
 * many destinations under one flow (added for gateway/listeners/socks5-udp.ts). Steps 5–8 of
 * `admit`: resolve once, never the gateway's own listeners, policy decide incl. deny-range, then
 * the connect-time detection for that destination (quarantine, proxyware, exfil tools, …; it also
 * counts towards the identity's fan-out). Opens and closes no flow; the caller caches the answer per
 * destination and marks the flow would-block when the answer says so. `lookedUp` is the name's DNS
 * answer when it was looked up ahead (`lookUp`). An admitted destination carries step 9's answer
 * under the policy running now, the parent proxy the identity's egress goes through (`upstream`).
 * Never throws.
 */
export async function admitDestination(ctx: GatewayContext, flow: RoutedFlow, destHost: string, destPort: number, lookedUp?: LookedUp): Promise<DestinationAdmission> {
  let snapshot = ctx.policy.current();
  let override = ctx.policy.modeOverride();
  let mode = snapshot.modeFor(flow.identity.roles, override);
  // As for a new flow: in enforce mode a name no allow entry can admit is refused unlooked-up.
  if (mode === 'enforce' && knownAddress(snapshot, destHost) === null && !snapshot.mayAllowName(flow.identity.roles, destHost, destPort, flow.protocol)) {
    const decision = snapshot.decide(factsOf(flow, flow.protocol, destHost, destPort, null), ctx.flows.now(), override);
    return { ok: false, decision, reject: mapDecision(decision), reason: decision.reasons.join('; '), ip: null };
  }
  let ip: string | null = knownAddress(snapshot, destHost);
  let dnsError: GatewayErrorCode | null = null;
  if (ip === null) ({ ip, dnsError } = lookedUp ?? (await lookUp(ctx, destHost, flow.client.ip)));
  // Judged on the policy running now: a reload or mode switch during the lookup applies (as in `admit`).
  if (ctx.policy.current() !== snapshot || ctx.policy.modeOverride() !== override) {
    snapshot = ctx.policy.current();
    override = ctx.policy.modeOverride();
    mode = snapshot.modeFor(flow.identity.roles, override);
  }
  const self = ip ? selfDialDecision(ctx, ip, destPort, flow.protocol, mode) : null;
  if (self !== null) return { ok: false, decision: self, reject: mapDecision(self), reason: self.reasons[0] as string, ip };
  const decision = snapshot.decide(factsOf(flow, flow.protocol, destHost, destPort, ip), ctx.flows.now(), override);
  if (decision.verdict === 'block') return { ok: false, decision, reject: mapDecision(decision), reason: decision.reasons.join('; '), ip };
  if (!ip) {
    const code = dnsError ?? 'EGW_DNS_FAILED';
    return { ok: false, decision: null, reject: mapError(code), reason: `${destHost} did not resolve (${code})`, ip: null };
  }
  // Step 8 for this destination: a later destination must not get past what a new flow would meet.
  // As for a new flow, not reached when policy refuses the destination (monitor mode's would-block).
  const found = decision.verdict === 'allow' ? (ctx.detection?.onDestination(flow, { host: destHost, ip, port: destPort }, snapshot, mode) ?? null) : null;
  if (found?.verdict === 'block') return { ok: false, decision: found, reject: mapDecision(found), reason: found.reasons.join('; '), ip };
  // Under the policy running now: a reload may have put the identity's egress through a parent.
  return { ok: true, ip, decision: found !== null && decision.verdict === 'allow' ? found : decision, upstream: upstreamOf(snapshot, flow.identity.roles) };
}
