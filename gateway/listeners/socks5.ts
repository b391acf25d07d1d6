/**
 * The SOCKS5 listener (RFC 1928 CONNECT and UDP ASSOCIATE; RFC 1929 username/password).
 *
 * Flow of a connection:
 *  1. accept: a permanent no-op 'error' listener (a reset mid-handshake must never crash us)
 *  2. handshake (socks5-handshake.ts): greeting → method → RFC 1929 auth (identity resolved here)
 *     → request; bounded by limits.headerTimeoutMs and a byte cap; bad bytes → reply + close + warn
 *  3. BIND / unknown command → 0x07, unknown ATYP → 0x08 (the codec's coded errors, via reject.ts)
 *  4. CONNECT: admit (gateway/admission.ts: limits → identity → resolve → policy incl. deny-range →
 *     self-dial → detection hooks) → refused: the mapped reply byte, the flow already closed
 *  5. dial exactly the checked address (or the parent proxy) within limits.connectTimeoutMs →
 *     failure: the mapped reply byte (0x04 / 0x05 / 0x06 / 0x01), flow closed by failFlow
 *  6. success reply carrying the upstream socket's bound address, then the metered tunnel
 *     (gateway/flow/tunnel.ts) closes the flow with one canonical record
 *  7. UDP ASSOCIATE: the relay (socks5-udp.ts), one flow per association
 */
import { Server, type Socket } from 'node:net';
import { admit, admitAlternate, type ClientWatch, failFlow } from '../admission.ts';
import type { GatewayContext } from '../context.ts';
import { tunnel } from '../flow/tunnel.ts';
import { formatAuthority } from '../protocol/authority.ts';
import { encodeReply } from '../protocol/socks5-codec.ts';
import { isShortage, SOCKS_REP } from '../reject.ts';
import { dialFirstReachable } from '../upstream/dial.ts';
import { type Downstream, type HandshakeResult, refuse, runHandshake } from './socks5-handshake.ts';
import { startUdpAssociation } from './socks5-udp.ts';
import { UdpRelayLedger } from './socks5-udp-ledger.ts';
import { UdpRelayPorts } from './socks5-udp-ports.ts';
import { SlotArray } from '../slot-array.ts';

/** A socket's slot in SocksServer's list and what close() does to it (no Map refers to the socket). */
const kSlot = Symbol('egressgate.flowlessSlot');
const kCloser = Symbol('egressgate.flowlessCloser');
/** True while the drain's start leaves the connection open (a handshake under way): closeAllConnections() ends it. */
const kIsHeld = Symbol('egressgate.flowlessHeld');
type TrackedSocket = Socket & { [kSlot]?: number; [kCloser]?: () => void; [kIsHeld]?: boolean };

/**
 * The SOCKS5 server. `close()` stops accepting and also ends every connection that carries no flow
 * and is not held (one that has sent nothing yet, dialling, a UDP association that has relayed
 * nothing): those would otherwise hold a draining gateway for up to limits.headerTimeoutMs /
 * idleTimeoutMs. A handshake under way is held: its request may still come during the drain, and is
 * answered 0x01 and recorded `shutting-down` (admission, as HTTP's 503), as an HTTP request whose
 * head had begun is answered; `closeAllConnections()` (the drain's end) closes what is left.
 * Connections with a flow are drained through the FlowTable (kill → flow.abort).
 */
export class SocksServer extends Server {
  /** The connections without a flow (a SlotArray, not a Set: see gateway/slot-array.ts). */
  private readonly flowless = new SlotArray<TrackedSocket>();
  /** What this listener's UDP associations share: held bytes under one cap, drop counts (metrics). */
  readonly udp: UdpRelayLedger;
  /** Which port each UDP association's relay gets (limits.udpRelayPorts), and its refusals' log. */
  readonly relayPorts: UdpRelayPorts;

