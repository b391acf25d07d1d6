/**
 * The HTTPS listener's connections whose TLS handshake is under way, so a drain can close them as
 * it closes the plain listener's connections that have sent no request (node:http's
 * closeIdleConnections and closeAllConnections know a TLS connection only once its handshake is
 * done). Without it, server.close() waited for each to finish or to reach its handshake timeout
 * (limits.headerTimeoutMs) before `serve` could exit.
 *
 * A connection is the raw socket node's TLS server wraps: added when it is handed to the TLS
 * server, forgotten at 'secureConnection' or 'tlsClientError' (the handshake's two ends, a reset
 * and the timeout included), both through the TLS socket's `_parent`, the socket it wraps.
 */
import type { Socket } from 'node:net';
import type { Server as TlsServer, TLSSocket } from 'node:tls';

const pending = new WeakMap<TlsServer, Set<Socket>>();

function parentOf(tlsSocket: TLSSocket): Socket | undefined {
  return (tlsSocket as TLSSocket & { _parent?: Socket | null })._parent ?? undefined;
}

/**
 * Track `server`'s handshakes under way. Call before anything that takes over its 'connection'
 * listeners (gateConnections), so only connections handed to the TLS server are counted. Adds one
 * Set entry per connection, no listener on it.
 */
export function trackHandshakes(server: TlsServer): void {
  const under = new Set<Socket>();
  pending.set(server, under);
  let isTracking = true;
  const forget = (tlsSocket: TLSSocket): void => {
    const raw = parentOf(tlsSocket);
    if (raw !== undefined) {
      under.delete(raw);
      return;
    }
    // A node whose TLS socket no longer names the socket it wraps: nothing could be forgotten, so
    // nothing is tracked (the drain then waits for the handshakes' timeouts, as before).
    isTracking = false;
    under.clear();
  };
  server.prependListener('connection', (socket: Socket) => {
    if (isTracking) under.add(socket);
  });
  server.prependListener('secureConnection', forget);
  server.prependListener('tlsClientError', (_err: Error, tlsSocket: TLSSocket) => forget(tlsSocket));
}

/** Close every connection of `server` whose TLS handshake is still under way (a drain). */
export function endHandshakes(server: TlsServer): void {
  const under = pending.get(server);
  if (under === undefined) return;
  for (const socket of under) socket.destroy();
  under.clear();
}
