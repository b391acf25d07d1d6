/**
 * Absolute-URI requests with an extension method (RFC 9110 §9.1, §16.1: any token, `BREW`,
 * `FOO`, RTSP's `PLAY`): node's parser (llhttp) knows a fixed list of methods (http.METHODS) and
 * refuses any other at the request line, HPE_INVALID_METHOD (HPE_INVALID_CONSTANT for the RTSP
 * methods it knows for RTSP only). A proxy forwards a method it does not know, so such a request is
 * served as every absolute-URI request is, by node:http and http-proxy.ts `onRequest`:
 *
 *  1. node's parser refuses the method (`clientError`), and the packet it refused is known to start
 *     the request: nothing came before it on the connection (after a PROXY protocol header), or it
 *     is the packet the front or the fast path handed to node:http (markHandedAt); no request before
 *     it is still in the parser (`parser.incoming` null). llhttp skips empty lines before a request
 *     line; so does this;
 *  2. node:http lets go of the socket as on an upgrade (its listeners and parser detached, the
 *     parser off the server's connection list), and the request line's method token is read — from
 *     more packets if the first ended inside it, within limits.headerTimeoutMs and
 *     limits.maxHeaderBytes (408 / 431); the rest of the head then has what is left of that
 *     headerTimeoutMs, not a fresh one (handBack);
 *  3. a method that is not a token (`G@T`), or one node does know (its refusal had another cause),
 *     is answered 400 as before;
 *  4. otherwise the bytes go back to node:http with the method spelled `POST` (a method llhttp
 *     frames like any request: Content-Length, chunked, smuggling shapes refused 400) on a new parser
 *     for the same socket, and the request's own method is put back on its IncomingMessage before
 *     node:http announces it (`parser.onIncoming`, this socket's parser only). From there it is
 *     an ordinary request: identity, policy, limits, flow record, header rewriting, Via, pinned
 *     undici dispatch (which sends any token method), the answer.
 *
 * Simplifications (docs/spec-notes.md): its answer is the connection's last (`connection: close`);
 * an extension method later on a connection node:http serves (behind a request with a body, a
 * split head …) is refused 400 as before, because where a request begins there is not known: had
 * the client split a head inside its method (`PROP` | `FOO …`), the packet node refused would
 * start mid-method and be read as another method (`FOO`). The head size limit counts the request
 * line with `POST` in place of the method.
 *
 * Ordinary requests pay nothing per request: this runs from `clientError` for these two parser
 * codes; a connection handed to node:http stores one number (markHandedAt).
 */
import { METHODS } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from '../context.ts';
import { connectionState } from './http-connection-state.ts';
import type { GatewayErrorCode } from '../errors.ts';
import { mapError } from '../reject.ts';
import { writeRawRefusal } from './http-refusal.ts';

/** The parts of node's HTTPParser (internal, node 20–24) this reads and releases. */
interface NodeParser {
  incoming: { method?: string } | null;
  _consumed?: boolean;
  socket: unknown;
  onIncoming: ((req: { method?: string }, shouldKeepAlive: boolean) => unknown) | null;
  unconsume(): void;
  remove?: () => void;
  close(): void;
}

type ParsedSocket = Socket & { parser?: NodeParser | null; _handle?: { reading?: boolean; readStart?: () => number } | null };

/** The listeners node:http puts on a connection's socket (_http_server.js connectionListenerInternal). */
const NODE_LISTENERS: ReadonlyArray<readonly [string, string]> = [
  ['data', 'bound socketOnData'],
  ['end', 'bound socketOnEnd'],
  ['close', 'bound socketOnClose'],
  ['drain', 'bound socketOnDrain'],
  ['timeout', 'socketOnTimeout'],
  ['resume', 'onSocketResume'],
  ['pause', 'onSocketPause'],
];

/** What the request line is spelled with for node's parser. */
const STAND_IN = Buffer.from('POST', 'latin1');
const KNOWN: ReadonlySet<string> = new Set(METHODS);

/** RFC 9110 §5.6.2 tchar. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;

export interface ExtensionMethodOptions {
  readonly log: Logger;
  readonly limits: { readonly headerTimeoutMs: number; readonly maxHeaderBytes: number };
  /** Give the socket to node:http again, as a new connection (its listener's connection event). */
  readonly reattach: (socket: Socket) => void;
}

/**
 * From `clientError`: take a request node's parser refused for its method, when it may be an
 * extension method (see the file comment). True: the socket is this module's (then node:http's
 * again, or answered and closed here); false: the caller refuses as always.
 */