  constructor(options: ConstructorParameters<typeof Server>[0], listener: (socket: Socket) => void, udp: UdpRelayLedger, relayPorts: UdpRelayPorts) {
    super(options, listener);
    this.udp = udp;
    this.relayPorts = relayPorts;
  }

  /**
   * Register (or, with null, release) what closing the listener does to a connection without a flow;
   * `isHeld`: not at close() but at closeAllConnections() (a handshake under way).
   */
  setCloser(socket: Socket, closer: (() => void) | null, isHeld = false): void {
    const tracked = socket as TrackedSocket;
    if (closer === null || socket.destroyed) {
      this.flowless.remove(tracked[kSlot] ?? -1, tracked);
      tracked[kSlot] = -1;
      tracked[kCloser] = undefined;
      return;
    }
    tracked[kCloser] = closer;
    tracked[kIsHeld] = isHeld;
    if ((tracked[kSlot] ?? -1) < 0) tracked[kSlot] = this.flowless.add(tracked);
  }

  override close(callback?: (err?: Error) => void): this {
    super.close(callback);
    this.endFlowless(false);
    return this;
  }

  /** The drain's end: close the connections close() held (handshakes whose request never came). */
  closeAllConnections(): void {
    this.endFlowless(true);
  }

  private endFlowless(withHeld: boolean): void {
    const closers: Array<() => void> = [];
    for (const socket of [...this.flowless.values()]) {
      const end = socket[kCloser];
      if (socket[kIsHeld] === true && !withHeld) continue;
      this.setCloser(socket, null);
      if (end) closers.push(end);
    }
    for (const end of closers) end();
  }
}

export interface SocksServerOptions {
  /** Bytes all UDP associations together may hold for destinations being admitted (a seam for tests). */
  udpHeldBytes?: number;
}

/** Create the SOCKS5 server; the composition root (main.ts) listens on it. */
export function createSocksServer(ctx: GatewayContext, opts: SocksServerOptions = {}): SocksServer {
  const server: SocksServer = new SocksServer(
    { allowHalfOpen: true, noDelay: true, pauseOnConnect: false },
    (socket) => accept(ctx, server, socket),
    new UdpRelayLedger(opts.udpHeldBytes),
    new UdpRelayPorts(ctx.log),
  );
  return server;
}

function accept(ctx: GatewayContext, server: SocksServer, socket: Socket): void {
  // 1. Errors are followed by 'close', where every owner of this socket cleans up.
  socket.on('error', ignore);
  const clientIp = socket.remoteAddress;
  const clientPort = socket.remotePort;
  if (clientIp === undefined || clientPort === undefined) {
    socket.destroy();
    return;
  }
  server.setCloser(socket, () => socket.destroy());
  socket.once('close', () => server.setCloser(socket, null));
  const down: Downstream = { socket, clientIp, clientPort, setCloser: (closer, isHeld) => server.setCloser(socket, closer, isHeld) };
  if (ctx.isDraining()) {
    refuse(ctx, down, null, 'EGW_SHUTTING_DOWN', 'draining: no new SOCKS connections');
    return;
  }
  // 2–3.
  runHandshake(ctx, down, (hs) => {
    if (hs.request.command === 'udp-associate') startUdpAssociation(ctx, down, hs, server.udp, server.relayPorts);
    else void connect(ctx, down, hs);
  });
}

