/**
 * The destinations of one SOCKS5 UDP association (socks5-udp.ts): found per client datagram by the
 * ATYP..DST.PORT bytes it names (no string per datagram while there are few), and per reply by the
 * address and port it came from (its ReplySlot: the spelling last sent to there). Each destination is admitted once; until then its datagrams wait
 * in its queue, whose bytes the association's share and the gateway's ledger account for.
 *
 * The spellings of one destination (an IPv4 address as a domain name, in hex or as an integer,
 * `127.1`, IPv4-mapped IPv6, a name's case or trailing dot) are each found by their own bytes and
 * answered under their own header, but share one leg (legNamed): its counters and its byte budget.
 * A leg of its own per spelling was a fresh budget to the same place for each.
 */
import { isIPv6 } from 'node:net';
import { unmapIPv4 } from '../../policy/address.ts';
import type { Mode, PolicySnapshot } from '../../policy/types.ts';
import type { FlowLeg } from '../flow/flow.ts';
import type { UdpHeader } from '../protocol/socks5-codec.ts';

/** Below this many destinations a linear byte compare beats building a string key. */
const FAST_SCAN = 8;

export interface Destination {
  /** ATYP..DST.PORT exactly as the client sent it: the lookup key. */
  readonly key: Buffer;
  readonly host: string;
  readonly port: number;
  state: 'pending' | 'allowed' | 'refused';
  /** Bytes of the datagrams in `queue` (whole datagrams: a payload view keeps its datagram alive). */
  heldBytes: number;
  /** The admitted address (IPv4-mapped unwrapped) and which upstream socket reaches it. */
  ip: string;
  isV6: boolean;
  /** Its bytes each way and byte budget, once admitted (the flow's leg to it); null until then. */
  leg: FlowLeg | null;
  /** RSV RSV FRAG ATYP ADDR PORT prepended to replies: built once. */
  readonly replyHeader: Buffer;
  /** Where replies from its address and port find their destination, once admitted (shared by its spellings). */
  replies: ReplySlot | null;
  /** Payload views of the datagrams waiting for admission; null once admitted or refused. */
  queue: Buffer[] | null;
  /**
   * The policy and runtime mode its last admission started under: a refused destination is judged
   * again once either has changed (a switch to monitor mode, a reload), as a new connection would be.
   */
  judgedUnder: PolicySnapshot | null;
  judgedOverride: Mode | null;
  /**
   * Refused because its name did not resolve: from this time (ctx.flows.now()) a datagram to it has
   * the name looked up again; 0 when its refusal is for the association's life under one policy.
   */
  lookUpAgainAt: number;
  /** Being admitted again only because lookUpAgainAt passed (no policy or mode change since its refusal). */
  isLookUpRetry: boolean;
}

/**
 * The destination that answers for replies from one address and port: of the spellings admitted
 * there, the one the client sent to last (sentTo), so a reply comes back under the header the
 * client used, whichever spelling was admitted last.
 */
export interface ReplySlot {
  dest: Destination;
}

export class DestinationTable {
  /** Every destination named so far, in order. */
  readonly all: Destination[] = [];
  private readonly byKey = new Map<string, Destination>();
  /** canonical(host) and port → the leg of that destination, once one spelling of it is admitted. */
  private readonly legs = new Map<string, FlowLeg>();
  /** ip → port → its reply slot, for replies (rinfo gives ip and port; no key string per datagram). */
  private readonly byAddress = new Map<string, Map<number, ReplySlot>>();
  private last: Destination | null = null;

  get size(): number {
    return this.all.length;
  }

  /** The destination the datagram `msg` (its header parsed into `hdr`) names, or null for a new one. */
  find(msg: Buffer, hdr: UdpHeader): Destination | null {
    const len = hdr.keyEnd - hdr.keyStart;
    const last = this.last;
    if (last !== null && last.key.length === len && msg.compare(last.key, 0, len, hdr.keyStart, hdr.keyEnd) === 0) return last;
    if (this.all.length <= FAST_SCAN) {
      for (const d of this.all) {
        if (d.key.length === len && msg.compare(d.key, 0, len, hdr.keyStart, hdr.keyEnd) === 0) {
          this.last = d;
          return d;
        }
      }
      return null;
    }
    const d = this.byKey.get(msg.toString('latin1', hdr.keyStart, hdr.keyEnd)) ?? null;
    if (d !== null) this.last = d;
    return d;
  }

  /** A new destination, pending admission, with the datagram that named it as its first queued. */
  add(msg: Buffer, hdr: UdpHeader, host: string): Destination {
    const key = Buffer.from(msg.subarray(hdr.keyStart, hdr.keyEnd));
    const replyHeader = Buffer.alloc(3 + key.length);
    key.copy(replyHeader, 3);
    const dest: Destination = {
      key,
      host,
      port: hdr.port,
      state: 'pending',
      heldBytes: msg.length,
      ip: '',
      isV6: false,
      leg: null,
      replyHeader,
      replies: null,
      queue: [msg.subarray(hdr.dataOffset)],
      judgedUnder: null,
      judgedOverride: null,
      lookUpAgainAt: 0,
      isLookUpRetry: false,
    };
    this.all.push(dest);
    this.byKey.set(key.toString('latin1'), dest);
    this.last = dest;
    return dest;
  }

  /** The leg of an admitted destination named `host` (in any spelling) and `port`, if any. */
  legNamed(host: string, port: number): FlowLeg | undefined {
    return this.legs.get(`${canonical(host)} ${port}`);
  }

  /**
   * Admitted at `ip`, its bytes counted in `leg` (legNamed's for another spelling of it): replies
   * from ip:port are now this destination's. `isShared` false: no other spelling gets its leg.
   */
  allow(dest: Destination, ip: string, leg: FlowLeg, isShared = true): void {
    dest.state = 'allowed';
    dest.leg = leg;
    const name = `${canonical(dest.host)} ${dest.port}`;
    if (isShared && !this.legs.has(name)) this.legs.set(name, leg);
    dest.ip = ip;
    dest.isV6 = isIPv6(ip);
    let ports = this.byAddress.get(ip);
    if (ports === undefined) {
      ports = new Map();
      this.byAddress.set(ip, ports);
    }
    let slot = ports.get(dest.port);
    if (slot === undefined) {
      slot = { dest };
      ports.set(dest.port, slot);
    }
    dest.replies = slot;
  }

  /** A datagram went to an admitted `dest`: replies from its address and port are its (one write, no allocation). */
  sentTo(dest: Destination): void {
    (dest.replies as ReplySlot).dest = dest;
  }

  /**
   * The admitted destination a reply from ip:port belongs to: the spelling last sent to there. Node
   * names a link-local sender with its zone (`fe80::1%eth0`); a destination is admitted and keyed
   * without one (a zone id in a destination is refused, and the relay sends unscoped), so the zone is
   * not part of the lookup. Only such a sender's address has a `%`: no string is made for any other.
   */
  replyFrom(ip: string, port: number): Destination | undefined {
    const zone = ip.indexOf('%');
    return this.byAddress.get(zone === -1 ? ip : ip.slice(0, zone))?.get(port)?.dest;
  }
}

/**
 * One spelling per destination: `host` is normalised already (normaliseHost for a name); an
 * IPv4-mapped IPv6 literal in any spelling is its IPv4 address, which admission classifies and the
 * relay sends to.
 */
function canonical(host: string): string {
  return host.includes(':') ? unmapIPv4(host) : host;
}
