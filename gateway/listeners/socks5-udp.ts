/**
 * SOCKS5 UDP ASSOCIATE relay (RFC 1928 §7): one association per TCP control connection, one flow.
 *
 *  0. over its identity's limit (limits.maxFlowsPerIdentity: its live flows and the associations
 *     waiting for their first datagram, which hold a place from here: FlowTable.holdPlace) → 0x02,
 *     one rate-limit record, no relay
 *  1. bind a dgram socket (udp4/udp6 like the control connection) on the listener's IP, on a port
 *     of limits.udpRelayPorts or any ephemeral port when unset (UdpRelayPorts: a range with no port
 *     free within its bounded attempts refuses the ASSOCIATE 0x01, recorded `out-of-relay-ports`;
 *     any other bind failure the same, recorded `relay-error`), and reply with its address; while
 *     it is bound its address is one of the gateway's own (ctx.udpRelays), which no association may
 *     name as a destination
 *  2. accept datagrams only from the control connection's client IP; the request's DST.PORT, if
 *     non-zero, narrows it to that port, otherwise the first datagram's source port is locked in;
 *     for a client on this host with local attribution on, either port only once a datagram from it
 *     came from a socket the control connection's user (uid) owns (SourcePortCheck: held while
 *     asked, another user's dropped, a socket not listed dropped, an owner not known in time dropped)
 *  3. parse the SOCKS UDP header in place (no allocation); FRAG != 0, malformed headers and
 *     foreign sources are dropped and counted
 *  4. each new destination is admitted once and the answer cached for the association (one whose
 *     name did not resolve is looked up again for a datagram after a short wait)
 *     (socks5-udp-admissions.ts). Up to MAX_ADMITTING destinations are admitted at once, the others queue in order: each name is looked
 *     up (needsLookUp, lookUp) side by side with the others, so one whose DNS never answers holds up no other
 *     destination; then, as its answer comes, the first destination admitted goes through `admit`
 *     (opens the flow: limits, attribution — the process holding the datagram socket, else the
 *     control connection's —, self-dial, policy, deny-range, detection hooks; one at a time while no
 *     flow is open), later ones through `admitDestination` (self-dial, policy incl. deny-range, and the
 *     connect-time detection a new flow would meet; a refusal leaves its own refused record). Up to
 *     MAX_QUEUED datagrams wait while a destination is being admitted, within ASSOCIATION_HELD_BYTES for the
 *     association and the listener's gateway-wide share (UdpRelayLedger), for at most MAX_PENDING
 *     destinations at once; past any of these a datagram is dropped and counted
 *  5. payload (without the SOCKS header) goes out of an unconnected upstream socket; bytesOut
 *     counts it, in the flow's totals and in its destination's leg (flow.ts, FlowLeg), whose own
 *     bytes the detectors judge as a flow to that destination alone; the leg's byte budget is exact
 *     (leg.onBudget decides cut or move on) and a cut ends the association; one too
 *     large for a datagram to its destination (an IPv6 client's, to IPv4) is dropped and counted;
 *     one the kernel does not send (no route) is taken back out of bytesOut and counted
 *  6. a datagram arriving on the upstream socket is relayed only if its source is an admitted
 *     destination, wrapped with the header naming that destination as the client named it (of
 *     several spellings of one address and port, the one the client sent to last), and if
 *     the two fit in one UDP datagram to the client (else dropped and counted); bytesIn counts it,
 *     in the flow's totals and the destination's leg
 *  7. the association ends when the control connection closes, on idle timeout, or on kill; when its
 *     first destination is refused over the identity's limits, by quarantine or a connect-time
 *     detector, or killed while admitted (endsAssociation); after MAX_REFUSED refused destinations;
 *     the flow's reasons note the destinations and every drop count
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { isIPv4 } from 'node:net';
import { clientReached, isLocalClient } from '../admission.ts';
import type { GatewayContext } from '../context.ts';
import type { Flow, FlowLeg, RoutedFlow } from '../flow/flow.ts';
import { formatAuthority } from '../protocol/authority.ts';
import { identityKey } from '../flow/flow-table.ts';
import { unmapIPv4 } from '../../policy/address.ts';
import { encodeReply, newUdpHeader, parseUdpHeader } from '../protocol/socks5-codec.ts';
import { SOCKS_REP } from '../reject.ts';
import { type Downstream, type HandshakeResult, refuse } from './socks5-handshake.ts';
import { type Destination, DestinationTable } from './socks5-udp-destinations.ts';
import { UdpAdmissions } from './socks5-udp-admissions.ts';
import { HeldShare, type UdpRelayLedger } from './socks5-udp-ledger.ts';
import type { RelayBind, UdpRelayPorts } from './socks5-udp-ports.ts';
import { type AssociationRefusal, newDropCounts, noteReasons, recordEmptyAssociation } from './socks5-udp-records.ts';
import { SourcePortCheck } from './socks5-udp-source.ts';
import type { SocketOwner } from '../../agent/attribution.ts';

/** Datagrams held per destination while its admission is pending. */
const MAX_QUEUED = 16;
/** One warning per association and kind of drop in this long, with the count. */
const DROP_LOG_EVERY_MS = 10_000;
/** The most UDP payload one datagram carries: 65,535 less the UDP header, and IPv4's header for udp4. */
const MAX_UDP_PAYLOAD = { udp4: 65_535 - 8 - 20, udp6: 65_535 - 8 } as const;

