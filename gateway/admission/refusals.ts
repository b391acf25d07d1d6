/**
 * Admission's refusals and failures: a refused flow is closed with its reason, and the caller gets
 * what the client must see (reject.ts). The gateway's own refusals before any judgement, a login
 * refused before a destination was named, a dial that failed after admission, a flow killed while
 * admission awaited.
 */
import { unmapIPv4 } from '../../policy/address.ts';
import type { Decision, GatewayRefusalReason, Identity, Mode, Protocol } from '../../policy/types.ts';
import type { GatewayContext } from '../context.ts';
import { errnoOf, GatewayError, type GatewayErrorCode, isOwnShortage } from '../errors.ts';
import type { Flow, RoutedFlow, UnknownDestination } from '../flow/flow.ts';
import { mapDecision, mapError, mapKill, type RejectMapping } from '../reject.ts';
import type { AdmissionRequest, Refused } from './types.ts';

/** Records the flow log may hold before refusals for want of it are counted instead of recorded. */
export const REFUSAL_RECORDS_HELD = 10_000;

export const ANONYMOUS: Identity = Object.freeze({ user: null, host: null, roles: Object.freeze([]) as readonly string[], process: null });

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

export const NO_CLIENT_ADDRESS: readonly string[] = Object.freeze(['the client connection has no address (reset before it was accepted)']);
export const DRAINING: readonly string[] = Object.freeze(['the gateway is draining: no new flows']);
export const LOOPED: readonly string[] = Object.freeze(['the request\'s Via names this gateway: it came back round a loop of proxies']);
export const NO_FLOW_LOG: readonly string[] = Object.freeze(['the flow log cannot be written (flowLog.onError: refuse)']);

/**
 * A refusal the gateway makes itself before the policy judged the flow (policy/types.ts
 * GATEWAY_REFUSAL_REASONS): recorded as the rate limit's is, verdict block and enforced in every
 * mode (nothing was let through), no detector, no matched rule; `reasons` say why.
 */
export function gatewayRefusal(reason: GatewayRefusalReason, mode: Mode, reasons: readonly string[]): Decision {
  return fixed(reason, null, mode, reasons);
}

/**
 * A name whose lookup failed for want of the gateway's own file descriptors (resolve.ts): no address
 * to judge it by and nothing the name's servers said, so no policy refusal and no failed connect for
 * the detectors; refused 503 `out-of-descriptors` (SOCKS5 0x01) as the gateway's own, and logged
 * with the dials that failed so (once per ten seconds), under the errno the lookup's probe saw
 * (`errno`: EMFILE, or ENFILE when the system's table is full).
 */
export function lookupShortage(ctx: Pick<GatewayContext, 'descriptors'>, host: string, mode: Mode, errno: string | undefined): Decision {
  ctx.descriptors?.dialFailed(errno ?? 'EMFILE');
  return gatewayRefusal('out-of-descriptors', mode, [`lookup of ${host} failed: the gateway is out of file descriptors`]);
}

/** Over the identity's limits (limits.maxFlowsPerIdentity, maxNewFlowsPerSecPerIdentity): refused in every mode. */
export function limitRefusal(mode: Mode, reasons: readonly string[]): Decision {
  return fixed('rate-limit', null, mode, reasons);
}

/** Wrong or missing credentials: refused in every mode (they protect the gateway, not the policy). */
export function loginRefusal(mode: Mode): Decision {
  return fixed('auth-required', 'policy.deny', mode, ['proxy authentication required']);
}

/**
 * A login the running policy no longer admits (login-standing.ts): a SOCKS5 connection's, or an
 * HTTP request's Basic credentials or signed token checked across a reload that removed the user,
 * changed the password or replaced the token's secret. Refused as a missing login is, with a reason
 * that says the login was made under an earlier policy.
 */
export function staleLoginRefusal(mode: Mode): Decision {
  return fixed('auth-required', 'policy.deny', mode, STALE_LOGIN);
}

const STALE_LOGIN: readonly string[] = Object.freeze([
  'proxy authentication required: this login was checked under an earlier policy, which the running one no longer admits (requireAuth on, the user\'s password changed or removed, or the signed-token settings changed)',
]);

/**
 * While the flow log cannot be written, refusals yield to real flows for the backlog's room: past
 * REFUSAL_RECORDS_HELD held records they are counted, not kept, or a flood of refused attempts
 * would push out the records of flows that carried traffic (reproduced: a tunnel's record lost
 * behind 487,000 refusals).
 */
export function yieldRecordToFlows(ctx: GatewayContext, flow: Flow): void {
  if (ctx.isRefusingUnrecorded?.() === true && (ctx.flowLogBacklog?.() ?? 0) >= REFUSAL_RECORDS_HELD) flow.isRecordSkipped = true;
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

/** A flow killed while admission awaited (its record written by the kill): refused as the kill says. */
export function killedMeanwhile(flow: RoutedFlow): Refused {
  return { ok: false, flow, reject: mapKill(flow.closeReason ?? 'admin'), isKilled: true };
}

export function refuse(ctx: GatewayContext, flow: RoutedFlow, decision: Decision): Refused {
  if (flow.verdict === 'allow' && decision.verdict !== 'allow') ctx.flows.decide(flow, decision, decision.verdict === 'block');
  const reject = mapDecision(decision);
  if (decision.reason === 'not-allowlisted' || decision.reason === 'deny-range') ctx.detection?.onConnectFailed(flow);
  ctx.flows.close(flow, decision.reason);
  return { ok: false, flow, reject };
}

export function refuseCode(ctx: GatewayContext, flow: RoutedFlow, code: GatewayErrorCode): Refused {
  const reject = mapError(code);
  if (code === 'EGW_DNS_FAILED') ctx.detection?.onConnectFailed(flow);
  ctx.flows.close(flow, reject.reason);
  return { ok: false, flow, reject };
}

export function fixed(reason: Decision['reason'], detector: Decision['detector'], mode: Mode, reasons: readonly string[]): Decision {
  return { verdict: 'block', reason, detector, mode, matchedRule: null, reasons };
}