export function takeExtensionMethod(err: NodeJS.ErrnoException & { rawPacket?: unknown }, socket: Socket, opts: ExtensionMethodOptions): boolean {
  if (err.code !== 'HPE_INVALID_METHOD' && err.code !== 'HPE_INVALID_CONSTANT') return false;
  const s = socket as ParsedSocket;
  const parser = s.parser;
  const packet = err.rawPacket;
  if (!parser || parser.incoming !== null || !Buffer.isBuffer(packet) || s.destroyed || !s.writable) return false;
  const at = s.bytesRead - s.readableLength - packet.length;
  if (at !== 0 && at !== connectionState(s).handedAt) return false;
  const start = requestStart(packet);
  const end = methodEnd(packet, start);
  // The method is whole and known to llhttp, or no token at all: node's refusal stands.
  if (end === -1 || (end < packet.length && !isExtensionMethod(packet, start, end))) return false;
  // Node internals this detaches by name: on a node whose names differ, the refusal stands (400).
  if (!hasNodeListeners(s)) return false;
  release(s, parser);
  if (end < packet.length) {
    if (isOverLimit(start, end, opts)) refuse(s, 'EGW_HEADERS_TOO_LARGE', 'method over maxHeaderBytes', opts);
    else handBack(s, packet, start, end, opts);
    return true;
  }
  readMethod(s, packet, opts);
  return true;
}

/**
 * A method token longer than limits.maxHeaderBytes is refused 431 wherever it ends: in the first
 * packet, or in a later one (readMethod). node's count leaves the method out (the stand-in `POST`
 * takes its place), so without this a method of 50 KB that came whole in one packet was forwarded,
 * while the same method split over packets was 431.
 */
function isOverLimit(start: number, end: number, opts: ExtensionMethodOptions): boolean {
  return end - start > opts.limits.maxHeaderBytes;
}

/** Answer a refused request line (JSON, logged) on a socket node:http has let go of, and close. */
function refuse(s: Socket, code: GatewayErrorCode, why: string, opts: ExtensionMethodOptions): void {
  s.pause();
  opts.log.warn({ client: s.remoteAddress, code, why }, 'client request refused');
  writeRawRefusal(s, mapError(code), { flowId: null, isBlock: false });
}

/**
 * Keep where `bytes`, which start a request, begin in what the client sent: the front and the fast
 * path call it as they hand a connection to node:http with `bytes` pushed back.
 */
export function markHandedAt(socket: Socket, bytes: Buffer): void {
  connectionState(socket).handedAt = socket.bytesRead - socket.readableLength - bytes.length;
}

/** Past the empty lines llhttp skips before a request line. */
function requestStart(buf: Buffer): number {
  let i = 0;
  while (i < buf.length && (buf[i] === 0x0d || buf[i] === 0x0a)) i++;
  return i;
}

/**
 * The offset of the byte after the method token from `start`: buf.length when every byte to the end
 * is a tchar (the token may go on in the next packet), -1 when the token is empty or ends other than
 * with SP.
 */
function methodEnd(buf: Buffer, start: number): number {
  let i = start;
  while (i < buf.length && TCHAR[buf[i] as number] === 1) i++;
  if (i === buf.length) return i;
  return i > start && buf[i] === 0x20 ? i : -1;
}

function isExtensionMethod(buf: Buffer, start: number, end: number): boolean {
  return !KNOWN.has(buf.toString('latin1', start, end));
}

/** node:http's data, end and close listeners are on the socket under the names NODE_LISTENERS gives. */
function hasNodeListeners(s: Socket): boolean {
  for (const [event, name] of NODE_LISTENERS.slice(0, 3)) {
    if (!s.listeners(event).some((fn) => fn.name === name)) return false;
  }
  return true;
}

/** Detach node:http from the socket as its upgrade path does (_http_server.js onParserExecuteCommon). */
function release(s: ParsedSocket, parser: NodeParser): void {
  s.pause();
  for (const [event, name] of NODE_LISTENERS) {
    for (const fn of s.listeners(event)) if (fn.name === name) s.removeListener(event, fn as (...args: unknown[]) => void);
  }
  if (parser._consumed) parser.unconsume();
  parser._consumed = false;
  // The socket's own reads again (what node's 'resume' listener did while the parser read natively):
  // the stream may still count a read as under way that the parser took, and would not start one.
  const handle = s._handle;
  if (handle && handle.reading !== true && typeof handle.readStart === 'function') {
    handle.reading = true;
    handle.readStart();
  }
  // Off the server's connection list: its header-timeout check and closeIdleConnections no longer see it.
  parser.remove?.();
  parser.socket = null;
  parser.onIncoming = null;
  s.parser = null;
  // After the parser's own stack has unwound (this runs inside its execute callback).
  setImmediate(() => parser.close());
  s.on('error', ignore);
}

