/**
 * The CONNECT fast path of the HTTP listener. Most connections to a forward proxy carry one
 * `CONNECT host:port` and become a tunnel; node:http sets up a parser, header-timeout tracking,
 * an IncomingMessage and its own socket listeners for each, only to hand the socket back on
 * 'connect'. This front reads a connection's first bytes itself:
 *
 *  1. accept (paused), and wait for the first bytes — limits.headerTimeoutMs at most (checked by
 *     one timer for all waiting connections): silent → 408 JSON, warn, close, as node:http does;
 *  2. first bytes that are a whole, plain CONNECT head (parseConnectHead: strict, no duplicate
 *     headers, no Content-Length / Transfer-Encoding, a valid Host if any, within
 *     limits.maxHeaderBytes) → `onConnect`
 *     with the head and any bytes after it, node:http never sees the connection;
 *  3. anything else — other methods, a head split over several packets, any byte node's strict
 *     parser might judge differently — is pushed back unread and the socket handed to the real
 *     server ('connection'), which parses, limits and refuses exactly as before. Its header timeout
 *     starts at the hand-over, so a client that sends its first byte late and then dribbles the
 *     rest has up to twice limits.headerTimeoutMs in all.
 *
 * Like the PROXY protocol front (proxy-protocol-front.ts), it is the listening server: its
 * 'listening' is forwarded to the real server, and closing the real server closes it.
 */
import type { Server as HttpServer, IncomingHttpHeaders } from 'node:http';
import { Server, type Socket } from 'node:net';
import type { Logger } from '../context.ts';
import { type ArrivalTicket, ArrivalQueue } from './arrival-queue.ts';
import { mapError } from '../reject.ts';
import { markHandedAt } from './http-extension-method.ts';
import { CLASS, IN_TARGET, scanHeaderLines } from './http-head-bytes.ts';
import { writeRawRefusal } from './http-refusal.ts';
import { requestLineFault } from './http-request-line.ts';
import { isValidHostField, shapeRefusalCode } from './http-target.ts';

/** A CONNECT request head parsed by the fast path; IncomingMessage has the same fields. */
export interface ConnectHead {
  readonly method: 'CONNECT';
  readonly url: string;
  /** Lower-case names; every name appears once (a duplicate sends the request to node:http). */
  readonly headers: IncomingHttpHeaders;
  readonly socket: Socket;
}

export interface ConnectFrontOptions {
  log: Logger;
  /** Read per connection, so a reload applies to new connections. */
  limits: () => { readonly headerTimeoutMs: number; readonly maxHeaderBytes: number };
  /** A parsed CONNECT: the socket is paused, `rest` holds the bytes the client sent after the head. */
  onConnect: (head: ConnectHead, socket: Socket, rest: Buffer) => void;
  /**
   * First bytes that are not a CONNECT head: true when taken (the absolute-URI fast path,
   * http-fast-path.ts, serves the connection), false to hand them to node:http. `handOver` gives
   * the socket to node:http later, at a request the fast path does not serve.
   */
  takeRequest?: (socket: Socket, first: Buffer, handOver: (socket: Socket, bytes: Buffer) => void) => boolean;
  /** The front stopped accepting (drain, close). */
  onClose?: () => void;
}

const CONNECT_PREFIX = Buffer.from('CONNECT ', 'latin1');
const VERSION_CRLF = Buffer.from(' HTTP/1.1\r\n', 'latin1');
/** A waiting socket's place in the arrival queue (a number on the socket: no map refers to it). */
const kTicket = Symbol('egressgate.arrivalTicket');
type WaitingSocket = Socket & { [kTicket]?: ArrivalTicket };

/** Content-Length or Transfer-Encoding on a CONNECT: node:http's path refuses content (connectContentFault) or, at 0, tunnels. */
const CONNECT_REFUSED: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding']);

/**
 * Parse a complete CONNECT head at the start of `buf`: `{head fields, end}` where `end` is the
 * offset after the blank line, or null when the fast path must not judge these bytes (node:http
 * then does). Only what node's strict parser accepts in the same way is accepted here:
 * `CONNECT <target> HTTP/1.1`, then `name: value` lines (token names, printable ASCII and HTAB in
 * values, CRLF line ends), no duplicate names, no Content-Length or Transfer-Encoding, a Host (if
 * any) of valid syntax (node:http's path refuses any other: http-connect.ts). One pass over the
 * bytes; strings only for the target, names and values.
 */
export function parseConnectHead(buf: Buffer, maxHeaderBytes: number): { url: string; headers: IncomingHttpHeaders; end: number } | null {
  if (buf.length < CONNECT_PREFIX.length || buf.compare(CONNECT_PREFIX, 0, CONNECT_PREFIX.length, 0, CONNECT_PREFIX.length) !== 0) return null;
  const blank = buf.indexOf('\r\n\r\n', 0, 'latin1');
  if (blank < 0 || blank + 4 > maxHeaderBytes) return null;
  // Request line: the target's bytes, then exactly " HTTP/1.1\r\n".
  let i = CONNECT_PREFIX.length;
  while (i < blank && ((CLASS[buf[i] as number] as number) & IN_TARGET) !== 0) i++;
  if (i === CONNECT_PREFIX.length || i + VERSION_CRLF.length > blank + 2) return null;
  if (buf.compare(VERSION_CRLF, 0, VERSION_CRLF.length, i, i + VERSION_CRLF.length) !== 0) return null;
  const url = buf.toString('latin1', CONNECT_PREFIX.length, i);
  const headers: IncomingHttpHeaders = {};
  // Header lines, each ending in CRLF; the last one's CRLF is the first half of the blank line.
  if (!scanHeaderLines(buf, i + VERSION_CRLF.length, blank + 2, CONNECT_REFUSED, headers, null)) return null;
  if (headers.host !== undefined && !isValidHostField(headers.host)) return null;
  return { url, headers, end: blank + 4 };
}

