/**
 * The PROXY protocol front (SPEC §8): behind a TCP load balancer, the client address comes from
 * the PROXY v1/v2 header the balancer prepends, not from the socket. When
 * `proxyProtocol.trustedSources` is non-empty, main.ts binds this small net.Server in place of the
 * HTTP, SOCKS and HTTPS listeners; it hands each connection to the real server once it knows who
 * the client is (on the HTTPS listener, TLS starts after the header: see carryRemoteToTls). With no
 * trusted sources there is no front at all (the real server is returned as is).
 *
 * Flow of a connection:
 *  1. accept (paused): a peer inside trustedSources MUST send a header; any other peer MUST NOT.
 *     An untrusted peer is counted against its source at once (holdUntrusted); one over the limit
 *     is handed over unread, for the listener's source gate to refuse (HTTP: 429) as without a front.
 *  2. read only what is needed, within limits.headerTimeoutMs:
 *     trusted → the whole header (gateway/protocol/proxy-protocol.ts); missing, malformed, late,
 *     or a PROXY command claiming DGRAM (this connection is a stream) → close + warn; closed
 *     before its first byte (a health check's TCP connect) → closed silently.
 *     Untrusted → just enough bytes to tell whether they start with a PROXY signature: yes →
 *     close + warn (a claimed address is never believed from an untrusted peer); no → passed
 *     through unchanged (late, silent or stalled inside a signature's first bytes → passed through
 *     with what came: the listener's own header timeout then applies).
 *  3. a PROXY command with an IPv4/IPv6 source overrides the socket's remoteAddress / remotePort /
 *     remoteFamily (own properties shadowing net.Socket's getters), so every listener, identity
 *     lookup and flow record sees the original client. LOCAL, UNKNOWN, UNSPEC, UNIX keep the real peer.
 *     localAddress/localPort stay the real ones (self-dial guard, UDP relays); the header's
 *     destination and the balancer's address go on the socket under kBalanced: local attribution
 *     looks up the client's socket to the balancer's front, and only when the balancer is on this host.
 *  4. the bytes read past the header are unshifted, our listeners removed, and the socket is
 *     emitted as a 'connection' of the real server, which reads it as if it had accepted it.
 */
import { Server, type Socket } from 'node:net';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import { type CidrMap, compileCidrSet } from '../../policy/cidr.ts';
import { type BalancedEndpoints, kAcceptedAt, kBalanced } from '../admission.ts';
import type { Logger } from '../context.ts';
import { clientAddress } from '../identity/client-address.ts';
import { formatAuthority } from '../protocol/authority.ts';
import { detectProxySignature, type ProxyHeader, parseProxyHeader } from '../protocol/proxy-protocol.ts';

export interface ProxyProtocolOptions {
  /**
   * CIDRs of the load balancers whose headers are believed (config `proxyProtocol.trustedSources`).
   * A function is read per connection, so a reload applies to new connections (whether a front
   * exists at all is decided once, from its value at start-up).
   */
  trustedSources: readonly string[] | (() => readonly string[]);
  /** How long a peer has to send its header (`limits.headerTimeoutMs`); a function is read per connection. */
  headerTimeoutMs: number | (() => number);
  log: Logger;
  /** Listener name for log lines ('http', 'socks'). */
  listener?: string;
  /**
   * Counts an untrusted peer against its source (`limits.maxConnectionsPerSource`) as it is
   * accepted, so the wait for its first bytes is counted too; false: at the limit (see step 1).
   */
  holdUntrusted?: (socket: Socket) => boolean;
}

/** What a connection has read before its first chunk. */
const EMPTY: Buffer = Buffer.alloc(0);

/**
 * Put a PROXY protocol front before `server`. Returns the server to listen on: `server` itself
 * when `trustedSources` is empty (nothing changes), else a new net.Server that feeds it. Closing
 * the real server closes the front; the front's 'listening' is forwarded to the real server
 * (node:http starts its header-timeout and connection tracking on it).
 */
