/**
 * What an HTTP client sees when the gateway refuses or fails a request (SPEC §4): the status from
 * gateway/reject.ts (the only mapper), a JSON body `{error, reason, flowId}`, and the headers that go
 * with some statuses. One content, written to a ServerResponse (absolute-URI path, the connection
 * may stay alive), as text for the absolute-URI fast path (http-fast-path.ts, likewise), or to a raw
 * socket that then closes (CONNECT, Upgrade, parser errors).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { isGatewayRefusal } from '../../policy/types.ts';
import type { Refused } from '../admission.ts';
import type { RejectMapping } from '../reject.ts';
import { resetSocket } from '../flow/socket-reset.ts';
import { connectionState } from './http-connection-state.ts';
import { httpDate } from './http-date.ts';

export interface RefusalDetails {
  readonly flowId: string | null;
  /** The flow's verdict was a policy block: adds `X-Egress-Verdict: block`. */
  readonly isBlock: boolean;
  /** Seconds for `Retry-After` (429). */
  readonly retryAfterSec?: number;
}

/**
 * The client-facing details of an admission refusal. The gateway's own refusals before any judgement
 * (503 shutting down, 508 loop detected, …) are recorded block but carry no `X-Egress-Verdict`: no
 * policy refused them.
 */
export function refusalDetails(result: Refused): RefusalDetails {
  const { flow } = result;
  return { flowId: flow.id, isBlock: flow.verdict === 'block' && !isGatewayRefusal(flow.reason), retryAfterSec: result.retryAfterSec };
}

/** Status, header pairs and body of a refusal. */
export function refusalParts(mapping: RejectMapping, details: RefusalDetails): { status: number; headers: string[]; body: string } {
  const body = JSON.stringify({ error: mapping.error, reason: mapping.reason, flowId: details.flowId });
  const headers = ['content-type', 'application/json', 'content-length', String(Buffer.byteLength(body)), 'cache-control', 'no-store'];
  if (details.isBlock) headers.push('x-egress-verdict', 'block');
  if (mapping.status === 429) headers.push('retry-after', String(details.retryAfterSec ?? 1));
  if (mapping.status === 407) headers.push('proxy-authenticate', 'Basic realm="egressgate"');
  return { status: mapping.status, headers, body };
}

/**
 * Answer an absolute-URI request with a refusal. `isLast`: the connection is closed afterwards —
 * when the request body was not read (reading an unknown amount to keep it alive is not worth it),
 * or when the gateway is draining. A request whose body is still unread ends its connection lingering
 * (closeAfterUnreadBody), not reset under the client's upload. `socket`: the client connection, for
 * a caller that kept it (undici detaches `req.socket` when it destroys a request body it was sending).
 */
export function sendRefusal(res: ServerResponse, mapping: RejectMapping, details: RefusalDetails, isLast: boolean, socket: Duplex | null = res.req.socket): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const { status, headers, body } = refusalParts(mapping, details);
  if (isLast) headers.push('connection', 'close');
  if (isLast && !res.req.complete) closeAfterUnreadBody(res.req, res, socket);
  // The phrase is given, not left to res.statusMessage: a relay whose writeHead threw has set it.
  res.writeHead(status, STATUS_CODES[status] ?? 'Error', headers);
  res.end(body);
}

/**
 * The gateway's own answer (`connection: close`) to a request whose body it has not read: a refusal,
 * a failure before the origin read any of it, a TRACE or OPTIONS answered as final recipient.
 * node:http would destroy the socket as soon as our FIN is out, and with the client's upload still
 * arriving that is a reset, which can wipe the answer from the client's receive buffer before it is
 * read (RFC 9112 §9.6). Instead: node's parser drops the rest of the body from now on (nothing is
 * buffered for a request nobody reads), requests pipelined behind it are dropped unanswered
 * (ConnectionState.isShedding), and once the answer is written the connection ends lingering
 * (lingerAfterAnswer). Only a refusal with a body pays for it. `socket`: the client connection,
 * `req.socket` unless the caller kept it: an origin that failed after reading part of the body (a
 * 502 upstream-reset) had undici destroy the request stream first, and undici sets `req.socket` to
 * null then (so node does not destroy the connection with it).
 */
export function closeAfterUnreadBody(req: IncomingMessage, res: ServerResponse, socket: Duplex | null = req.socket): void {
  // Gone already: nothing to linger on.
  if (socket === null || socket.destroyed) return;
  connectionState(socket).isShedding = true;
  // node:http's own mark for a body nobody reads (IncomingMessage._dump): its parser drops the
  // bytes; resume() passes on what was pushed before and starts the socket again if the parser had
  // paused it on a full request buffer.
  (req as IncomingMessage & { _dumped?: boolean })._dumped = true;
  req.resume();
  lingerAfterAnswer(res, socket);
}

/**
 * Once `res` (saying `connection: close`) is written, end `socket` lingering (lingerThenDestroy)
 * instead of node:http's destroy as soon as our FIN is out.
 */
