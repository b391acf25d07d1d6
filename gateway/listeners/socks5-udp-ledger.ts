/**
 * What the UDP associations of one SOCKS listener share: the bytes of client datagrams held while
 * their destination is being admitted, under one gateway-wide cap, and the drop counts the metrics
 * read (gw_socks_udp_*). Each association also caps its own share (socks5-udp.ts); this cap is what
 * keeps many associations together from holding the process's memory.
 */

/** Bytes all associations together may hold for destinations being admitted. */
export const GATEWAY_HELD_BYTES = 64 * 1024 * 1024;
/**
 * Bytes of datagrams one association may hold while their destinations are admitted: 16 datagrams
 * of the largest size (one destination's full queue), or ~700 of a usual 1,500. Names whose DNS never
 * answers keep their destinations (and, past 8 at once, the ones queued behind them) waiting for the
 * resolver's timeout: without a cap, 4,096 destinations × 16 × 64 KB (4 GB) from one association.
 */
export const ASSOCIATION_HELD_BYTES = 1024 * 1024;

export interface UdpRelayStats {
  /** Bytes of client datagrams held now, waiting for their destination's admission. */
  heldBytes: number;
  /** Client datagrams dropped since start because the bytes or destinations waiting were at a cap. */
  heldDroppedTotal: number;
  /** Replies from destinations dropped since start: too large to carry with the SOCKS UDP header. */
  repliesDroppedTotal: number;
  /**
   * Client datagrams dropped since start before the association's port was locked: sent from a
   * socket another uid owns than the control connection's.
   */
  otherUserDroppedTotal: number;
  /**
   * Client datagrams dropped since start before the association's port was locked: the socket
   * tables listed no socket on their port (closed right after sending, or a raw socket's forgery).
   */
  ownerUnlistedDroppedTotal: number;
  /**
   * Client datagrams dropped since start before the association's port was locked: their socket's
   * owner was not known within the wait (a lookup that outlasted it, or told nothing), or their
   * port was shared by sockets of several uids (SO_REUSEADDR).
   */
  ownerUnknownDroppedTotal: number;
}

export class UdpRelayLedger {
  heldBytes = 0;
  heldDroppedTotal = 0;
  repliesDroppedTotal = 0;
  otherUserDroppedTotal = 0;
  ownerUnlistedDroppedTotal = 0;
  ownerUnknownDroppedTotal = 0;

  constructor(readonly maxHeldBytes: number = GATEWAY_HELD_BYTES) {}

  /** Take `n` bytes of the gateway-wide share; false (nothing taken) when that would pass the cap. */
  take(n: number): boolean {
    if (this.heldBytes + n > this.maxHeldBytes) return false;
    this.heldBytes += n;
    return true;
  }

  /** Give back bytes taken (the datagrams were sent on, dropped, or the association ended). */
  release(n: number): void {
    this.heldBytes -= n;
  }

  stats(): UdpRelayStats {
    return {
      heldBytes: this.heldBytes,
      heldDroppedTotal: this.heldDroppedTotal,
      repliesDroppedTotal: this.repliesDroppedTotal,
      otherUserDroppedTotal: this.otherUserDroppedTotal,
      ownerUnlistedDroppedTotal: this.ownerUnlistedDroppedTotal,
      ownerUnknownDroppedTotal: this.ownerUnknownDroppedTotal,
    };
  }
}

/** One association's held bytes: within its own cap and, together with every other's, the ledger's. */
export class HeldShare {
  bytes = 0;

  constructor(
    private readonly ledger: UdpRelayLedger,
    private readonly max: number = ASSOCIATION_HELD_BYTES,
  ) {}

  /** Take `n` bytes; false (nothing taken) when this association or the gateway is at its cap. */
  take(n: number): boolean {
    if (this.bytes + n > this.max || !this.ledger.take(n)) return false;
    this.bytes += n;
    return true;
  }

  release(n: number): void {
    this.bytes -= n;
    this.ledger.release(n);
  }
}
