/**
 * Which origin connection an absolute-URI request is on, so that a kill resets it (SPEC §4: a
 * killed flow is closed at once, TCP reset on both sides). undici's abort of a request closes its
 * socket with a FIN, so before, the origin of a killed request saw a clean end: a truncated upload,
 * to an origin reading until close, looked whole.
 *
 * undici tells a handler nothing of its socket, but it publishes it on the `undici:client:sendHeaders`
 * diagnostics channel (documented, docs/api/DiagnosticsChannel.md) in writeH1, right after it called
 * the request's onConnect and before it writes a byte, in the same synchronous run (client-h1.js,
 * ~l. 1242-1310): the exchange whose onConnect ran last (noteConnecting) takes the socket published
 * next. A request aborted in its onConnect publishes nothing, and is not noted. The exchange holds
 * the socket until undici is done with its request (onComplete, onError): with pipelining 1 no
 * other request is written on that connection before, so the socket a kill resets is never one
 * another request is using. Through a parent proxy the socket is the connection to the parent, reset
 * the same way.
 *
 * Cost: one subscriber for the process; per request, the message object undici then allocates and
 * one call of onSendHeaders. Nothing per chunk.
 */
import { subscribe } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import { errors } from 'undici';

/** What this module needs of an exchange (http-origin-exchange.ts OriginExchange). */
export interface SocketHolder {
  /** The origin connection its request is on, from its onConnect until undici is done with it; else null. */
  originSocket: Socket | null;
}

/** The exchange whose onConnect ran last, until undici publishes its socket. */
let connecting: SocketHolder | null = null;

function onSendHeaders(message: unknown): void {
  const holder = connecting;
  if (holder === null) return;
  connecting = null;
  const socket = (message as { socket?: Socket } | null)?.socket;
  holder.originSocket = socket ?? null;
}

subscribe('undici:client:sendHeaders', onSendHeaders);

/** undici has called `holder`'s onConnect for a request it is about to write: the socket it publishes next is its. */
export function noteConnecting(holder: SocketHolder): void {
  connecting = holder;
}

/**
 * undici is done with `holder`'s request (completed or failed): its connection may carry another
 * request next, so it is no longer the holder's to reset; nor is a socket published later (a note
 * left by an onConnect undici then published nothing for).
 */
export function letGoOfOrigin(holder: SocketHolder): void {
  holder.originSocket = null;
  if (connecting === holder) connecting = null;
}

/**
 * undici's own abort closes the socket with InformationalError('aborted') (client-h1.js writeH1's
 * `abort`), and undici's socket listeners count on that error coming before the close: without it,
 * the close of a response whose body runs until the connection closes is taken as its end, and
 * undici completes the request it has just aborted (an assertion: the process fails). The reset
 * socket emits the same error, one object for every such socket.
 */
const ABORTED = new errors.InformationalError('aborted');

/**
 * Reset an origin connection (an RST, not a FIN), before undici's abort of its request, which then
 * finds it destroyed (and ends as it would have: the same error, the same 'disconnect' of the Agent,
 * http-origin-dial.ts onOriginDisconnect). A socket without a TCP handle of its own (TLS to a parent
 * proxy) cannot be: it is left to undici's abort, which closes it as before.
 */
export function resetOriginSocket(socket: Socket): void {
  if (socket.destroyed) return;
  try {
    socket.resetAndDestroy();
  } catch {
    // ERR_INVALID_HANDLE_TYPE: not a TCP socket; the abort closes it.
    return;
  }
  socket.emit('error', ABORTED);
}

/** A `close` among a Connection field's options (RFC 9110 §7.6.1: a comma-separated list of tokens). */
const CLOSE_OPTION = /(?:^|,)[ \t]*close[ \t]*(?:,|$)/i;

/**
 * The origin connection a response just completed on is closed when that response's trailer
 * section carried `Connection: close` (an origin bug: RFC 9110 §6.5.1 forbids the field in
 * trailers). llhttp takes it all the same and refuses anything after the message ("Data after
 * `Connection: close`"), while undici judged the connection reusable from the head and pools it: the
 * next request on it, maybe another client's, failed 502 upstream-bad-response. Closed here, in the
 * exchange's onComplete (undici's onMessageComplete, the request already counted done, its socket
 * not destroyed before: no assertion of undici's meets it), undici finds the connection destroyed
 * when it would write the next request there, waits for its 'close' and dials a new one, as after
 * any origin's close of an idle connection.
 *
 * Cost: one length test per response (undici passes an empty array when there were no trailers).
 */
export function closeIfTrailersSayClose(socket: Socket | null, trailers: readonly (Buffer | string)[] | null | undefined): void {
  if (socket === null || trailers === null || trailers === undefined || trailers.length === 0) return;
  for (let i = 0; i + 1 < trailers.length; i += 2) {
    const name = trailers[i] as Buffer | string;
    if (name.length !== 10 || name.toString('latin1').toLowerCase() !== 'connection') continue;
    if (CLOSE_OPTION.test((trailers[i + 1] as Buffer | string).toString('latin1'))) {
      socket.destroy();
      return;
    }
  }
}
