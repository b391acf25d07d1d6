/**
 * Where SOCKS5 UDP relays are bound: `limits.udpRelayPorts` ("LO-HI"), or any ephemeral port when it
 * is unset. A firewall, a Kubernetes Service / NetworkPolicy and the endpoint agent's
 * `--udp-relay-ports` can then name the ports relays listen on.
 *
 * Within a range each association tries ports from a cursor that moves on past every port handed
 * out (so the next one starts after it, where the relays of a full turn ago are likeliest gone);
 * a port one of the gateway's own relays holds on that address is skipped without a bind, one some
 * other socket holds (EADDRINUSE) costs an attempt. At most MAX_BINDS binds and MAX_EXAMINED ports
 * per association, whatever the range's size: past them the ASSOCIATE is refused (SOCKS5 0x01,
 * closeReason `out-of-relay-ports`), and the operator hears it here, one error per LOG_EVERY_MS
 * with how many were refused since the last, not a line per association.
 *
 * One per SOCKS listener; it owns the cursor and the log's pace. The range is read per association
 * from the snapshot the handshake used, so a reload applies to new associations.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { Logger } from '../context.ts';
import { parsePortSpec } from '../../policy/ports.ts';

/** Binds one association may try (each a socket and a system call) before it is refused. */
export const MAX_BINDS = 16;
/** Ports one association may look at, the gateway's own relays' ports skipped without a bind included. */
export const MAX_EXAMINED = 256;
const LOG_EVERY_MS = 10_000;

export type RelayBind = { ok: true; socket: UdpSocket } | { ok: false; exhausted: true; range: string; tried: number } | { ok: false; exhausted: false; err: Error };

export class UdpRelayPorts {
  /** ASSOCIATEs refused for want of a relay port since start. */
  refusedTotal = 0;
  private pending = 0;
  private loggedAt = Number.NEGATIVE_INFINITY;
  /** The last range text seen and its bounds (parsed once per text, not per association). */
  private text: string | null = null;
  private lo = 0;
  private hi = -1;
  /** Offset into the range of the next port to try. */
  private cursor = 0;

  constructor(
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * A relay socket bound on `address`: on port 0 when `range` is null, else on a port of the range
   * that `isOwn` (the gateway's live relays on that address) does not name and no other socket holds.
   * `onError` is the socket's error listener once it is bound.
   */
  async bind(range: string | null, type: 'udp4' | 'udp6', address: string, isOwn: (port: number) => boolean, onError: (err: Error) => void): Promise<RelayBind> {
    if (range === null) {
      const r = await bindOne(type, address, 0, onError);
      return r instanceof Error ? { ok: false, exhausted: false, err: r } : { ok: true, socket: r };
    }
    if (range !== this.text) this.setRange(range);
    const size = this.hi - this.lo + 1;
    const examine = Math.min(size, MAX_EXAMINED);
    let tried = 0;
    for (let i = 0; i < examine && tried < MAX_BINDS; i++) {
      const port = this.lo + (this.cursor % size);
      this.cursor = (this.cursor + 1) % size;
      if (isOwn(port)) continue;
      tried++;
      const r = await bindOne(type, address, port, onError);
      if (!(r instanceof Error)) return { ok: true, socket: r };
      const code = (r as NodeJS.ErrnoException).code;
      // Held by another socket (EADDRINUSE), or a privileged port (EACCES): the next one may do.
      if (code !== 'EADDRINUSE' && code !== 'EACCES') return { ok: false, exhausted: false, err: r };
    }
    this.exhausted(range, tried);
    return { ok: false, exhausted: true, range, tried };
  }

  private setRange(range: string): void {
    const r = parsePortSpec(range);
    // The config was validated: an unparsable range cannot reach here; treat it as one port 0 wide.
    [this.lo, this.hi] = 'error' in r ? [0, 0] : r;
    this.text = range;
    this.cursor = 0;
  }

  private exhausted(range: string, tried: number): void {
    this.refusedTotal++;
    this.pending++;
    const at = this.now();
    if (at - this.loggedAt < LOG_EVERY_MS) return;
    this.log.error(
      { code: 'EGW_OUT_OF_RELAY_PORTS', udpRelayPorts: range, tried, refused: this.pending, refusedTotal: this.refusedTotal },
      'out of SOCKS5 UDP relay ports: UDP ASSOCIATE refused (0x01) until relays close; widen limits.udpRelayPorts (and the firewall, Service and agent --udp-relay-ports with it)',
    );
    this.pending = 0;
    this.loggedAt = at;
  }
}

/** One bind: the bound socket (with `onError` as its error listener), or why it failed (socket closed). */
function bindOne(type: 'udp4' | 'udp6', address: string, port: number, onError: (err: Error) => void): Promise<UdpSocket | Error> {
  const s = createSocket({ type });
  return new Promise((resolve) => {
    const failed = (err: Error): void => {
      try {
        s.close();
      } catch {
        // Never bound: nothing to release.
      }
      resolve(err);
    };
    s.once('error', failed);
    s.bind({ address, port, exclusive: true }, () => {
      s.removeListener('error', failed);
      s.on('error', onError);
      resolve(s);
    });
  });
}