export function wrapWithProxyProtocol<S extends Server>(server: S, opts: ProxyProtocolOptions): S | Server {
  const sourcesNow = typeof opts.trustedSources === 'function' ? opts.trustedSources : (): readonly string[] => opts.trustedSources as readonly string[];
  const timeoutNow = typeof opts.headerTimeoutMs === 'function' ? opts.headerTimeoutMs : (): number => opts.headerTimeoutMs as number;
  let compiledFrom = sourcesNow();
  if (compiledFrom.length === 0) return server;
  let trusted: CidrMap<string> = compileCidrSet(compiledFrom);
  const trustedNow = (): CidrMap<string> => {
    const sources = sourcesNow();
    if (sources !== compiledFrom) {
      compiledFrom = sources;
      trusted = compileCidrSet(sources);
    }
    return trusted;
  };
  const pending = new Set<Socket>();
  const front = new Server({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => accept(socket));
  front.on('listening', () => server.emit('listening'));
  let isClosed = false;
  const closeFront = (): void => {
    if (isClosed) return;
    isClosed = true;
    if (front.listening) front.close();
    // Sockets still mid-header would otherwise be handed to a closed server.
    for (const s of pending) s.destroy();
    pending.clear();
  };
  // net.Server.close() on the never-listening real server emits 'close' at once (http: after
  // closing its idle connections): that is the signal to stop accepting.
  server.once('close', closeFront);
  front.once('close', () => {
    isClosed = true;
  });

  function accept(socket: Socket): void {
    const peerText = socket.remoteAddress;
    if (peerText === undefined) {
      socket.destroy();
      return;
    }
    const peer = clientAddress(peerText);
    const isTrusted = peer.parsed !== null && trustedNow().longestPrefix(peer.parsed) >= 0;
    if (!isTrusted && opts.holdUntrusted !== undefined && !opts.holdUntrusted(socket)) {
      if (isClosed) socket.destroy();
      else server.emit('connection', socket);
      return;
    }
    const headerTimeoutMs = timeoutNow();
    const client = formatAuthority(peer.text, socket.remotePort ?? 0);
    // The bytes so far: the first chunk itself, then a prefix of `room`, which grows by doubling so a
    // header trickled in small reads is copied O(length) times in all, not once per read.
    let buf: Buffer = EMPTY;
    let room: Buffer | null = null;
    let isDone = false;
    pending.add(socket);

    const cleanup = (): void => {
      isDone = true;
      pending.delete(socket);
      clearTimeout(timer);
      socket.removeListener('readable', onReadable);
      socket.removeListener('end', onEnd);
      socket.removeListener('close', onClose);
      socket.removeListener('error', ignore);
    };
    const refuse = (why: string, extra: Record<string, unknown> = {}): void => {
      cleanup();
      opts.log.warn({ listener: opts.listener ?? null, client, trusted: isTrusted, why, ...extra }, 'PROXY protocol: connection refused');
      // A swallowed error listener stays: destroy() may still surface a late ECONNRESET.
      socket.on('error', ignore);
      socket.destroy();
    };
    const handOver = (header: ProxyHeader | null, rest: Buffer): void => {
      cleanup();
      if (isClosed) {
        socket.destroy();
        return;
      }
      if (header !== null && header.command === 'PROXY' && header.srcIp !== null && header.srcPort !== null) {
        defineRemote(socket, header.srcIp, header.srcPort, header.family === 'IPv6' ? 'IPv6' : 'IPv4');
        // What local attribution needs of the client's own socket: where it is connected (the
        // balancer's front), and whether the balancer, whose host the client is on, is on ours.
        (socket as BalancedSocket)[kBalanced] = { balancerIp: peer.text, reachedIp: header.dstIp ?? '', reachedPort: header.dstPort ?? 0 };
      }
      if (rest.length > 0) socket.unshift(rest);
      // With our 'readable' listener gone, the stream returns to its natural mode on the next
      // tick: flowing as soon as the real server adds its 'data' listener.
      server.emit('connection', socket);
    };

    function evaluate(): void {
      if (isTrusted) {
        const r = parseProxyHeader(buf);
        if (r.kind === 'need') return;
        if (r.kind === 'error') {
          refuse(r.code === 'no-signature' ? 'trusted source sent no PROXY header' : r.reason, { code: r.code });
          return;
        }
        // This is a TCP connection: a balancer relaying it says STREAM. A DGRAM claim (0x12, 0x22,
        // 0x32) describes some other connection, so its addresses are not this client's.
        if (r.header.command === 'PROXY' && r.header.transport === 'DGRAM') {
          refuse('v2 PROXY header claims a DGRAM transport on a TCP connection', { code: 'malformed' });
          return;
        }
        handOver(r.header, buf.subarray(r.consumed));
        return;
      }
      const sig = detectProxySignature(buf);
      if (sig === 'partial') return;
      if (sig === 'none') handOver(null, buf);
      else refuse(`PROXY ${sig} header from an untrusted peer`, { code: 'untrusted-header' });
    }
    function onReadable(): void {
      // Bounded: the codec decides within 16 + 65535 bytes (v2) or 107 (v1), 12 for untrusted peers.
      while (!isDone) {
        const chunk = socket.read() as Buffer | null;
        if (chunk === null) return;
        append(chunk);
        evaluate();
      }
    }
    function append(chunk: Buffer): void {
      if (buf.length === 0) {
        buf = chunk;
        return;
      }
      const length = buf.length + chunk.length;
      if (room === null || length > room.length) {
        const grown = Buffer.allocUnsafe(Math.max(length, 2 * buf.length));
        buf.copy(grown);
        room = grown;
      }
      chunk.copy(room, buf.length);
      buf = room.subarray(0, length);
    }
    function onEnd(): void {
      // A trusted peer that closes without a byte is a balancer's health check (a TCP connect):
      // silent, as an untrusted one's is and a SOCKS port probe's. A begun header still warns.
      if (isTrusted && buf.length > 0) refuse('closed before a complete PROXY header', { bytes: buf.length });
      else if (buf.length > 0 && detectProxySignature(buf) !== 'none') refuse('closed inside a PROXY signature', { bytes: buf.length });
      else {
        // A client that sent nothing (or, untrusted, nothing like a header) and half-closed: nothing to relay.
        cleanup();
        socket.destroy();
      }
    }
    function onClose(): void {
      cleanup();
    }
    const timer = setTimeout(() => {
      if (isDone) return;
      if (isTrusted) refuse(`no complete PROXY header within ${headerTimeoutMs} ms`, { code: 'timeout', bytes: buf.length });
      // An untrusted peer's bytes are never a header: a stalled `P`, `PR` or `\r\n\r\n` is a stalled
      // head like any other, the listener's to time out (HTTP: 408) as it does a silent peer's.
      else handOver(null, buf);
    }, headerTimeoutMs);

    socket.on('error', ignore);
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('readable', onReadable);
  }

  return front;
}

/**
 * For a TLS server (the HTTPS listener): node wraps the accepted socket in a TLSSocket that asks the
 * TCP handle for its peer again, not the socket. So the peer the socket was accepted with (or a
 * PROXY header's source) is copied onto the TLSSocket before node:https, the identity code or a flow
 * record reads it: the kernel no longer knows the peer of a connection the client has since reset.
 * A failed handshake's TLSSocket gets it too, before `client TLS refused` is logged: behind a load
 * balancer that line named the balancer, not the client its PROXY header named.
 */
export function carryRemoteToTls(server: TlsServer): void {
  server.prependListener('secureConnection', carryRemote);
  server.prependListener('tlsClientError', (_err: Error, tlsSocket: TLSSocket) => carryRemote(tlsSocket));
}

function carryRemote(tlsSocket: TLSSocket): void {
  // `_parent`: the socket a TLSSocket was made from (node has set it since its first TLS wrap).
  const raw = (tlsSocket as TLSSocket & { _parent?: Socket | null })._parent;
  if (!raw) return;
  const acceptedAt = (raw as BalancedSocket)[kAcceptedAt];
  if (acceptedAt !== undefined) (tlsSocket as BalancedSocket)[kAcceptedAt] = acceptedAt;
  if (raw.remoteAddress === undefined) return;
  defineRemote(tlsSocket, raw.remoteAddress, raw.remotePort ?? 0, raw.remoteFamily === 'IPv6' ? 'IPv6' : 'IPv4');
  const balanced = (raw as BalancedSocket)[kBalanced];
  if (balanced !== undefined) (tlsSocket as BalancedSocket)[kBalanced] = balanced;
}

/** A socket the front handed over with a PROXY header's addresses (see BalancedEndpoints). */
type BalancedSocket = Socket & { [kBalanced]?: BalancedEndpoints; [kAcceptedAt]?: number };

/** Make the socket report the original client (own data properties shadow net.Socket's getters). */
function defineRemote(socket: Socket, ip: string, port: number, family: 'IPv4' | 'IPv6'): void {
  Object.defineProperty(socket, 'remoteAddress', { value: ip, configurable: true, enumerable: true });
  Object.defineProperty(socket, 'remotePort', { value: port, configurable: true, enumerable: true });
  Object.defineProperty(socket, 'remoteFamily', { value: family, configurable: true, enumerable: true });
}

function ignore(): void {}
