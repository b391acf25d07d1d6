/**
 * What a SOCKS5 UDP association (socks5-udp.ts) leaves in its one record (SPEC §5): the datagrams it
 * dropped, by kind, and how many destinations it relayed and had refused, added to the record's
 * reasons; and the record of an association that never relayed a datagram.
 */
import type { GatewayRefusalReason } from '../../policy/types.ts';
import { gatewayRefusal, limitRefusal } from '../admission.ts';
import type { GatewayContext } from '../context.ts';
import type { Flow } from '../flow/flow.ts';
import type { HandshakeResult } from './socks5-handshake.ts';
import type { Destination } from './socks5-udp-destinations.ts';

/** One association's dropped datagrams, by why. */
export interface DropCounts {
  foreign: number;
  fragments: number;
  malformed: number;
  refused: number;
  unsolicited: number;
  overflow: number;
  /** While their destination was being admitted: its queue, the association's or the gateway's bytes, or MAX_PENDING. */
  held: number;
  /** Replies too large for one datagram to the client once the SOCKS UDP header is added. */
  oversized: number;
  /** Payloads too large for one IPv4 datagram to their destination (from an IPv6 client, up to 65,527 bytes). */
  oversizedOut: number;
  /** Handed to the kernel, which did not send them (ENETUNREACH, EHOSTUNREACH, EACCES, EPERM): not in bytesOut. */
  unsent: number;
  /** Before the lock, from a socket the control connection's user does not own (socks5-udp-source.ts). */
  otherUser: number;
  /** Before the lock, from a port on which the socket tables listed no socket (socks5-udp-source.ts). */
  ownerUnlisted: number;
  /** Before the lock, while their socket's owner was not known: the lookup outlasted its wait, told nothing, or found the port shared by several uids. */
  ownerUnknown: number;
}

export function newDropCounts(): DropCounts {
  return { foreign: 0, fragments: 0, malformed: 0, refused: 0, unsolicited: 0, overflow: 0, held: 0, oversized: 0, oversizedOut: 0, unsent: 0, otherUser: 0, ownerUnlisted: 0, ownerUnknown: 0 };
}

/** An association's destinations relayed and refused. */
export interface AssociationCounts {
  readonly admitted: number;
  readonly refusedDestinations: number;
}

/**
 * The association's counts, added to its record's reasons; nothing is judged here. An association
 * that relayed nothing was never judged: verdict allow (the flow's default), reason null, as any
 * flow that ended before a decision (before, `allowed` was made up here).
 */
export function noteReasons(ctx: GatewayContext, f: Flow, counts: AssociationCounts, drops: DropCounts): void {
  const { admitted, refusedDestinations } = counts;
  ctx.flows.explain(f, [
    ...f.reasons,
    `udp association: ${admitted} destination${admitted === 1 ? '' : 's'} relayed, ${refusedDestinations} refused`,
    `udp datagrams dropped: ${drops.fragments} fragments, ${drops.foreign} from foreign sources, ${drops.malformed} malformed, ` +
      `${drops.refused} to refused destinations, ${drops.unsolicited} unsolicited replies, ${drops.overflow} over the destination limit, ` +
      `${drops.held} over the limits of datagrams waiting for admission, ${drops.oversized} replies too large for the client, ` +
      `${drops.oversizedOut} too large for their destination, ${drops.otherUser} from another user's socket, ` +
      `${drops.ownerUnlisted} from a socket not listed (no owner), ` +
      `${drops.ownerUnknown} whose socket's owner was not known in time or shared the port with another user, ` +
      `${drops.unsent} the kernel did not send (no route to their destination, or a local firewall)`,
  ]);
}

/**
 * Why a UDP ASSOCIATE was refused before it had a relay: the gateway's own refusals, or the
 * identity's limit (`rate-limit`, as a CONNECT over it). Recorded block, enforced, in every mode.
 */
export interface AssociationRefusal {
  readonly reason: GatewayRefusalReason | 'rate-limit';
  readonly why: string;
}

/** An association that relayed nothing: who and when, its first destination, and its refusal if any. */
export interface EmptyAssociation {
  readonly hs: HandshakeResult;
  readonly client: { readonly ip: string; readonly port: number };
  readonly startedAt: number;
  /** The first destination the client named, if any. */
  readonly first: Destination | undefined;
  /** Refused before it had a relay: the record's refusal and why. */
  readonly refusal: AssociationRefusal | null;
}

/**
 * SPEC §5: one record per UDP association. An association that never relayed a datagram has no
 * destination admitted; it still leaves a record, no bytes: its destination is the first the client
 * named, when it ended while that was being looked up, else the one it declared in UDP ASSOCIATE.
 * One refused before it had a relay is recorded as that refusal (verdict block, its reason).
 */
export function recordEmptyAssociation(ctx: GatewayContext, a: EmptyAssociation, reason: string, counts: AssociationCounts, drops: DropCounts): void {
  const { hs, first, refusal } = a;
  const f = ctx.flows.open({
    protocol: 'socks5-udp',
    listener: 'socks',
    client: { ip: a.client.ip, port: a.client.port },
    identity: hs.identity,
    destination: first === undefined ? { host: hs.request.host, ip: null, port: hs.request.port } : { host: first.host, ip: null, port: first.port },
    startedAt: a.startedAt,
  });
  if (refusal !== null) {
    const mode = hs.snapshot.modeFor(f.identity.roles, ctx.policy.modeOverride());
    ctx.flows.decide(f, refusal.reason === 'rate-limit' ? limitRefusal(mode, [refusal.why]) : gatewayRefusal(refusal.reason, mode, [refusal.why]), true);
  }
  noteReasons(ctx, f, counts, drops);
  ctx.flows.close(f, reason);
}
