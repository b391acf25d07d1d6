/**
 * The gateway's own file descriptors running out (EMFILE / ENFILE on a dial), or its local ports or
 * socket memory (EADDRNOTAVAIL: no ephemeral port left towards that address and port; ENOBUFS,
 * ENOMEM). Every failing flow is recorded `out-of-descriptors` (or `out-of-sockets`) and its client
 * told 503 / SOCKS5 0x01; the operator hears it here, one error per ten seconds with how many dials
 * failed since the last one, not a line per flow (a client retrying in a loop would flood the log
 * while the process can do nothing about it).
 *
 * The accept side cannot be seen from JavaScript: on EMFILE libuv accepts and closes what waits in
 * the listen queue without a callback, so those clients get a closed connection and no flow exists.
 * The descriptors come back as soon as connections close; nothing here is remembered past that.
 */
import type { Logger } from './context.ts';

const LOG_EVERY_MS = 10_000;

export class DescriptorShortage {
  /** Dials that failed for want of a descriptor since start. */
  failedTotal = 0;
  private pending = 0;
  private loggedAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** A dial found no descriptor (`errno`: EMFILE or ENFILE), or no local port or socket memory. */
  dialFailed(errno: string): void {
    this.failedTotal++;
    this.pending++;
    const at = this.now();
    if (at - this.loggedAt < LOG_EVERY_MS) return;
    if (errno === 'EMFILE' || errno === 'ENFILE') {
      this.log.error(
        { code: 'EGW_OUT_OF_DESCRIPTORS', errno, failedDials: this.pending, failedTotal: this.failedTotal },
        'out of file descriptors: new flows fail (503, SOCKS5 0x01) until connections close; raise the limit (LimitNOFILE, ulimit -n) or lower limits.maxConnectionsPerSource',
      );
    } else {
      this.log.error(
        { code: 'EGW_OUT_OF_SOCKETS', errno, failedDials: this.pending, failedTotal: this.failedTotal },
        'out of sockets (local ports or socket memory): new flows fail (503, SOCKS5 0x01) until connections close; widen net.ipv4.ip_local_port_range or lower limits.maxConnectionsPerSource',
      );
    }
    this.pending = 0;
    this.loggedAt = at;
  }
}
