/**
 * Which source port a SOCKS5 UDP association locks onto, for a client on the gateway's own host with
 * `identity.localAttribution` on: one that did not name its port (UDP ASSOCIATE with port 0, RFC
 * 1928 §7) or the one it named. Without this the first well-formed datagram from the client's IP
 * (and the named port) locked the port: another local user's process that sent first (spraying
 * `limits.udpRelayPorts`, or binding the named port before the client did) was relayed with the
 * association's identity, an RFC 1929 user's roles borrowed. A named port's datagrams come from
 * that port alone (any other is a foreign source's before this runs): it is asked once, and locked
 * or remembered as another user's like any port.
 *
 * Before the lock, each new source port's datagrams are held (a few per port, within the
 * association's held bytes) while the socket tables say who owns its socket and who owns the
 * control connection (one read of the tables, one lookup in flight per association, the ports that
 * came meanwhile asked together next). The first port whose socket the control connection's owner
 * (uid) owns is locked and its held datagrams go on; one owned by another uid is remembered (up to
 * MAX_OTHER_PORTS, oldest forgotten first) and its datagrams dropped and counted; one whose socket
 * is not listed (closed after sending, or a raw socket's forged port) is not locked either, its
 * datagrams dropped and counted apart (owner not listed), not remembered; nor is one whose port sockets of more
 * than one uid share (SO_REUSEADDR: nothing tells which of them sent): its datagrams are dropped
 * and counted as of an owner not known, and it is not remembered, so once only one owner is left a
 * datagram from it asks again. A lookup that outlasts OWNER_WAIT_MS
 * (tens of thousands of sockets in the tables) fails closed: the held datagrams are dropped and
 * counted, and so is every datagram that comes while it still runs; it goes on, and its answer
 * decides as above (a port locked then has its next datagram relayed). A lookup that could tell
 * nothing (null: failed) fails closed too, the next datagram asking again. When the tables list no
 * control connection (a host without them, which no other user can arrange) the first port asked
 * is locked, as without attribution. Once locked, nothing here runs again for the association: a port's datagrams cost at most one lookup while it is remembered, and a sprayer's
 * many ports queue for MAX_CANDIDATES places, each batch one read of the tables, so a client that
 * sends after it waits a lookup or two (its retransmission), not forever.
 */
import type { HeldShare } from './socks5-udp-ledger.ts';
import type { SocketOwner } from '../../agent/attribution.ts';

/** Source ports with datagrams held while their owner is asked (the lookup's and the next one's). */
const MAX_CANDIDATES = 16;
/** Datagrams held per source port while its owner is asked. */
const MAX_HELD_PER_PORT = 4;
/** Ports found owned by another user, remembered so their datagrams cost no further lookup. */
const MAX_OTHER_PORTS = 256;
/** How long held datagrams wait for their owners, as admission waits for local attribution (main.ts). */
export const OWNER_WAIT_MS = 500;

/** What to do with a datagram from a port not yet locked. */
export type SourceVerdict = 'held' | 'other-user' | 'full' | 'unknown';

/**
 * The uid owning each port's datagram socket (null: not listed; several: shared) and the control
 * connection's (null: not listed); null: nothing known. Not bounded in time: SourcePortCheck bounds its own wait.
 */
export type OwnerLookup = (ports: readonly number[]) => Promise<{ readonly control: number | null; readonly ports: ReadonlyArray<SocketOwner> } | null>;

export interface SourceEvents {
  /** Lock `port` and relay its held datagrams, in the order they came; `foreign` datagrams of other ports were dropped. */
  lock(port: number, held: readonly Buffer[], foreign: number): void;
  /** `port`'s socket belongs to `uid`, not the control connection's `controlUid`: `dropped` of its datagrams dropped. */
  otherUser(port: number, uid: number, controlUid: number, dropped: number): void;
  /** No socket on `port` is listed (closed after it sent, or never there: a raw sender): `dropped` of its datagrams dropped. */
  unlisted(port: number, controlUid: number, dropped: number): void;
  /** `dropped` datagrams dropped because their socket's owner was not known within the wait (or at all). */
  unknown(dropped: number): void;
  /** `port` is shared by sockets of `uids` (the control connection's `controlUid` among them or not): `dropped` of its datagrams dropped. */
  shared(port: number, uids: readonly number[], controlUid: number | null, dropped: number): void;
}

