/**
 * Open connections per source address on the admin listener (`admin.maxConnectionsPerSource`,
 * 0 = no limit). The held 401s of the failure delay are cheap to wait out in parallel: one address
 * with 1,000 connections made 163 token guesses a second, and nothing bounded how many it opened.
 * A connection over the limit is answered 429 in the API's error shape and closed before node:http
 * parses anything from it.
 *
 * Memory: one Map entry per source with a connection open (removed at its last close); the source
 * a socket was charged to sits on the socket, so no closure is made per connection.
 */
import type { Server, Socket } from 'node:net';

/** How long a refused connection may linger so the client reads the 429 before it is dropped. */
const LINGER_MS = 500;
const kSource = Symbol('egressgate.admin.source');
type CountedSocket = Socket & { [kSource]?: string };

const REFUSAL_BODY = JSON.stringify({
  error: 'too-many-requests',
  message: 'too many connections open from this address to the admin API (admin.maxConnectionsPerSource)',
});
const REFUSAL = [
  'HTTP/1.1 429 Too Many Requests',
  'content-type: application/json; charset=utf-8',
  `content-length: ${Buffer.byteLength(REFUSAL_BODY)}`,
  'retry-after: 1',
  'cache-control: no-store',
  'connection: close',
  '',
  REFUSAL_BODY,
].join('\r\n');

export interface AdminConnectionStats {
  /** Connections refused on arrival since start. */
  refusedTotal: number;
  /** Sources with at least one connection open. */
  sources: number;
}

export class AdminConnections {
  private readonly open = new Map<string, number>();
  refusedTotal = 0;
  private readonly release: (this: CountedSocket) => void;

  constructor(private readonly limit: () => number) {
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

  /** Count `socket` against its source; false (nothing counted) when the source is at its limit. */
  admit(socket: Socket): boolean {
    const source = socket.remoteAddress;
    if (source === undefined) return false;
    const n = this.open.get(source) ?? 0;
    const max = this.limit();
    if (max > 0 && n >= max) {
      this.refusedTotal++;
      return false;
    }
    this.open.set(source, n + 1);
    (socket as CountedSocket)[kSource] = source;
    socket.on('close', this.release);
    return true;
  }

  stats(): AdminConnectionStats {
    return { refusedTotal: this.refusedTotal, sources: this.open.size };
  }

  /**
   * Put the limit in front of `server`'s own connection handling (node:http's parser is a
   * 'connection' listener): it runs only for admitted sockets.
   */
  gate(server: Server): void {
    const handlers = server.listeners('connection') as Array<(socket: Socket) => void>;
    server.removeAllListeners('connection');
    server.on('connection', (socket: Socket) => {
      if (this.admit(socket)) {
        for (const h of handlers) h.call(server, socket);
        return;
      }
      refuse(socket);
    });
  }
}

/**
 * Answer 429 and close. What the client already sent is read and dropped until it closes its side
 * or LINGER_MS pass: closing with its request unread would reset the connection and could wipe the
 * answer from the client's receive buffer.
 */
function refuse(socket: Socket): void {
  socket.on('error', () => socket.destroy());
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(REFUSAL);
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.once('end', () => socket.destroy());
  socket.resume();
}
