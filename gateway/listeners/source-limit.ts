/**
 * Open client connections per source address, across the HTTP, HTTPS and SOCKS listeners
 * (`limits.maxConnectionsPerSource`, 0 = no limit). Per-identity limits count flows, and only once a
 * request has been admitted; a client that opens connections and sends nothing (or keeps them idle
 * between requests) is bounded by nothing else but the header and keep-alive timeouts. From one
 * host, that is enough to take every file descriptor of the process, and then the kernel's accept
 * queue is emptied and closed silently (libuv's EMFILE handling) for everyone. This caps one source;
 * squid's `client_ip_max_connections` is the same idea.
 *
 * The source is the socket's remoteAddress as the listener sees it, i.e. after a PROXY protocol
 * front set the claimed client (a trusted balancer is not one source), an IPv4 client of a
 * dual-stack listener (`::ffff:a.b.c.d`) as plain IPv4: one host is one source whichever listener
 * it reached. An IPv6 source is its /64 (`2001:db8:1:2::/64`), not its address: one host holds a
 * whole /64 and picks addresses in it freely (SLAAC privacy addresses), so counted per address it
 * stepped around the limit by changing address. A link-local client (fe80::/10, whose /64 is its
 * whole link) is its address. A refused connection is
 * closed at once: an HTTP listener first answers 429 (`rate-limit`), the HTTPS and SOCKS listeners
 * cannot answer before their handshake. One warning per source per ten seconds says how many were
 * refused.
 */
import type { Server, Socket } from 'node:net';
import { formatIPv6, parseIPv6, unmapIPv4 } from '../../policy/address.ts';
import { kAcceptedAt } from '../admission/types.ts';
import type { Logger } from '../context.ts';
import { mapError } from '../reject.ts';
import { refuseConnectionNow } from './http-refusal.ts';

const WARN_EVERY_MS = 10_000;
/** The source a counted socket was charged to (no closure per connection). */
const kSource = Symbol('egressgate.source');
type CountedSocket = Socket & { [kSource]?: string };

/**
 * The source `remote` (a socket's remoteAddress) is counted as: an IPv4 address (an IPv4-mapped one
 * as IPv4), an IPv6 address's /64, or a link-local IPv6 address itself (its zone kept: one address
 * per link). One parse and one 16-byte array per IPv6 connection; none for IPv4.
 */
export function sourceOf(remote: string): string {
  const ip = unmapIPv4(remote);
  if (!ip.includes(':')) return ip;
  const b = parseIPv6(ip);
  if (b === null || (b[0] === 0xfe && ((b[1] as number) & 0xc0) === 0x80)) return ip;
  b.fill(0, 8);
  return `${formatIPv6(b)}/64`;
}

export interface SourceLimitStats {
  /** Connections refused since start. */
  refusedTotal: number;
  /** Sources with at least one open connection. */
  sources: number;
}

export class SourceConnections {
  private readonly open = new Map<string, number>();
  /** Per source: refusals not yet logged, and when it was last logged. */
  private readonly refusals = new Map<string, { pending: number; loggedAt: number }>();
  refusedTotal = 0;
  private readonly release: (this: CountedSocket) => void;

  /** `log`: where refusals are reported (one warning per source per ten seconds); null for none (the admin listener counts them in its metrics). */
  constructor(
    private readonly limit: () => number,
    private readonly log: Logger | null,
    private readonly now: () => number = Date.now,
  ) {
    const open = this.open;
    this.release = function (this: CountedSocket): void {
      const source = this[kSource];
      if (source === undefined) return;
      this[kSource] = undefined;
      const n = (open.get(source) ?? 1) - 1;
      if (n <= 0) open.delete(source);
      else open.set(source, n);
    };
  }

  /**
   * Count `socket` against its source; false when the source is at its limit (nothing counted).
   * Counted with no limit set too, so a reload that sets one applies to what is already open.
   */
  admit(socket: Socket, listener: string): boolean {
    // Already counted by a PROXY protocol front (hold): once per connection.
    if ((socket as CountedSocket)[kSource] !== undefined) return true;
    const remote = socket.remoteAddress;
    if (remote === undefined) return false;
    const source = sourceOf(remote);
    const max = this.limit();
    if (!this.count(socket, source, max)) {
      this.refused(source, listener, max);
      return false;
    }
    return true;
  }

  /**
   * Count a connection a PROXY protocol front accepted from an untrusted peer (its address is final:
   * no header will be believed from it), before the front waits up to `limits.headerTimeoutMs` for
   * its first bytes. False, nothing counted nor logged, when its source is at the limit: the front
   * then hands it over at once and admit() refuses it as the listener does without a front.
   */
  hold(socket: Socket): boolean {
    const remote = socket.remoteAddress;
    return remote !== undefined && this.count(socket, sourceOf(remote), this.limit());
  }

  private count(socket: Socket, source: string, max: number): boolean {
    const n = this.open.get(source) ?? 0;
    if (max > 0 && n >= max) return false;
    this.open.set(source, n + 1);
    (socket as CountedSocket)[kSource] = source;
    socket.on('close', this.release);
    return true;
  }

  stats(): SourceLimitStats {
    return { refusedTotal: this.refusedTotal, sources: this.open.size };
  }

  private refused(source: string, listener: string, max: number): void {
    this.refusedTotal++;
    if (this.log === null) return;
    const at = this.now();
    let r = this.refusals.get(source);
    if (r === undefined) {
      if (this.refusals.size >= 10_000) this.refusals.clear();
      r = { pending: 0, loggedAt: 0 };
      this.refusals.set(source, r);
    }
    r.pending++;
    if (at - r.loggedAt < WARN_EVERY_MS) return;
    this.log.warn(
      { listener, client: source, refused: r.pending, limit: max, code: 'EGW_SOURCE_CONNECTIONS' },
      'connections refused: too many open from this address (limits.maxConnectionsPerSource)',
    );
    r.pending = 0;
    r.loggedAt = at;
  }
}

/**
 * Put the source limit in front of `server`'s own connection handling: its 'connection' listeners
 * run only for admitted sockets. The others are closed at once, the plain HTTP listener's with a 429
 * first (HTTPS and SOCKS cannot answer before their handshakes).
 */
export function gateConnections(server: Server, sources: SourceConnections, listener: 'http' | 'https' | 'socks'): void {
  const handlers = server.listeners('connection') as Array<(socket: Socket) => void>;
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    // No peer address: the client reset the connection before it was accepted (the kernel still
    // hands it over). Nothing can identify it, so nothing may be done for it: no flow, no answer.
    if (socket.remoteAddress === undefined) {
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    if (sources.admit(socket, listener)) {
      (socket as Socket & { [kAcceptedAt]?: number })[kAcceptedAt] = Date.now();
      for (const h of handlers) h.call(server, socket);
    } else if (listener === 'http') refuseConnectionNow(socket, mapError('EGW_SOURCE_CONNECTIONS'));
    else socket.destroy();
  });
}
