/**
 * An origin connection reset while its response's body runs until the connection closes (no
 * Content-Length, not chunked) cut that body short; undici ends such a response as complete all
 * the same (client-h1.js onHttpSocketError: "On Mac OS, we get an ECONNRESET even if there is a
 * full body"). The exchanges must tell it from the origin's clean close, as a direct client would
 * see the reset. Each origin socket gets this module's 'error' listener before undici's (at the
 * connect callback): on a reset that undici is about to end as complete (its own test, read from
 * its parser), it marks the completion undici then runs from its listener in the same emit, which
 * the exchange takes (takeResetMark) first thing in onComplete. A mark nobody took is cleared at
 * the next microtask.
 *
 * Cost: one listener per origin connection (a shared function, no closure); nothing per request or chunk.
 */
import type { Socket } from 'node:net';
import { parserOf } from './http-origin-reads.ts';

let isResetCompleting = false;

function onOriginError(this: Socket, err: NodeJS.ErrnoException): void {
  if (err.code !== 'ECONNRESET') return;
  const parser = parserOf(this);
  if (parser === null || !parser.statusCode || parser.shouldKeepAlive !== false) return;
  isResetCompleting = true;
  queueMicrotask(clearReset);
}

function clearReset(): void {
  isResetCompleting = false;
}

/** Watch an origin socket for a reset (before undici adds its own listeners). */
export function watchOriginReset(socket: Socket): void {
  socket.on('error', onOriginError);
}

/**
 * Whether the response completing now was ended by its origin connection's reset, not its close;
 * the mark is taken (cleared). Called first thing in every completion, so none is left for another.
 */
export function takeResetMark(): boolean {
  const isReset = isResetCompleting;
  isResetCompleting = false;
  return isReset;
}
