/**
 * Admission's step 4: the local process behind a new flow's client (clients on the gateway's own
 * host), looked up in parallel with the name and attached to the flow, or to it later when the
 * lookup outlasts admission's wait.
 */
import type { ProcessInfo } from '../../policy/types.ts';
import type { GatewayContext, ProcessAttributor } from '../context.ts';
import type { Flow } from '../flow/flow.ts';
import { clientTransport } from '../flow/flow-table.ts';
import { isLocalAddress } from './self-dial.ts';
import { type AdmissionRequest, clientReached, kBalanced, type LocalEndpoint } from './types.ts';

export { clientReached };

/**
 * A local lookup: `timely` is what admission waits for (null once the attributor's wait runs out),
 * `eventual` the lookup's own answer, the same unless it came after that.
 */
export interface LocalLookup {
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
export function attributeLocally(attributor: ProcessAttributor, req: AdmissionRequest): LocalLookup {
  const { clientIp, clientPort } = req.claims;
  const isUdp = req.protocol === 'socks5-udp';
  const reached = clientReached(req.server);
  const own = lookUpLocal(attributor, clientIp, clientPort, reached.ip, reached.port, isUdp ? 'udp' : 'tcp');
  const control = isUdp && req.control ? req.control : null;
  if (control === null) return own;
  const controlReached = clientReached(control.server);
  const viaControl = lookUpLocal(attributor, clientIp, control.clientPort, controlReached.ip, controlReached.port, 'tcp');
  const either = ([p, c]: Array<ProcessInfo | null>): ProcessInfo | null => p ?? c ?? null;
  return { timely: Promise.all([own.timely, viaControl.timely]).then(either), eventual: Promise.all([own.eventual, viaControl.eventual]).then(either) };
}

/**
 * Whether the client at `clientIp` is on the gateway's own host, its process to be looked up here.
 * `server` is its TCP connection to us (a UDP association's control connection): a client a
 * balancer named by PROXY header is ours only when the balancer is on this host too, since a
 * loopback or other local-looking address from another host's balancer is that host's.
 */
export function isLocalClient(clientIp: string, server: LocalEndpoint): boolean {
  const balanced = server[kBalanced];
  return isLocalAddress(clientIp) && (balanced === undefined || isLocalAddress(balanced.balancerIp));
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
export async function attachProcess(ctx: GatewayContext, flow: Flow, attribution: LocalLookup): Promise<void> {
  const process = await attribution.timely;
  if (process && flow.state === 'active') {
    // An agent report may have named the flow first (kept: SPEC §7, the first to name it stands).
    const kept = ctx.flows.attribute(flow.client.ip, flow.client.port, clientTransport(flow.protocol), process, null, flow.endpoint === null ? null : clientReached(flow.endpoint))?.identity.process;
    if (kept && kept !== process && (kept.pid !== process.pid || kept.name !== process.name)) {
      ctx.log.warn({ flowId: flow.id, kept: { pid: kept.pid, name: kept.name, source: kept.source ?? null }, local: { pid: process.pid, name: process.name } }, 'local attribution names another process than the live flow already has: kept the first');
    }
  } else if (process === null) attributeWhenKnown(ctx, flow, attribution.eventual);
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
