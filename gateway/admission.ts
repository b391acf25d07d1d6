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
 * `admitAlternate` judges another address of an admitted flow's name; `admitDestination` one more
 * destination of an open SOCKS5 UDP association. Their parts are in gateway/admission/: types.ts,
 * refusals.ts, lookup.ts (step 5's DNS), local-attribution.ts (step 4), self-dial.ts (step 6),
 * policy-facts.ts (what the policy decides on).
 */
import { unmapIPv4 } from '../policy/address.ts';
import type { Decision, Identity, Mode, PolicySnapshot } from '../policy/types.ts';
import type { GatewayErrorCode } from './errors.ts';
import type { GatewayContext } from './context.ts';
import { attachProcess, attributeLocally, isLocalClient, type LocalLookup } from './admission/local-attribution.ts';
import { selfDialDecision } from './admission/self-dial.ts';
import { lookUp, lookUpUntilKilled, NO_ALTERNATES, POLICY_CHANGED } from './admission/lookup.ts';
import { factsOf, hostUnder, identityUnder, isRefusedUnresolved, knownAddress, runningPolicy, upstreamOf } from './admission/policy-facts.ts';
import {
  ANONYMOUS,
  DRAINING,
  gatewayRefusal,
  killedMeanwhile,
  limitRefusal,
  LOOPED,
  loginRefusal,
  lookupShortage,
  NO_CLIENT_ADDRESS,
  NO_FLOW_LOG,
  refuse,
  refuseCode,
  staleLoginRefusal,
  yieldRecordToFlows,
} from './admission/refusals.ts';
import { type AdmissionRequest, type Admitted, kAcceptedAt, type LookedUp, type Refused } from './admission/types.ts';
import { mapDecision, mapError, type RejectMapping } from './reject.ts';
import { isRouted, type RoutedFlow } from './flow/flow.ts';
import { parentName } from './upstream/parent-label.ts';
import { credentialsStand, loginStands } from './identity/login-standing.ts';

// The pipeline's parts, each in gateway/admission/; the listeners import them from here.
export type { AdmissionRequest, Admitted, ClientWatch, LocalEndpoint, LookedUp, Refused } from './admission/types.ts';
export { lookUp, needsLookUp, refuseLookupsAfterChange } from './admission/lookup.ts';
export { failFlow, gatewayRefusal, limitRefusal, REFUSAL_RECORDS_HELD, refuseLogin } from './admission/refusals.ts';
export { isLocalAddress, selfDialDecision } from './admission/self-dial.ts';
export { clientReached, isLocalClient } from './admission/local-attribution.ts';
export { type BalancedEndpoints, kAcceptedAt, kBalanced } from './admission/types.ts';

/** Run the connect-time pipeline for one new flow. Never throws. */
export async function admit(ctx: GatewayContext, req: AdmissionRequest): Promise<Admitted | Refused> {
  // Re-read after each wait below: a reload or mode switch meanwhile judges the flow (runningPolicy).
  let snapshot = ctx.policy.current();
  let override = ctx.policy.modeOverride();
  // 1. identify
  // One resolved before (a SOCKS5 login ahead of its request, a UDP association's) has the running
  // policy's roles, if the running policy still admits its login.
  let identity = req.identity === undefined ? undefined : identityUnder(snapshot, req.identity, hostUnder(ctx, snapshot, req.identity, req.claims.clientIp, req.loginSince));
  let isLoginStale = req.loginSince !== undefined && !loginStands(req.claims.username ?? null, req.loginSince, snapshot);
  let authFailed = isLoginStale;
  /** The policy the claims' credentials (HTTP Basic, a signed token) were checked under here. */
  let checkedUnder: PolicySnapshot | null = null;
  // The policy whose identity.hosts gave the identity its host (re-derived under a later one:
  // runningPolicy); null when a claim named it. One resolved before got it from the running one (above).
  let hostFrom: PolicySnapshot | null = snapshot;
  if (isLoginStale) identity = { ...ANONYMOUS, roles: snapshot.rolesFor(null, null) };
  else if (!identity) {
    const result = await ctx.identity.resolve(req.claims, snapshot);
    if (result.ok) {
      identity = result.identity;
      checkedUnder = snapshot;
      if (result.hostFromInventory !== true) hostFrom = null;
    } else {
      identity = { ...ANONYMOUS, roles: snapshot.rolesFor(null, null) };
      authFailed = true;
    }
    // Admitted or refused (requireAuth found no credentials): the log shows every spoof attempt counted.
    if (result.spoofAttempt) ctx.log.warn({ client: req.claims.clientIp, header: result.spoofAttempt }, 'identity header from untrusted source ignored');
  }
  if (req.knownProcess && !identity.process) identity = { ...identity, process: req.knownProcess };
  // A reload or mode switch while the identity was resolved (a slow scrypt check of HTTP Basic
  // credentials): the flow is opened, held to its limits and judged under the running policy, with
  // the roles (and the `identity.hosts` host) it gives, as a new connection's would be.
  if (ctx.policy.current() !== snapshot || ctx.policy.modeOverride() !== override) {
    snapshot = ctx.policy.current();
    override = ctx.policy.modeOverride();
    // A password checked against a user the running policy removed or re-passworded, or a token
    // verified with a secret it replaced, admits no more than a SOCKS5 login's does
    // (login-standing.ts): refused as a new connection's would be. Not a trusted header's or a
    // certificate's identity: those are not checked against credentials of the policy.
    if (checkedUnder !== null && !credentialsStand(req.claims, checkedUnder, snapshot)) {
      isLoginStale = authFailed = true;
      identity = { ...ANONYMOUS, roles: snapshot.rolesFor(null, null), process: identity.process };
    } else if (hostFrom !== null) {
      identity = identityUnder(snapshot, identity, hostUnder(ctx, snapshot, identity, unmapIPv4(req.claims.clientIp), hostFrom));
      hostFrom = snapshot;
    } else identity = identityUnder(snapshot, identity);
  }
  // 2. open
  const flow = ctx.flows.open({
    protocol: req.protocol,
    listener: req.listener,
    // A dual-stack listener's IPv4 client as plain IPv4: the form agent reports and records use.
    client: { ip: unmapIPv4(req.claims.clientIp), port: req.claims.clientPort },
    identity,
    destination: { host: req.destHost, ip: null, port: req.destPort },
    controlPort: req.control?.clientPort,
    // A UDP association's client connection is its control connection (its relay is bound after it).
    connectedAt: (req.control?.server ?? req.server)[kAcceptedAt],
    // What tells its socket from another live one at the same client address and port (a report's remote end).
    endpoint: req.server,
    controlEndpoint: req.control?.server,
  });
  if (req.watch !== undefined) req.watch.flow = flow;
  let mode = snapshot.modeFor(identity.roles, override);
  // A client without an address (reset before it was accepted) cannot be identified: never judged.
  // The gateway's own refusals before any judgement are recorded as the rate limit's are (block,
  // enforced, in every mode: gatewayRefusal), so a log filtered for what was refused finds them.
  if (req.claims.clientIp === '') return refuse(ctx, flow, gatewayRefusal('bad-request', mode, NO_CLIENT_ADDRESS));
  if (authFailed) {
    yieldRecordToFlows(ctx, flow);
    return refuse(ctx, flow, isLoginStale ? staleLoginRefusal(mode) : loginRefusal(mode));
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
    const r = refuse(ctx, flow, limitRefusal(mode, ['per-identity flow limit exceeded']));
    r.retryAfterSec = ctx.flows.retryAfterSec(flow, limits.maxNewFlowsPerSecPerIdentity);
    return r;
  }
  // 4. local attribution, in parallel with resolution
  const attribution =
    ctx.attributor && !flow.identity.process && snapshot.config.identity.localAttribution && isLocalClient(req.claims.clientIp, req.control?.server ?? req.server)
      ? attributeLocally(ctx.attributor, req)
      : null;
  // In enforce mode a name no allow entry of these roles can admit is refused before it is looked
  // up: the lookup would carry the name out (a DNS tunnel through the gateway's own resolver). The
  // refusal still names the local process that tried (who asked for a forbidden name is the point).
  if (isRefusedUnresolved(snapshot, mode, flow, req.destHost, req.destPort, req.protocol)) return refuseUnresolved(ctx, flow, req, attribution, snapshot, override);
  // 5. resolution: an IP literal or a `resolver.hosts` entry needs no lookup (and no await).
  let ip: string | null = knownAddress(snapshot, req.destHost);
  let alternates = NO_ALTERNATES;
  let dnsError: GatewayErrorCode | null = null;
  let shortage: string | undefined;
  if (ip === null && req.lookedUp !== undefined) ({ ip, alternates, dnsError, shortage } = req.lookedUp);
  else if (ip === null) {
    const lookup = lookUp(ctx, req.destHost, flow.client.ip);
    let answer = await lookUpUntilKilled(flow, lookup);
    // A reload or mode switch while it was looked up (refuseLookupsAfterChange woke the wait): a name
    // the running policy can no longer admit is refused now, as a new flow's would be, unresolved
    // (its process named too).
    while (answer === POLICY_CHANGED && flow.state !== 'closed') {
      ({ snapshot, override, mode } = runningPolicy(ctx, flow, hostFrom));
      if (hostFrom !== null) hostFrom = snapshot;
      if (isRefusedUnresolved(snapshot, mode, flow, req.destHost, req.destPort, req.protocol)) return refuseUnresolved(ctx, flow, req, attribution, snapshot, override);
      answer = await lookUpUntilKilled(flow, lookup);
    }
    ({ ip, alternates, dnsError, shortage } = answer);
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
    ({ snapshot, override, mode } = runningPolicy(ctx, flow, hostFrom));
    const known = knownAddress(snapshot, req.destHost);
    if (known !== null) ({ ip, alternates, dnsError } = { ip: known, alternates: NO_ALTERNATES, dnsError: null });
  }
  if (ip === null && dnsError === 'EGW_OUT_OF_DESCRIPTORS') return refuse(ctx, flow, lookupShortage(ctx, req.destHost, mode, shortage));
  if (ip) ctx.flows.setDestinationIp(flow, ip);
  // 6. self-dial
  const self = ip ? selfDialDecision(ctx, ip, req.destPort, req.protocol, mode) : null;
  if (self !== null) return refuse(ctx, flow, self);
  // 7. policy
  const decision = snapshot.decide(factsOf(flow, req.protocol, req.destHost, req.destPort, ip), ctx.flows.now(), override);
  ctx.flows.decide(flow, decision, decision.verdict === 'block');
  if (decision.verdict === 'block') return refuse(ctx, flow, decision);
  if (!ip) return refuseCode(ctx, flow, dnsError ?? 'EGW_DNS_FAILED');
  // A name's addresses that lately did not answer a dial on this port go after the others
  // (unanswered.ts): a first address among them gives way to the next one the flow may go on to,
  // judged as admitAlternate judges. A UDP destination is not dialled: its order stays.
  if (alternates.length > 0 && ctx.unanswered !== undefined && ctx.unanswered.size > 0 && req.protocol !== 'socks5-udp') {
    const order = ctx.unanswered.reorder(ip, alternates, req.destPort, (other) => mayGoOnTo(ctx, flow, snapshot, other));
    if (order !== null) {
      ({ ip, alternates } = order);
      ctx.flows.setDestinationIp(flow, ip);
    }
  }
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
 * A refusal of a name in enforce mode, unresolved (no allow entry of the roles can admit it: before
 * its lookup, or after a reload or mode switch during it). It waits for the local attribution first,
 * so the record names the process that asked for the name; a flow killed meanwhile is answered as
 * such. A function of its own: `flow.state` is not narrowed by the caller's checks here.
 */
async function refuseUnresolved(
  ctx: GatewayContext,
  flow: RoutedFlow,
  req: AdmissionRequest,
  attribution: LocalLookup | null,
  snapshot: PolicySnapshot,
  override: Mode | null,
): Promise<Refused> {
  if (attribution) await attachProcess(ctx, flow, attribution);
  if (flow.state === 'closed') return killedMeanwhile(flow);
  return refuse(ctx, flow, snapshot.decide(factsOf(flow, req.protocol, req.destHost, req.destPort, null), ctx.flows.now(), override));
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
  if (!isOutcome && !mayGoOnTo(ctx, flow, snapshot, ip)) return false;
  if (flow.destination.ip !== ip) ctx.flows.setDestinationIp(flow, ip);
  return true;
}

/** admitAlternate's judgement of `ip` for a flow decided on `snapshot`: true when it may be dialled. */
function mayGoOnTo(ctx: GatewayContext, flow: RoutedFlow, snapshot: PolicySnapshot, ip: string): boolean {
  const override = ctx.policy.modeOverride();
  const mode = snapshot.modeFor(flow.identity.roles, override);
  if (selfDialDecision(ctx, ip, flow.destination.port, flow.protocol, mode) !== null) return false;
  const decision = snapshot.decide(factsOf(flow, flow.protocol, flow.destination.host, flow.destination.port, ip), ctx.flows.now(), override);
  return !(decision.verdict === 'block' || (decision.verdict !== 'allow' && flow.verdict === 'allow'));
}

/**
 * After a reload, push, rollback or mode switch: every flow admitted but still being dialled (its
 * connection, or its parent's handshake, under way; its client not answered yet, so not established)
 * is judged again on the policy running now, as one whose name is being looked up is: with the roles
 * the running policy gives its user and host, on the address admission chose. One the running policy
 * refuses (`block`: monitor mode switched to enforce, an allow entry removed) is killed with that
 * refusal: its dial abandoned, its client answered as at admission (403 with the reason and
 * `X-Egress-Verdict: block` / SOCKS `0x02`), its one record verdict block, enforced. Any other goes
 * on as admitted (its record keeps admission's word). A flow monitor mode let through `would-block`
 * by admission's step 8 (a quarantine, a connect-time detector), which the running policy allows and
 * puts in enforce mode, meets step 8 as enforce mode runs it (onEnforcedWhileDialled): an enforced
 * quarantine refuses it (`quarantine`), monitor mode's would-be one does not (it refuses nothing
 * after the switch); a refusing connect-time detector does (its name), alerted `block`, the identity
 * quarantined. A SOCKS5 UDP association dials nothing: its destinations are judged again at their
 * next datagram. O(live flows), once per change; nothing per connection.
 */
export function refuseDialsAfterChange(ctx: GatewayContext): void {
  const snapshot = ctx.policy.current();
  const override = ctx.policy.modeOverride();
  for (const flow of ctx.flows.activeFlows().values()) {
    if (flow.dialling === null || flow.isConnected || flow.verdict === 'block' || !isRouted(flow)) continue;
    const { host, ip, port } = flow.destination;
    const facts = factsOf(flow, flow.protocol, host, port, ip, identityUnder(snapshot, flow.identity));
    let decision: Decision | null = snapshot.decide(facts, ctx.flows.now(), override);
    if (decision.verdict === 'allow' && decision.mode === 'enforce' && flow.verdict === 'would-block' && (flow.reason === 'quarantine' || flow.reason === 'detector')) {
      decision = ctx.detection?.onEnforcedWhileDialled(flow, facts, snapshot, decision.matchedRule) ?? null;
    }
    if (decision?.verdict !== 'block') continue;
    // Admission's word, not a detector's on an established flow (redecide): its client hears this
    // refusal, and gw_policy_decisions_total counts it as the record says (stats.ts isVerdictFinal).
    ctx.flows.decide(flow, decision, true);
    // A detector's refusal is killed with its name, as a late agent report's kill is: closeReason
    // `an0081.proxyware` …, the client answered as at admission (403 / 0x02 naming the detector).
    // Not the record admission writes: a refusal there closes with the decision's reason, `detector`
    // (refusals.ts refuse). Both documented in docs/spec-notes.md; SPEC §5 names no closeReason values.
    ctx.flows.kill(flow.id, decision.reason === 'detector' && decision.detector !== null ? decision.detector : decision.reason);
  }
}

/** A SOCKS5 login (RFC 1929 user, null for "no authentication") and the policy it was made under. */
export interface SocksLogin {
  readonly username: string | null;
  readonly since: PolicySnapshot;
}

/** The answer for one more destination of an already-open flow (see admitDestination). */
export type DestinationAdmission =
  | { ok: true; ip: string; decision: Decision; upstream: string | null; identity: Identity }
  | { ok: false; decision: Decision | null; reject: RejectMapping; reason: string; ip: string | null; identity: Identity };

/**
 * Admit one more destination for a flow that is already open — a SOCKS5 UDP association relays to
 * many destinations under one flow (added for gateway/listeners/socks5-udp.ts). Steps 5–8 of
 * `admit`: resolve once, never the gateway's own listeners, policy decide incl. deny-range, then
 * the connect-time detection for that destination (quarantine, proxyware, exfil tools, …; it also
 * counts towards the identity's fan-out). Opens and closes no flow; the caller caches the answer per
 * destination and marks the flow would-block when the answer says so. `lookedUp` is the name's DNS
 * answer when it was looked up ahead (`lookUp`). An admitted destination carries step 9's answer
 * under the policy running now, the parent proxy the identity's egress goes through (`upstream`).
 * `identity` is the one it was judged as: the flow's user and host with the running policy's roles.
 * `login`: the association's; one the running policy no longer admits is refused `auth-required`.
 * Never throws.
 */
export async function admitDestination(
  ctx: GatewayContext,
  flow: RoutedFlow,
  destHost: string,
  destPort: number,
  lookedUp?: LookedUp,
  login?: SocksLogin,
): Promise<DestinationAdmission> {
  let snapshot = ctx.policy.current();
  let override = ctx.policy.modeOverride();
  if (login !== undefined && !loginStands(login.username, login.since, snapshot)) {
    // Refused as a new connection with that login would be: before any lookup, in every mode.
    const anonymous = { ...ANONYMOUS, roles: snapshot.rolesFor(null, null) };
    const decision = staleLoginRefusal(snapshot.modeFor(anonymous.roles, override));
    return { ok: false, decision, reject: mapDecision(decision), reason: decision.reasons.join('; '), ip: null, identity: anonymous };
  }
  // The running policy's roles, as a new connection of the same user and host would have: the
  // association's were those of the policy it opened under.
  let identity = identityUnder(snapshot, flow.identity, hostUnder(ctx, snapshot, flow.identity, flow.client.ip, login?.since));
  let mode = snapshot.modeFor(identity.roles, override);
  // As for a new flow: in enforce mode a name no allow entry can admit is refused unlooked-up.
  if (mode === 'enforce' && knownAddress(snapshot, destHost) === null && !snapshot.mayAllowName(identity.roles, destHost, destPort, flow.protocol)) {
    const decision = snapshot.decide(factsOf(flow, flow.protocol, destHost, destPort, null, identity), ctx.flows.now(), override);
    return { ok: false, decision, reject: mapDecision(decision), reason: decision.reasons.join('; '), ip: null, identity };
  }
  let ip: string | null = knownAddress(snapshot, destHost);
  let dnsError: GatewayErrorCode | null = null;
  let shortage: string | undefined;
  if (ip === null) ({ ip, dnsError, shortage } = lookedUp ?? (await lookUp(ctx, destHost, flow.client.ip)));
  // Judged on the policy running now: a reload or mode switch during the lookup applies (as in `admit`).
  if (ctx.policy.current() !== snapshot || ctx.policy.modeOverride() !== override) {
    snapshot = ctx.policy.current();
    override = ctx.policy.modeOverride();
    identity = identityUnder(snapshot, flow.identity, hostUnder(ctx, snapshot, flow.identity, flow.client.ip, login?.since));
    mode = snapshot.modeFor(identity.roles, override);
  }
  if (ip === null && dnsError === 'EGW_OUT_OF_DESCRIPTORS') {
    const decision = lookupShortage(ctx, destHost, mode, shortage);
    return { ok: false, decision, reject: mapDecision(decision), reason: decision.reasons.join('; '), ip: null, identity };
  }
  const self = ip ? selfDialDecision(ctx, ip, destPort, flow.protocol, mode) : null;
  if (self !== null) return { ok: false, decision: self, reject: mapDecision(self), reason: self.reasons[0] as string, ip, identity };
  const decision = snapshot.decide(factsOf(flow, flow.protocol, destHost, destPort, ip, identity), ctx.flows.now(), override);
  if (decision.verdict === 'block') return { ok: false, decision, reject: mapDecision(decision), reason: decision.reasons.join('; '), ip, identity };
  if (!ip) {
    // The policy's word on the name stays its record's (allow, or monitor mode's would-block), as a
    // new flow's does when its lookup fails (refuseCode after step 7).
    const code = dnsError ?? 'EGW_DNS_FAILED';
    return { ok: false, decision, reject: mapError(code), reason: `${destHost} did not resolve (${code})`, ip: null, identity };
  }
  // Step 8 for this destination: a later destination must not get past what a new flow would meet.
  // As for a new flow, not reached when policy refuses the destination (monitor mode's would-block).
  const found = decision.verdict === 'allow' ? (ctx.detection?.onDestination(flow, { host: destHost, ip, port: destPort }, snapshot, mode, decision.matchedRule) ?? null) : null;
  if (found?.verdict === 'block') return { ok: false, decision: found, reject: mapDecision(found), reason: found.reasons.join('; '), ip, identity };
  // Under the policy running now: a reload may have put the identity's egress through a parent.
  return { ok: true, ip, decision: found !== null && decision.verdict === 'allow' ? found : decision, upstream: upstreamOf(snapshot, identity.roles), identity };
}