export class SourcePortCheck {
  /** Ports with datagrams held, in the order they first came; those in `asking` are in the lookup now. */
  private readonly held = new Map<number, Buffer[]>();
  private asking: readonly number[] | null = null;
  /** Ports owned by another user, oldest first. */
  private readonly others = new Map<number, number>();
  private controlUid: number | null = null;
  private isDone = false;
  /** The running lookup outlasted the wait: datagrams are dropped until it answers. */
  private isLate = false;
  private waitTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly lookup: OwnerLookup,
    private readonly share: HeldShare,
    private readonly events: SourceEvents,
    private readonly waitMs: number = OWNER_WAIT_MS,
  ) {}

  /** A well-formed datagram from `port` before the lock: held for the lookup, or dropped (why). */
  offer(port: number, msg: Buffer): SourceVerdict {
    if (this.others.has(port)) return 'other-user';
    if (this.isLate) return 'unknown';
    let queue = this.held.get(port);
    if (queue === undefined) {
      if (this.held.size >= MAX_CANDIDATES) return 'full';
      queue = [];
      this.held.set(port, queue);
    }
    if (queue.length >= MAX_HELD_PER_PORT || !this.share.take(msg.length)) return 'full';
    queue.push(msg);
    if (this.asking === null) this.ask();
    return 'held';
  }

  /** The association ended: held bytes go back, a lookup still running is ignored. */
  close(): void {
    this.isDone = true;
    this.stopWaiting();
    this.drain();
  }

  /** Drop every held datagram; how many there were. */
  private drain(): number {
    let n = 0;
    for (const port of [...this.held.keys()]) n += this.release(port);
    return n;
  }

  private ask(): void {
    const ports = [...this.held.keys()];
    this.asking = ports;
    this.waitTimer = setTimeout(() => this.outwaited(), this.waitMs);
    this.waitTimer.unref();
    this.lookup(ports).then(
      (r) => this.answered(ports, r),
      () => this.answered(ports, null),
    );
  }

  /** The lookup outlasted the wait: fail closed, its held datagrams and those that come until it answers dropped. */
  private outwaited(): void {
    this.waitTimer = null;
    if (this.isDone) return;
    this.isLate = true;
    this.events.unknown(this.drain());
  }

  private stopWaiting(): void {
    if (this.waitTimer !== null) clearTimeout(this.waitTimer);
    this.waitTimer = null;
    this.isLate = false;
  }

  private answered(ports: readonly number[], r: Awaited<ReturnType<OwnerLookup>>): void {
    this.asking = null;
    this.stopWaiting();
    if (this.isDone) return;
    // Nothing known (the tables could not tell): fail closed, the next datagram asks again.
    if (r === null) {
      this.events.unknown(this.drain());
      return;
    }
    if (r.control !== null) this.controlUid = r.control;
    const control = this.controlUid;
    for (let i = 0; i < ports.length; i++) {
      const port = ports[i] as number;
      const owner = r.ports[i] ?? null;
      // Sockets of several uids on the port, whoever holds the control connection: fail closed, not remembered.
      if (owner !== null && typeof owner === 'object') {
        this.events.shared(port, owner.shared, control, this.release(port));
        continue;
      }
      const uid = owner;
      // The tables list no control connection (a host without them): the first port is locked, as without attribution.
      if (control === null || uid === control) {
        this.isDone = true;
        // Held datagrams of a port asked late were dropped at the wait's end: it locks with none.
        const queue = this.held.get(port) ?? [];
        this.held.delete(port);
        for (const m of queue) this.share.release(m.length);
        // The other ports' datagrams are a foreign source's now.
        this.events.lock(port, queue, this.drain());
        return;
      }
      // A socket not listed (closed after it sent) is no one's known: not remembered, asked again
      // should a datagram come from its port later, and counted apart from another user's.
      if (uid === null) {
        this.events.unlisted(port, control, this.release(port));
        continue;
      }
      if (this.others.size >= MAX_OTHER_PORTS) this.others.delete(this.others.keys().next().value as number);
      this.others.set(port, uid);
      this.events.otherUser(port, uid, control, this.release(port));
    }
    if (this.held.size > 0) this.ask();
  }

  /** Drop `port`'s held datagrams; how many there were. */
  private release(port: number): number {
    const queue = this.held.get(port) ?? [];
    this.held.delete(port);
    for (const m of queue) this.share.release(m.length);
    return queue.length;
  }
}