export function lingerAfterAnswer(res: ServerResponse, socket: Duplex): void {
  res.once('finish', () => {
    if (socket.destroyed) return;
    // node has ended the socket (`connection: close`) and would destroy it once our FIN is out
    // (destroySoon): with the client's upload still arriving, that is a reset. Linger instead.
    socket.removeListener('finish', socket.destroy);
    lingerThenDestroy(socket);
  });
}

/**
 * A whole refusal response as text, for a raw socket: the same status, headers and body as
 * sendRefusal's. `isLast` adds `connection: close` (the connection ends after it). `isHead`: the
 * answer to a HEAD request, whose response never has content (RFC 9110 §9.3.2): the head only, its
 * Content-Length the one a GET would get (as node:http's ServerResponse does for HEAD).
 */
export function refusalText(mapping: RejectMapping, details: RefusalDetails, isLast: boolean, isHead = false): string {
  const { status, headers, body } = refusalParts(mapping, details);
  // node:http adds Date to sendRefusal's answer; a head written as text carries its own.
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\ndate: ${httpDate()}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  if (isLast) head += 'connection: close\r\n';
  return isHead ? `${head}\r\n` : `${head}\r\n${body}`;
}

/** Write a complete refusal response on a raw socket and close it once written. */
export function writeRawRefusal(socket: Duplex, mapping: RejectMapping, details: RefusalDetails): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(refusalText(mapping, details, true));
  lingerThenDestroy(socket);
}

/**
 * Refuse a connection before its request (over limits.maxConnectionsPerSource): the answer goes out
 * and the socket is closed at once, without lingering, so refusing holds no descriptor.
 */
export function refuseConnectionNow(socket: Duplex, mapping: RejectMapping): void {
  socket.on('error', () => undefined);
  if (socket.writable) socket.write(refusalText(mapping, { flowId: null, isBlock: false }, true));
  socket.destroy();
}

/** How long a refused connection may linger so the client reads the answer before we drop it. */
const LINGER_MS = 2000;

/**
 * End our side with the answer already handed to `socket.end()`: lingerThenDestroy once it is
 * written out ('finish'), so a slow reader gets it whole. A client that takes none of it for
 * `stallMs` meanwhile (its receive window shut: no write progress, resetIfWriteStalls) is reset
 * then, so one that never reads does not hold its connection for ever (a reset, not a close: the
 * kernel would otherwise keep the unsent answer and probe the shut window).
 */
export function lingerOnceWritten(socket: Duplex, stallMs: number): void {
  if (socket.writableFinished) {
    lingerThenDestroy(socket);
    return;
  }
  socket.once('finish', () => lingerThenDestroy(socket));
  // Write progress only: a socket timeout would be re-armed by every byte the client still sends.
  if (socket instanceof Socket) resetIfWriteStalls(socket, stallMs);
}

/**
 * Reset `socket` when the answer still queued on it makes no progress for `stallMs` (writableLength
 * not down since the last check): a client that never reads its last answer, and keeps sending so
 * that the socket's idle timer (re-armed by reads too) never fires, would otherwise hold the
 * connection for ever, the linger waiting on a 'finish' that never comes. One timer, re-armed every
 * stallMs while the queue drains, cleared at 'finish' or 'close'; reads do not count.
 */
export function resetIfWriteStalls(socket: Socket, stallMs: number): void {
  let queued = socket.writableLength;
  let timer: NodeJS.Timeout | null = null;
  const check = (): void => {
    timer = null;
    if (socket.destroyed || socket.writableFinished) return;
    if (socket.writableLength >= queued) {
      resetSocket(socket);
      return;
    }
    queued = socket.writableLength;
    timer = setTimeout(check, stallMs);
    timer.unref();
  };
  const stop = (): void => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  };
  timer = setTimeout(check, stallMs);
  timer.unref();
  socket.once('finish', stop);
  socket.once('close', stop);
}

/**
 * After our answer is written, discard what the client still sends and drop the connection when it
 * closes its side or after a short linger. Destroying at once could reset the connection while the
 * client still has unread bytes in flight, and a reset wipes our answer from its receive buffer.
 * Bounded by time only, from the answer: LINGER_MS whatever the client sends meanwhile (no byte cap:
 * dropping what arrives in that time costs no more than relaying an admitted upload would, and a cap
 * would reset exactly the large uploads lingering is for).
 */
export function lingerThenDestroy(socket: Duplex, lingerMs = LINGER_MS): void {
  const timer = setTimeout(() => socket.destroy(), lingerMs);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.on('error', () => socket.destroy());
  // A client that half-closed has nothing more to send: closed once our answer is written out.
  if (socket.readableEnded) {
    if (socket.writableFinished) socket.destroy();
    else socket.once('finish', () => socket.destroy());
    return;
  }
  socket.once('end', () => socket.destroy());
  socket.resume();
}
