/**
 * Origin connections read into a buffer of their own, reused while nothing holds its bytes.
 *
 * By default node allocates a fresh 64 KiB ArrayBuffer for every read of a socket (flow/read-buffer.ts
 * says what that costs a tunnel). An absolute-URI response body is read by undici from the origin
 * socket, so a 1 MiB answer was sixteen or more of those allocations and the collections they caused:
 * about 1,050 µs of the gateway's CPU per MiB relayed, where a buffer reused read after read needs
 * about 400 (docs/benchmarks.md, twenty-fifth pass).
 *
 * The reuse must never overwrite bytes someone still holds. After each read the bytes are pushed to
 * the socket as a view of the buffer and undici's parser is run on them at once (it would on the
 * next tick, from 'readable'), so the exchange (http-fast-path.ts, http-forward.ts) writes the body
 * chunk on to the client before the read callback returns. The buffer is read into again only when,
 * after that:
 *  - nothing of it is left on the socket (undici paused, or had no parser there to run),
 *  - the parser holds no header or trailer fields (a head split over reads keeps views of them),
 *  - the parser is still the socket's (not upgraded, closed or failed), and
 *  - every chunk written on left nothing queued (`noteChunkQueued`: the client was slower than the
 *    origin, so node still holds the chunk).
 * Otherwise the next read goes to a new buffer and the old one is left to whoever holds it, which is
 * what node does for every read. A runtime or undici without the fields this relies on never reuses.
 *
 * Memory: each origin connection keeps one buffer of READ_BYTES while it lives (pooled connections
 * at most ORIGIN_KEEPALIVE_MAX_MS); only the pages reads have filled are resident.
 */
import type { Socket } from 'node:net';
import { adoptReadBuffers } from '../flow/read-buffer.ts';

/** One read's size, node's own. */
export const READ_BYTES = 64 * 1024;

/** What the read callback relies on of undici's HTTP/1.1 parser (dispatcher/client-h1.js). */
interface H1Parser {
  readonly paused: boolean;
  readonly headers: unknown[];
  /** The response's status once its head has come, else 0; whether its connection stays open after it. */
  readonly statusCode?: number;
  readonly shouldKeepAlive?: boolean;
  readMore(): void;
  /** llhttp's wasm exports and this parser's state in them. */
  readonly llhttp?: {
    llhttp_get_http_major?(ptr: number): number;
    llhttp_get_http_minor?(ptr: number): number;
    llhttp_set_lenient_keep_alive?(ptr: number, enabled: number): void;
  };
  readonly ptr?: number | null;
}

/**
 * The socket property undici keeps its parser under (`Symbol('parser')`), found at a first read.
 * Looked for at 64 reads at most: with an undici that keeps it elsewhere, later connections read as
 * node does.
 */
let parserKey: symbol | null = null;
let looksLeft = 64;

/** Reads of adopted origin sockets since start: into the buffer read before, or into a new one (tests, bench). */
export const originReads = { reused: 0, fresh: 0 };

/** A body chunk written on while the parser ran could not go out at once (set by the exchanges). */
let isChunkQueued = false;

/**
 * An exchange wrote a body chunk on and the client side still holds (some of) it: node writes it
 * later, so the read buffer it came from must not be read into again. Called by the exchanges after
 * a write whose destination's writableLength is not 0.
 */
export function noteChunkQueued(): void {
  isChunkQueued = true;
}

function isH1Parser(value: unknown): value is H1Parser {
  const p = value as Partial<H1Parser> | null | undefined;
  return typeof p === 'object' && p !== null && typeof p.readMore === 'function' && typeof p.paused === 'boolean' && Array.isArray(p.headers);
}

/** undici's HTTP/1.1 parser of an origin socket, or null (none there, or an undici that keeps it elsewhere). */
export function parserOf(socket: Socket): H1Parser | null {
  const fields = socket as unknown as Record<symbol, unknown>;
  if (parserKey === null) {
    if (looksLeft === 0) return null;
    looksLeft--;
    for (const key of Object.getOwnPropertySymbols(socket)) {
      if (key.description === 'parser' && isH1Parser(fields[key])) {
        parserKey = key;
        break;
      }
    }
    if (parserKey === null) return null;
  }
  const parser = fields[parserKey];
  return isH1Parser(parser) ? parser : null;
}