async function connect(ctx: GatewayContext, down: Downstream, hs: HandshakeResult): Promise<void> {
  const { socket } = down;
  const { request } = hs;
  // The client may have gone while its identity was resolved (before this listener existed). A flow
  // whose client left before its tunnel is closed client-reset, as HTTP CONNECT's is: at once when it
  // leaves during the lookup or the dial (admission names the flow on `watch`; FlowTable.clientLeft
  // abandons the dial). Only 'close' counts: a FIN alone is a half-close (allowHalfOpen).
  let clientGone = socket.destroyed;
  const watch: ClientWatch = { flow: null };
  const onClose = (): void => {
    clientGone = true;
    if (watch.flow !== null) ctx.flows.clientLeft(watch.flow);
  };
  socket.once('close', onClose);
  // 4. admission
  const admitted = await admit(ctx, {
    protocol: 'socks5',
    listener: 'socks',
    claims: { clientIp: down.clientIp, clientPort: down.clientPort, username: hs.username },
    destHost: request.host,
    destPort: request.port,
    server: socket,
    identity: hs.identity,
    loginSince: hs.snapshot,
    watch,
  });
  if (!admitted.ok) {
    socket.removeListener('close', onClose);
    // Left during admission (its lookup): the flow ended client-reset then, nobody to answer.
    if (clientGone && admitted.flow.closeReason === 'client-reset') return;
    const why = admitted.flow.reasons.length > 0 ? admitted.flow.reasons.join('; ') : admitted.reject.reason;
    refuse(ctx, down, encodeReply(admitted.reject.socks), admitted.reject.reason, `CONNECT ${formatAuthority(request.host, request.port)} refused (${admitted.reject.reason}): ${why}`);
    return;
  }
  const { flow } = admitted;
  if (clientGone || socket.destroyed) {
    ctx.flows.close(flow, 'client-reset');
    return;
  }
  // A flow now: a drain ends it through the FlowTable (its dial killed at the grace's end, the
  // client told 0x01), not by closing the connection unanswered as it starts.
  down.setCloser(null);
  // 5. dial the checked address
  let up: Socket;
  try {
    up = await dialFirstReachable({ ip: admitted.ip, port: request.port, upstream: admitted.upstream, timeoutMs: admitted.snapshot.config.limits.connectTimeoutMs, flow, via: ctx.via.value, unanswered: ctx.unanswered, names: ctx }, admitted.alternates, (ip, isOutcome) => admitAlternate(ctx, admitted, ip, isOutcome));
  } catch (err) {
    socket.removeListener('close', onClose);
    if (clientGone) {
      // Left while it dialled: the flow ended client-reset then (clientLeft); no failed attempt.
      ctx.flows.close(flow, 'client-reset');
      return;
    }
    if (flow.state === 'closed') {
      // Killed while it dialled (admin, detector, the drain's end): the reply says what the kill means.
      const killed = failFlow(ctx, flow, err);
      if (!clientGone) refuse(ctx, down, encodeReply(killed.socks), killed.reason, `CONNECT ${formatAuthority(request.host, request.port)}: flow killed while dialling (${killed.reason})`, false);
      return;
    }
    const mapping = failFlow(ctx, flow, err);
    // Out of descriptors or local ports is logged once per ten seconds (DescriptorShortage), not per flow.
    if (!clientGone) refuse(ctx, down, encodeReply(mapping.socks), mapping.reason, `CONNECT ${formatAuthority(request.host, request.port)} failed (${mapping.reason}): ${(err as Error).message}`, !isShortage(mapping));
    return;
  }
  socket.removeListener('close', onClose);
  if (clientGone || socket.destroyed) {
    up.destroy();
    ctx.flows.close(flow, 'client-reset');
    return;
  }
  if (flow.state !== 'active') {
    // Killed (admin, detector, drain) as the dial completed: the client is refused, nothing is relayed.
    up.destroy();
    const killed = failFlow(ctx, flow, null);
    refuse(ctx, down, encodeReply(killed.socks), killed.reason, `CONNECT ${formatAuthority(request.host, request.port)}: flow killed while dialling (${killed.reason})`, false);
    return;
  }
  // 6. success carries the bound address of the upstream socket (RFC 1928 §6).
  socket.write(encodeReply(SOCKS_REP.succeeded, up.localAddress ?? null, up.localPort ?? 0));
  tunnel(ctx.flows, flow, socket, up, { idleTimeoutMs: admitted.snapshot.config.limits.idleTimeoutMs, head: hs.head });
}

function ignore(): void {}