/**
 * More packets until the method token ends; bounded by the header limits (431, 408). A FIN before
 * it is a request cut short (400, as node's parser answers it); a reset just ends it.
 */
function readMethod(s: Socket, first: Buffer, opts: ExtensionMethodOptions): void {
  let bytes = first;
  // One limits.headerTimeoutMs from the request's first byte for its whole head, as node's parser
  // counts it (from the message's first byte): the method here, the rest after handBack.
  const deadline = performance.now() + opts.limits.headerTimeoutMs;
  const timer = setTimeout(() => done('EGW_HEADER_TIMEOUT', 'no whole request line'), opts.limits.headerTimeoutMs);
  timer.unref();
  const onData = (chunk: Buffer): void => {
    bytes = Buffer.concat([bytes, chunk]);
    const start = requestStart(bytes);
    const end = methodEnd(bytes, start);
    if (end === bytes.length) {
      if (bytes.length > opts.limits.maxHeaderBytes) done('EGW_HEADERS_TOO_LARGE', 'request line over maxHeaderBytes');
      return;
    }
    if (end === -1 || !isExtensionMethod(bytes, start, end)) {
      done('EGW_BAD_REQUEST', 'invalid method');
      return;
    }
    if (isOverLimit(start, end, opts)) {
      done('EGW_HEADERS_TOO_LARGE', 'method over maxHeaderBytes');
      return;
    }
    done(null, '');
    handBack(s, bytes, start, end, opts, deadline);
  };
  const onEnd = (): void => done('EGW_BAD_REQUEST', 'request line cut short');
  const onGone = (): void => done(null, '', true);
  function done(code: GatewayErrorCode | null, why: string, isGone = false): void {
    clearTimeout(timer);
    s.removeListener('data', onData);
    s.removeListener('end', onEnd);
    s.removeListener('close', onGone);
    if (isGone) {
      s.destroy();
      return;
    }
    if (code === null) return;
    refuse(s, code, why, opts);
  }
  s.on('data', onData);
  s.on('end', onEnd);
  s.on('close', onGone);
  s.resume();
}

/**
 * The bytes back to node:http with the stand-in method; the request's own method restored on it.
 * `deadline` (performance.now()) is when the head's time ran out for a method read from several
 * packets: node's parser, new here, would count limits.headerTimeoutMs afresh from now, so the rest
 * of the head is held to what is left of it (one timer, this rare path only). Before, a head dribbled
 * byte by byte had its time once for the method and again for the rest: up to three times
 * limits.headerTimeoutMs with the front's wait for the first byte.
 */
function handBack(s: ParsedSocket, bytes: Buffer, start: number, end: number, opts: ExtensionMethodOptions, deadline?: number): void {
  const method = bytes.toString('latin1', start, end);
  s.pause();
  s.removeListener('error', ignore);
  s.unshift(Buffer.concat([STAND_IN, bytes.subarray(end)]));
  opts.reattach(s);
  const parser = s.parser;
  if (parser) {
    const announce = parser.onIncoming;
    let timer: NodeJS.Timeout | null = null;
    if (deadline !== undefined) {
      timer = setTimeout(onHeadTimeout, Math.max(1, deadline - performance.now()), s, parser, opts);
      timer.unref();
    }
    // The first request this parser announces is this one (its bytes come first); its answer is
    // the connection's last (node:http says `connection: close` and ends the connection after it).
    parser.onIncoming = (req) => {
      if (timer !== null) clearTimeout(timer);
      req.method = method;
      parser.onIncoming = announce;
      return announce?.(req, false);
    };
  }
  s.resume();
}

/**
 * The head handed back was not whole by its deadline (its request never announced): 408, as node's
 * own header timeout answers. The parser comes off the server's connection list first, so node's
 * own check does not refuse it a second time while the answer lingers. A socket closed meanwhile
 * (its parser freed, perhaps reused by another connection) is left alone.
 */
function onHeadTimeout(s: ParsedSocket, parser: NodeParser, opts: ExtensionMethodOptions): void {
  if (s.destroyed || s.parser !== parser || !s.writable) return;
  parser.remove?.();
  refuse(s, 'EGW_HEADER_TIMEOUT', 'no whole request head', opts);
}

function ignore(): void {}