/**
 * Read `socket` (an origin connection about to be handed to undici) into reused buffers. A socket
 * that cannot switch (not TCP, bytes already waiting, the mechanism off) reads as node does.
 */
export function adoptOriginReads(socket: Socket): void {
  if (parserKey === null && looksLeft === 0) return;
  /** The buffer the last read went to, and whether the next may go there again. */
  let current: Buffer | null = null;
  let reuse = false;
  const onRead = (n: number, buf: Buffer): boolean => {
    current = buf;
    reuse = false;
    const isBelowMark = socket.push(buf.subarray(0, n));
    const parser = parserOf(socket);
    // No parser (not attached yet, or gone) or a paused one: the bytes wait on the socket, as
    // node's own would, in a buffer not read into again.
    if (parser === null || parser.paused) return isBelowMark;
    isChunkQueued = false;
    parser.readMore();
    const left = socket.readableLength;
    reuse = !isChunkQueued && left === 0 && parser.headers.length === 0 && !parser.paused && parserOf(socket) === parser;
    // Whether to go on reading is judged on what is left now: push's answer counted the bytes the
    // parser has since taken, and a stop with nothing left would never be undone (node's stream
    // starts reading again only when its reader reads from it, and 'readable' comes only with bytes).
    return left < socket.readableHighWaterMark;
  };
  const next = (): Buffer => {
    if (reuse && current !== null) {
      originReads.reused++;
      return current;
    }
    originReads.fresh++;
    return Buffer.allocUnsafeSlow(READ_BYTES);
  };
  adoptReadBuffers(socket, onRead, READ_BYTES, next);
}

/**
 * Whether the response undici's parser of `socket` is reading said HTTP/1.0 in its status line
 * (llhttp knows it; undici does not pass it on). False when it cannot be told: no socket or parser,
 * or an undici whose parser lacks what this reads. Two wasm calls (~15–30 ns); asked of every
 * response head, for its Via (OriginExchange.responseVia), and of one that carries
 * Transfer-Encoding (http-headers.ts unrelayableFraming).
 */
export function isReceivedInHttp10(socket: Socket | null): boolean {
  const parser = socket === null ? null : parserOf(socket);
  const llhttp = parser?.llhttp;
  const ptr = parser?.ptr;
  if (typeof ptr !== 'number' || typeof llhttp?.llhttp_get_http_major !== 'function' || typeof llhttp.llhttp_get_http_minor !== 'function') return false;
  return llhttp.llhttp_get_http_major(ptr) === 1 && llhttp.llhttp_get_http_minor(ptr) === 0;
}

/**
 * Whether llhttp, reading the origin connection `socket`, goes on after a message that says the
 * connection ends with it (an HTTP/1.0 one without `Connection: keep-alive`, or one with `Connection:
 * close`): on while an interim (1xx) response has come and the final one not yet, for the final
 * response must still come on that connection; off again at the final head, which decides. Without
 * it llhttp takes an HTTP/1.0 `103` as the connection's last message and fails the final answer
 * behind it ("Data after `Connection: close`"). undici judged the connection not reusable from that
 * 1xx already (it closes it after the request). One wasm call; a no-op when it cannot be done (no
 * socket or parser, an undici whose parser lacks it).
 */
export function setReadPastInterim(socket: Socket | null, enabled: boolean): void {
  const parser = socket === null ? null : parserOf(socket);
  const llhttp = parser?.llhttp;
  const ptr = parser?.ptr;
  if (typeof ptr !== 'number' || typeof llhttp?.llhttp_set_lenient_keep_alive !== 'function') return;
  llhttp.llhttp_set_lenient_keep_alive(ptr, enabled ? 1 : 0);
}