/** Put the CONNECT fast path before `server` (a plain-HTTP node:http server); listen on the result. */
export function wrapWithConnectFront(server: HttpServer, opts: ConnectFrontOptions): Server {
  /** Connections waiting for their first bytes, in acceptance order. */
  const waiting = new ArrivalQueue<Socket>();
  let sweep: NodeJS.Timeout | null = null;
  let isClosed = false;

  const front = new Server({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => {
    if (isClosed) {
      socket.destroy();
      return;
    }
    (socket as WaitingSocket)[kTicket] = waiting.add(socket, Date.now());
    socket.on('readable', onReadable);
    socket.on('end', onGone);
    socket.on('error', onGone);
  });

  function stopWaiting(socket: WaitingSocket): void {
    const ticket = socket[kTicket];
    if (ticket !== undefined) waiting.remove(ticket);
    socket.removeListener('readable', onReadable);
    socket.removeListener('end', onGone);
    socket.removeListener('error', onGone);
  }

  function onReadable(this: Socket): void {
    const chunk = this.read() as Buffer | null;
    if (chunk === null) return;
    stopWaiting(this);
    const limits = opts.limits();
    const parsed = parseConnectHead(chunk, limits.maxHeaderBytes);
    if (parsed !== null) {
      // Errors from here on are the CONNECT handler's; until it adds its own, none may go unheard.
      this.on('error', ignore);
      this.pause();
      opts.onConnect({ method: 'CONNECT', url: parsed.url, headers: parsed.headers, socket: this }, this, chunk.subarray(parsed.end));
      this.removeListener('error', ignore);
      return;
    }
    if (opts.takeRequest?.(this, chunk, handOver) === true) return;
    handOver(this, chunk);
  }

  /**
   * Give a socket to node:http with `bytes` pushed back in front of anything it has buffered. No
   * listener of ours is left on it and it is not flowing: either back in its natural mode (the first
   * bytes, our 'readable' listener just removed), flowing as soon as node:http adds its 'data'
   * listener, or paused (the absolute-URI fast path, which resumes it right after this call).
   * Where `bytes` begin is kept (markHandedAt): they start a request. A whole first line in them
   * that is no HTTP request line (`RTSP/1.0`: http-request-line.ts) is answered here, 400, and the
   * socket closed: node's parser would take it as HTTP/1.0. So are an HTTP/0.9 line (400) and one
   * naming `HTTP/2.0` (505), at once: node's parser holds the first until the header timeout.
   */
  function handOver(socket: Socket, bytes: Buffer): void {
    const fault = requestLineFault(bytes);
    if (fault !== null) {
      const code = shapeRefusalCode(fault);
      opts.log.warn({ client: socket.remoteAddress, code, why: fault }, 'client request refused');
      socket.on('error', ignore);
      writeRawRefusal(socket, mapError(code), { flowId: null, isBlock: false });
      return;
    }
    markHandedAt(socket, bytes);
    socket.unshift(bytes);
    server.emit('connection', socket);
  }

  /** Closed or reset before sending anything: nothing to answer, nothing to record. */
  function onGone(this: Socket): void {
    stopWaiting(this);
    this.destroy();
  }

  function checkTimeouts(): void {
    const limits = opts.limits();
    // Arrival order: the first one still in time ends the scan.
    waiting.expire(Date.now(), limits.headerTimeoutMs, (socket) => {
      stopWaiting(socket);
      opts.log.warn({ client: socket.remoteAddress, code: 'EGW_HEADER_TIMEOUT', why: `no request within ${limits.headerTimeoutMs} ms` }, 'client request refused');
      socket.on('error', ignore);
      writeRawRefusal(socket, mapError('EGW_HEADER_TIMEOUT'), { flowId: null, isBlock: false });
    });
  }

  front.on('listening', () => {
    const every = Math.max(50, Math.min(1000, Math.floor(opts.limits().headerTimeoutMs / 4)));
    sweep = setInterval(checkTimeouts, every);
    sweep.unref();
    server.emit('listening');
  });
  const closeFront = (): void => {
    if (isClosed) return;
    isClosed = true;
    if (sweep) clearInterval(sweep);
    // Also when never listening (a PROXY protocol front listens instead): close() then emits 'close'
    // at once, which is that front's signal to stop accepting.
    front.close(ignore);
    waiting.clear((socket) => socket.destroy());
    opts.onClose?.();
  };
  // node:http's close() on the never-listening real server emits 'close': stop accepting then.
  server.once('close', closeFront);
  front.once('close', () => {
    isClosed = true;
    if (sweep) clearInterval(sweep);
  });
  return front;
}

function ignore(): void {}
