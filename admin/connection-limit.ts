/**
 * Open connections per source address on the admin listener (`admin.maxConnectionsPerSource`,
 * 0 = no limit). The held 401s of the failure delay are cheap to wait out in parallel: one address
 * with 1,000 connections made 163 token guesses a second, and nothing bounded how many it opened.
 * A connection over the limit is answered 429 in the API's error shape and closed before node:http
 * parses anything from it.
 *
 * Counted as the proxy listeners count theirs (SourceConnections, gateway/listeners/source-limit.ts),
 * apart from them: an address's admin connections do not use up its proxy connections.
 */
import type { Server, Socket } from 'node:net';
import { httpDate } from '../gateway/listeners/http-date.ts';
import { lingerThenDestroy } from '../gateway/listeners/http-refusal.ts';
import { SourceConnections } from '../gateway/listeners/source-limit.ts';

/** How long a refused connection may linger so the client reads the 429 before it is dropped. */
const LINGER_MS = 500;

const REFUSAL_BODY = JSON.stringify({
  error: 'too-many-requests',
  message: 'too many connections open from this address to the admin API (admin.maxConnectionsPerSource)',
});
/** The 429 after its status line and Date (httpDate, added per refusal). */
const REFUSAL_REST = [
  'content-type: application/json; charset=utf-8',
  `content-length: ${Buffer.byteLength(REFUSAL_BODY)}`,
  'retry-after: 1',
  'cache-control: no-store',
  'x-content-type-options: nosniff',
  'connection: close',
  '',
  REFUSAL_BODY,
].join('\r\n');

/** Open connections per source on the admin listener: the data plane's counter, with the admin listener's own answer. */
export class AdminConnections extends SourceConnections {
  constructor(limit: () => number) {
    super(limit, null);
  }

  /**
   * Put the limit in front of `server`'s own connection handling (node:http's parser is a
   * 'connection' listener): it runs only for admitted sockets.
   */
  gate(server: Server): void {
    const handlers = server.listeners('connection') as Array<(socket: Socket) => void>;
    server.removeAllListeners('connection');
    server.on('connection', (socket: Socket) => {
      if (this.admit(socket, 'admin')) {
        for (const h of handlers) h.call(server, socket);
        return;
      }
      refuse(socket);
    });
  }
}

/**
 * Answer 429 and close, read and drop what the client already sent meanwhile (lingerThenDestroy:
 * closing with its request unread would reset the connection and could wipe the answer).
 */
function refuse(socket: Socket): void {
  socket.on('error', () => socket.destroy());
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(`HTTP/1.1 429 Too Many Requests\r\ndate: ${httpDate()}\r\n${REFUSAL_REST}`);
  lingerThenDestroy(socket, LINGER_MS);
}