/** A datagram handed to an upstream socket still binding: what notSent() needs if the bind fails. */
interface UnboundSend {
  f: Flow;
  dest: Destination;
  leg: FlowLeg;
  len: number;
}

/** Run a UDP association for a parsed UDP ASSOCIATE request; the handshake left `down` paused. */
export function startUdpAssociation(ctx: GatewayContext, down: Downstream, hs: HandshakeResult, ledger: UdpRelayLedger, relayPorts: UdpRelayPorts): void {
  const { socket } = down;
  // The running policy's limits, not those of the handshake's start: a reload while the login was
  // checked (a slow passwordHash) applies to this association as to a new connection (admission's).
  const running = ctx.policy.current();
  const limits = running.config.limits;
  const clientIp = unmapIPv4(down.clientIp);
  const startedAt = ctx.flows.now();
  const localIp = unmapIPv4(socket.localAddress ?? '127.0.0.1');
  /** 0 until known: the request's DST.PORT or the first datagram's source port. */
  let clientPort = hs.request.port;
  const relayType = isIPv4(localIp) ? 'udp4' : 'udp6';
  /** The client-facing relay socket, once bound (until then no datagram can reach it). */
  let relay: UdpSocket | null = null;
  /** The largest reply (with its SOCKS UDP header) the relay can send the client. */
  const maxReply = MAX_UDP_PAYLOAD[relayType];
  let up4: UdpSocket | null = null;
  let up6: UdpSocket | null = null;
  /**
   * Per family: datagrams handed to its upstream socket before the socket was bound (node binds it on
   * the first send and queues sends until then). A bind that fails (EMFILE at the descriptor limit)
   * drops node's queue without calling a send callback, so they are taken back on its error; null
   * once bound (their callbacks come then).
   */
  let unbound4: UnboundSend[] | null = [];
  let unbound6: UnboundSend[] | null = [];
  let flow: RoutedFlow | null = null;
  let ended = false;
  /** Why the association ended (the record's closeReason), once it has. */
  let endReason = 'closed';
  /**
   * An association refused before it had a relay (over its identity's limit, no port free, the bind
   * failed): its record's refusal (verdict block, as every refusal before any judgement) and why.
   */
  let refusal: AssociationRefusal | null = null;
  /** The identity's limit key (FlowTable identityKey), and whether this association holds a place under it. */
  const limitKey = identityKey({ identity: hs.identity, client: { ip: clientIp, port: 0 } });
  let isHoldingPlace = false;
  /** The relay's entry in the gateway's live relay addresses (ctx.udpRelays) while it is bound. */
  let relayKey: string | null = null;
  /** The idle timeout: pushed back by every datagram relayed either way; null when off or ended. */
  let idleTimer: NodeJS.Timeout | null = null;
  const hdr = newUdpHeader();
  const dests = new DestinationTable();
  /** The bytes of datagrams waiting for their destinations' admission (also taken from `ledger`). */
  const held = new HeldShare(ledger);
  /** When each logged kind of drop was last logged (one warning per DROP_LOG_EVERY_MS each). */
  const loggedAt = { held: Number.NEGATIVE_INFINITY, oversized: Number.NEGATIVE_INFINITY, oversizedOut: Number.NEGATIVE_INFINITY, unsent: Number.NEGATIVE_INFINITY, ownerUnknown: Number.NEGATIVE_INFINITY, ownerUnlisted: Number.NEGATIVE_INFINITY, sharedPort: Number.NEGATIVE_INFINITY };
  const drops = newDropCounts();
  // 4. admission, once per destination (socks5-udp-admissions.ts)
  const admissions = new UdpAdmissions({
    ctx,
    down,
    hs,
    clientIp,
    localIp,
    dests,
    held,
    drops,
    clientPort: () => clientPort,
    relayPort: () => (relay !== null ? relay.address().port : 0),
    flow: () => flow,
    isEnded: () => ended,
    endReason: () => endReason,
    opened,
    end,
    recordEnded: () => recordIfNoFlow(endReason),
    forward,
    releaseHeld,
    dropHeld,
    noteReasons: (f) => noteReasons(ctx, f, admissions, drops),
    holdPlace,
    releasePlace,
  });
  /**
   * Until a port is locked (the one the request named, or any), for a client on this host with local
   * attribution on: whether its socket is the control connection's user's (socks5-udp-source.ts);
   * null once locked, or never used.
   */
  let sourceCheck: SourcePortCheck | null =
    ctx.attributor?.socketOwners !== undefined && running.config.identity.localAttribution && isLocalClient(clientIp, socket)
      ? new SourcePortCheck(ownersOf, held, { lock: lockSource, otherUser: onOtherUser, unlisted: onOwnerUnlisted, unknown: onOwnerUnknown, shared: onSharedPort })
      : null;

  // A request that came during the drain (its handshake under way at SIGTERM): refused as a CONNECT
  // is then (admission: 0x01, one record, block shutting-down), and no relay is bound.
  if (ctx.isDraining()) {
    refusal = { reason: 'shutting-down', why: 'the gateway is draining: no new flows' };
    end(refusal.reason, false, true);
    refuse(ctx, down, encodeReply(SOCKS_REP.generalFailure), 'EGW_SHUTTING_DOWN', 'UDP ASSOCIATE refused: draining, no new flows');
    return;
  }
  // Over the identity's limit: refused before a relay is bound, as a CONNECT over it is (0x02, one
  // record, block rate-limit). An association holds its relay socket (and a port of
  // limits.udpRelayPorts) from now on, so it holds a place in limits.maxFlowsPerIdentity until its
  // first datagram's flow counts instead; else empty associations, never flows, could take every
  // relay port and descriptor whatever the limit.
  if (!ctx.flows.holdPlace(limitKey, limits.maxFlowsPerIdentity)) {
    refusal = { reason: 'rate-limit', why: 'per-identity flow limit exceeded (live flows and UDP associations)' };
    end(refusal.reason, false, true);
    refuse(ctx, down, encodeReply(SOCKS_REP.notAllowed), 'EGW_FLOW_LIMIT', 'UDP ASSOCIATE refused (rate-limit): per-identity flow limit exceeded');
    return;
  }
  isHoldingPlace = true;
  // 1. bind the client-facing relay socket
  relayPorts
    .bind(limits.udpRelayPorts, relayType, localIp, (port) => ctx.udpRelays.has(localIp, port), onRelayError)
    .then(onRelayBound, (err: unknown) => onRelayBound({ ok: false, exhausted: false, err: err instanceof Error ? err : new Error(String(err)) }));

  function onRelayError(err: Error): void {
    ctx.log.warn({ listener: 'socks', client: formatAuthority(clientIp, clientPort), err: err.message }, 'socks5 udp relay error');
  }

  function onRelayBound(r: RelayBind): void {
    if (!r.ok) {
      if (ended) return;
      // Either way the association leaves its one record (SPEC §5), refused, and is counted.
      if (r.exhausted) {
        // Logged once per interval by UdpRelayPorts, not per refusal; the record says why.
        refusal = { reason: 'out-of-relay-ports', why: `no UDP relay port free in limits.udpRelayPorts ${r.range} (${r.tried} tried)` };
        end(refusal.reason, false, true);
        refuse(ctx, down, encodeReply(SOCKS_REP.generalFailure), 'EGW_OUT_OF_RELAY_PORTS', refusal.why, false);
      } else {
        refusal = { reason: 'relay-error', why: `UDP relay bind failed: ${r.err.message}` };
        end(refusal.reason, false, true);
        refuse(ctx, down, encodeReply(SOCKS_REP.generalFailure), 'udp-bind-failed', refusal.why);
      }
      return;
    }
    if (ended) {
      closeQuietly(r.socket);
      return;
    }
    relay = r.socket;
    relay.on('message', onClientMessage);
    const addr = relay.address();
    // From now on no association's destination may be this relay (admission refuses it: deny-range).
    relayKey = ctx.udpRelays.add(addr.address, addr.port);
    socket.write(encodeReply(SOCKS_REP.succeeded, addr.address, addr.port));
    // The control connection carries nothing more; read and drop so a flood cannot queue.
    socket.on('data', discard);
    socket.resume();
  }
  socket.on('end', onControlEnd);
  socket.on('close', onControlClose);
  down.setCloser(() => end('shutdown'));
  // The control connection may already be gone (its FIN came with the request).
  if (socket.readableEnded || socket.destroyed) queueMicrotask(() => end('closed'));
  if (limits.idleTimeoutMs > 0) {
    // One timer, re-armed by each datagram (refresh(): what a TCP socket's timeout does on each read
    // and write), so a silent association ends idleTimeoutMs after its last datagram, as a tunnel does.
    idleTimer = setTimeout(() => end('idle-timeout'), limits.idleTimeoutMs);
    idleTimer.unref();
  }

  function onControlEnd(): void {
    end('closed');
  }

  /** Closed without its FIN first: a reset is the client's (RFC 1928 §7 ends the association either way). */
  function onControlClose(hadError: boolean): void {
    end(hadError ? 'client-reset' : 'closed');
  }

  /** The owners of the datagram sockets at `ports` and of the control connection (SourcePortCheck's lookup). */
  async function ownersOf(ports: readonly number[]): Promise<{ control: number | null; ports: SocketOwner[] } | null> {
    const attributor = ctx.attributor;
    if (relay === null || attributor?.socketOwners === undefined) return null;
    const at = relay.address();
    const sockets: Array<{ proto: 'tcp' | 'udp'; clientIp: string; clientPort: number; serverIp: string; serverPort: number }> = ports.map((p) => ({ proto: 'udp', clientIp, clientPort: p, serverIp: at.address, serverPort: at.port }));
    // The control connection as the client's socket has it: to the balancer's front when one named it.
    const reached = clientReached(socket);
    sockets.push({ proto: 'tcp', clientIp, clientPort: down.clientPort, serverIp: reached.ip, serverPort: reached.port });
    const owners = await attributor.socketOwners(sockets);
    if (owners === null) return null;
    const control = owners[ports.length] ?? null;
    // One TCP connection is one socket: never shared.
    return { control: typeof control === 'number' ? control : null, ports: owners.slice(0, ports.length) };
  }

  /** Before the lock: hold the datagram while its socket's owner is asked, or drop it (counted). */
  function checkSource(port: number, msg: Buffer): void {
    const verdict = (sourceCheck as SourcePortCheck).offer(port, msg);
    if (verdict === 'other-user') {
      drops.otherUser++;
      ledger.otherUserDroppedTotal++;
    } else if (verdict === 'unknown') onOwnerUnknown(1);
    else if (verdict === 'full') dropHeld();
  }

  function lockSource(port: number, queue: readonly Buffer[], foreign: number): void {
    sourceCheck = null;
    drops.foreign += foreign;
    if (ended) return;
    clientPort = port;
    const from = { address: clientIp, family: relayType === 'udp4' ? 'IPv4' : 'IPv6', port, size: 0 } as RemoteInfo;
    for (const msg of queue) {
      if (ended) return;
      onClientMessage(msg, from);
    }
  }

  function onOtherUser(port: number, uid: number, controlUid: number, dropped: number): void {
    drops.otherUser += dropped;
    ledger.otherUserDroppedTotal += dropped;
    ctx.log.warn(
      { listener: 'socks', client: formatAuthority(clientIp, port), username: hs.username, uid, controlUid, dropped },
      "socks5 udp datagrams not relayed: their socket is another user's than the control connection's",
    );
  }

  /**
   * Datagrams dropped before the lock from a port on which no socket is listed: not remembered (asked
   * again at its next datagram), so logged once per DROP_LOG_EVERY_MS, not once per port.
   */
  function onOwnerUnlisted(port: number, controlUid: number, dropped: number): void {
    drops.ownerUnlisted += dropped;
    ledger.ownerUnlistedDroppedTotal += dropped;
    if (!isLogDue('ownerUnlisted')) return;
    ctx.log.warn(
      { listener: 'socks', client: formatAuthority(clientIp, port), username: hs.username, uid: null, controlUid, dropped },
      'socks5 udp datagrams not relayed: no socket is listed on their port (closed after sending, or a raw sender), so their owner is not known',
    );
  }

  /** Datagrams dropped before the lock, their socket's owner not known in time: logged once per DROP_LOG_EVERY_MS. */
  function onOwnerUnknown(dropped: number): void {
    drops.ownerUnknown += dropped;
    ledger.ownerUnknownDroppedTotal += dropped;
    if (dropped === 0 || !isLogDue('ownerUnknown')) return;
    ctx.log.warn(
      { listener: 'socks', client: clientIp, username: hs.username, dropped: drops.ownerUnknown },
      "socks5 udp datagrams not relayed: their socket's owner was not known in time (the lookup goes on)",
    );
  }

  /**
   * Datagrams dropped before the lock from a port sockets of several uids share (SO_REUSEADDR): counted
   * as of an owner not known, logged once per DROP_LOG_EVERY_MS.
   */
  function onSharedPort(port: number, uids: readonly number[], controlUid: number | null, dropped: number): void {
    drops.ownerUnknown += dropped;
    ledger.ownerUnknownDroppedTotal += dropped;
    if (!isLogDue('sharedPort')) return;
    ctx.log.warn(
      { listener: 'socks', client: formatAuthority(clientIp, port), username: hs.username, uids, controlUid, dropped },
      'socks5 udp datagrams not relayed: their port is shared by sockets of several users (SO_REUSEADDR), so whose socket sent them is not known',
    );
  }

  // 2–5. client → destination: the hot path
  function onClientMessage(msg: Buffer, rinfo: RemoteInfo): void {
    if (rinfo.address !== clientIp || (clientPort !== 0 && rinfo.port !== clientPort)) {
      drops.foreign++;
      return;
    }
    if (!parseUdpHeader(msg, hdr)) {
      drops.malformed++;
      return;
    }
    if (hdr.frag !== 0) {
      drops.fragments++;
      return;
    }
    // Only a well-formed datagram locks the source port (when the request did not name one); with
    // local attribution, only one from a socket the control connection's user owns (named or not).
    if (sourceCheck !== null) {
      checkSource(rinfo.port, msg);
      return;
    }
    if (clientPort === 0) clientPort = rinfo.port;
    idleTimer?.refresh();
    const dest = dests.find(msg, hdr);
    if (dest === null) admissions.newDestination(msg, hdr);
    else if (dest.state === 'allowed') forward(dest, msg, hdr.dataOffset);
    else if (dest.state === 'pending') hold(dest, msg);
    else if (!admissions.judgeAgain(dest, msg, hdr)) drops.refused++;
  }

  /** Queue a datagram for a destination being admitted, if its queue and the byte caps allow. */
  function hold(dest: Destination, msg: Buffer): void {
    if (dest.queue === null || dest.queue.length >= MAX_QUEUED || !held.take(msg.length)) {
      dropHeld();
      return;
    }
    dest.heldBytes += msg.length;
    dest.queue.push(msg.subarray(hdr.dataOffset));
  }

  /** Let go of a destination's queue (sent on, refused, or the association ended). */
  function releaseHeld(dest: Destination): void {
    held.release(dest.heldBytes);
    dest.heldBytes = 0;
    dest.queue = null;
  }

  /** Whether a drop of this kind is to be logged now: once per DROP_LOG_EVERY_MS per association. */
  function isLogDue(kind: keyof typeof loggedAt): boolean {
    const now = ctx.flows.now();
    if (now - loggedAt[kind] < DROP_LOG_EVERY_MS) return false;
    loggedAt[kind] = now;
    return true;
  }

  function dropHeld(): void {
    drops.held++;
    ledger.heldDroppedTotal++;
    if (!isLogDue('held')) return;
    ctx.log.warn(
      {
        listener: 'socks',
        flowId: flow?.id,
        client: formatAuthority(clientIp, clientPort),
        dropped: drops.held,
        pendingDestinations: admissions.pending,
        heldBytes: held.bytes,
        gatewayHeldBytes: ledger.heldBytes,
      },
      'socks5 udp datagrams dropped while their destinations wait for admission (queue limits)',
    );
  }

  function forward(dest: Destination, msg: Buffer, offset: number): void {
    const f = flow as Flow;
    const leg = dest.leg as FlowLeg;
    const len = msg.length - offset;
    if (len > MAX_UDP_PAYLOAD[dest.isV6 ? 'udp6' : 'udp4']) {
      // An IPv6 client's datagram can carry more than one IPv4 datagram holds: the send would fail
      // (EMSGSIZE) with nothing sent, so it is dropped here and not counted in bytesOut.
      dropOversizedOut(dest, len);
      return;
    }
    while (leg.bytesOut + len > leg.budgetOut) {
      // Same rule as the TCP tunnel, on this destination's bytes: the detection engine says whether
      // to cut (enforce) or move the budget on (monitor / ratio not met yet). A datagram cannot be
      // split, so the one that would cross the budget is not sent at all; one that crosses the
      // moved budget too is asked about again there.
      const before = leg.budgetOut;
      const cut = leg.onBudget ? leg.onBudget(leg) : true;
      if (cut) {
        ctx.log.warn({ flowId: f.id, destination: formatAuthority(dest.host, dest.port), budgetOut: leg.budgetOut }, 'socks5 udp association over its byte budget');
        end('an0080.bulk-upload', true);
        return;
      }
      if (leg.budgetOut <= before) leg.budgetOut = Number.POSITIVE_INFINITY;
    }
    leg.bytesOut += len;
    f.bytesOut += len;
    // Its replies come back under this spelling's header (another admitted since may share the address).
    dests.sentTo(dest);
    // The kernel may refuse to send it (ENETUNREACH: an IPv6 destination from a host without an IPv6
    // route; EHOSTUNREACH, EACCES, EPERM): node tells only a send callback, so without one it went
    // unseen and stayed in bytesOut. Counted when handed over (the budget stays exact), taken back then.
    const up = upstream(dest.isV6);
    const unbound = dest.isV6 ? unbound6 : unbound4;
    if (unbound !== null) unbound.push({ f, dest, leg, len });
    up.send(msg, offset, len, dest.port, dest.ip, (err) => {
      if (err !== null) notSent(f, dest, leg, len, err);
    });
  }

  /** A datagram the kernel did not send: not in bytesOut, counted in the record's drops, logged once per interval. */
  function notSent(f: Flow, dest: Destination, leg: FlowLeg, len: number, err: Error): void {
    leg.bytesOut -= len;
    f.bytesOut -= len;
    drops.unsent++;
    if (!isLogDue('unsent')) return;
    ctx.log.warn(
      { listener: 'socks', flowId: f.id, client: formatAuthority(clientIp, clientPort), destination: formatAuthority(dest.host, dest.port), ip: dest.ip, err: (err as NodeJS.ErrnoException).code ?? err.message, dropped: drops.unsent },
      'socks5 udp datagrams not sent: the kernel refused them (no route to their destination, a local firewall, or no descriptor for the socket)',
    );
  }

  function dropOversizedOut(dest: Destination, len: number): void {
    drops.oversizedOut++;
    if (!isLogDue('oversizedOut')) return;
    ctx.log.warn(
      { listener: 'socks', flowId: flow?.id, client: formatAuthority(clientIp, clientPort), destination: formatAuthority(dest.host, dest.port), bytes: len, maxBytes: MAX_UDP_PAYLOAD.udp4, dropped: drops.oversizedOut },
      'socks5 udp datagrams dropped: too large for a datagram to their IPv4 destination',
    );
  }

  function upstream(isV6: boolean): UdpSocket {
    let s = isV6 ? up6 : up4;
    if (s === null) {
      // Unconnected and bound on first send to an ephemeral port: one socket reaches every destination.
      s = createSocket({ type: isV6 ? 'udp6' : 'udp4' });
      s.on('message', onUpstreamMessage);
      s.on('listening', () => {
        if (isV6) unbound6 = null;
        else unbound4 = null;
      });
      s.on('error', (err: NodeJS.ErrnoException) => {
        if (err.syscall !== 'bind') {
          ctx.log.warn({ flowId: flow?.id, err: err.message }, 'socks5 udp upstream send failed');
          return;
        }
        // Not bound: node dropped the sends waiting for it, unanswered. The next send binds again.
        const lost = (isV6 ? unbound6 : unbound4)?.splice(0) ?? [];
        if (err.code === 'EMFILE' || err.code === 'ENFILE') ctx.descriptors?.dialFailed(err.code);
        for (const u of lost) notSent(u.f, u.dest, u.leg, u.len, err);
      });
      if (isV6) up6 = s;
      else up4 = s;
    }
    return s;
  }

  // 6. destination → client
  function onUpstreamMessage(msg: Buffer, rinfo: RemoteInfo): void {
    const dest = dests.replyFrom(rinfo.address, rinfo.port);
    if (dest === undefined || flow === null || ended) {
      drops.unsolicited++;
      return;
    }
    idleTimer?.refresh();
    if (dest.replyHeader.length + msg.length > maxReply) {
      // The send would fail (EMSGSIZE) with no one told: the client never gets it, so no bytesIn.
      drops.oversized++;
      ledger.repliesDroppedTotal++;
      if (isLogDue('oversized')) {
        ctx.log.warn(
          { listener: 'socks', flowId: flow.id, client: formatAuthority(clientIp, clientPort), destination: formatAuthority(dest.host, dest.port), bytes: msg.length, maxBytes: maxReply - dest.replyHeader.length, dropped: drops.oversized },
          'socks5 udp replies dropped: too large for a datagram to the client with the SOCKS UDP header',
        );
      }
      return;
    }
    (dest.leg as FlowLeg).bytesIn += msg.length;
    flow.bytesIn += msg.length;
    (relay as UdpSocket).send([dest.replyHeader, msg], clientPort, clientIp);
  }

  /** The first destination admitted opened the association's flow (socks5-udp-admissions.ts). */
  function opened(f: RoutedFlow): void {
    flow = f;
    down.setCloser(null);
    ctx.flows.markConnected(f);
    f.abort = () => end('killed', true);
    // Its counts go into its record however it closes: a kill closes it before abort runs.
    f.explainAtClose = (closing) => noteReasons(ctx, closing, admissions, drops);
  }

  /** Hold the association's place in its identity's limit again (its first destination was refused: no flow counts it). */
  function holdPlace(): void {
    if (ended || isHoldingPlace) return;
    ctx.flows.holdPlace(limitKey, Number.POSITIVE_INFINITY);
    isHoldingPlace = true;
  }

  /** Give the place back: the first destination's flow is about to open (and count), or the association ended. */
  function releasePlace(): void {
    if (!isHoldingPlace) return;
    isHoldingPlace = false;
    ctx.flows.releasePlace(limitKey);
  }

  // 7. end of the association: idempotent
  function end(reason: string, reset = false, keepSocket = false): void {
    if (ended) return;
    ended = true;
    endReason = reason;
    releasePlace();
    if (idleTimer !== null) clearTimeout(idleTimer);
    // Not re-armed by a datagram already on its way (refresh() restarts a cleared timer).
    idleTimer = null;
    sourceCheck?.close();
    if (relay !== null) {
      relay.removeListener('message', onClientMessage);
      closeQuietly(relay);
    }
    if (relayKey !== null) ctx.udpRelays.delete(relayKey);
    if (up4) closeQuietly(up4);
    if (up6) closeQuietly(up6);
    socket.removeListener('end', onControlEnd);
    socket.removeListener('close', onControlClose);
    socket.removeListener('data', discard);
    // Admissions not started never will be; those running see `ended` and stop.
    admissions.close();
    // Held datagrams will never be sent: their bytes go back to the gateway's share now.
    if (held.bytes > 0) for (const d of dests.all) if (d.queue !== null) releaseHeld(d);
    if (flow !== null && flow.state === 'active') {
      // Its counts are noted as it closes (explainAtClose).
      ctx.flows.close(flow, reason);
    } else if (flow === null && !admissions.isOpening) {
      recordIfNoFlow(reason);
    }
    if (keepSocket) return;
    if (reset) socket.resetAndDestroy();
    else if (!socket.destroyed) socket.destroy();
  }

  /**
   * The record of an association that ended with no flow open (none of its destinations relayed):
   * its one record, with its counts, whether its destinations were all refused (each has its own
   * refused record too) or none was judged. Not when the first destination's refusal ended it: that
   * refusal's record is the association's (isRecordedByRefusal).
   */
  function recordIfNoFlow(reason: string): void {
    if ((relay === null && refusal === null) || admissions.isRecordedByRefusal) return;
    // The destination being looked up when it ended, if any; else (refused ones have their own records) the declared one.
    const first = dests.all.find((d) => d.state === 'pending');
    recordEmptyAssociation(ctx, { hs, client: { ip: clientIp, port: clientPort }, startedAt, first, refusal }, reason, admissions, drops);
  }

}


function closeQuietly(s: UdpSocket): void {
  try {
    s.close();
  } catch {
    // Already closed (bind failed): nothing to release.
  }
}

function discard(): void {}

