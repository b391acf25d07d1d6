/**
 * An origin connection reset while its response's body runs until the connection closes (no
 * Content-Length, not chunked) cut that body short; undici ends such a response as complete all
 * the same (client-h1.js onHttpSocketError: "On Mac OS, we get an ECONNRESET even if there is a
 * full body"). The exchanges must tell it from the origin's clean close, as a direct client would
 * see the reset. Each origin socket gets this module's 'error' listener before undici's (at the
 * connect callback): on a reset that undici is about to end as complete (its own test, read from
 * its parser), it marks the socket, which the exchange on it (it holds its socket:
 * http-origin-socket.ts) reads first thing in the onComplete undici then runs from its own listener
 * in the same emit. A reset socket is never used again, so the mark needs no clearing.
 *
 * Cost: one listener per origin connection (a shared function, no closure); nothing per request or chunk.
 */
import type { Socket } from 'node:net';
import { parserOf } from './http-origin-reads.ts';

const kCutByReset = Symbol('egressgate.cutByReset');
type WatchedSocket = Socket & { [kCutByReset]?: true };

function onOriginError(this: WatchedSocket, err: NodeJS.ErrnoException): void {
  if (err.code !== 'ECONNRESET') return;
  const parser = parserOf(this);
  if (parser === null || !parser.statusCode || parser.shouldKeepAlive !== false) return;
  this[kCutByReset] = true;
}

/** Watch an origin socket for a reset (before undici adds its own listeners). */
export function watchOriginReset(socket: Socket): void {
  socket.on('error', onOriginError);
}

/** Whether the response completing now on `socket` was ended by the connection's reset, not its close. */
export function isCutByOriginReset(socket: Socket | null): boolean {
  return socket !== null && (socket as WatchedSocket)[kCutByReset] === true;
}
