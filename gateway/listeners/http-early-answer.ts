/**
 * The end of a node:http client connection whose request was answered by its origin before the
 * request body was whole (an early 413, 401, …: the origin read the head and answered).
 *
 * undici then stops sending the body and destroys the request stream, and node:http, whose parser
 * had no reader left for the rest of the body, stopped reading the client socket: the answer went
 * out saying keep-alive, the client's next request was never read, and node's keep-alive timer
 * reset the connection seconds later. Reading an unknown amount of body only to discard it is not
 * worth a connection (as a refusal with an unread body, sendRefusal), so the answer says
 * `connection: close` and the connection ends with a lingering close (RFC 9112 §9.6): our FIN
 * after the answer, what the client still sends read and dropped until its FIN or LINGER_MS, then
 * the socket destroyed. Closing at once would reset a connection with upload bytes still arriving,
 * and the reset wipes the answer from the client's receive buffer before it reads it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { ConnectionState } from './http-connection-state.ts';
import { lingerAfterAnswer } from './http-refusal.ts';

/**
 * Called when the origin's answer is complete and `req`'s body is not (its head said
 * `connection: close`): requests pipelined behind the body are dropped unanswered, node's parser
 * drops the rest of the body instead of stopping at the destroyed request, and once the answer is
 * written the connection ends lingering (lingerAfterAnswer) rather than by node's destroy-on-finish.
 * Only this rare path pays for it: a normal upload costs nothing more per chunk.
 */
export function closeAfterEarlyAnswer(req: IncomingMessage, res: ServerResponse, socket: Socket, connection: ConnectionState): void {
  connection.isShedding = true;
  // node:http's own mark for a body nobody reads (what it sets for an unread body after the answer,
  // IncomingMessage._dump): its parser drops the bytes rather than pushing them to a request that
  // undici destroys, which stopped reading the socket. Set, not _dump() called: that resumes a
  // stream whose socket undici is about to detach.
  (req as IncomingMessage & { _dumped?: boolean })._dumped = true;
  lingerAfterAnswer(res, socket);
}
