/**
 * The absolute-URI fast path of the plain HTTP listener: keep-alive connections whose requests are
 * simple `GET`/`HEAD http://…` (http-fast-head.ts) are served here, on the raw socket, without
 * node:http's IncomingMessage, ServerResponse and their streams — about a third of node:http + undici's
 * CPU per request on this path. Everything a request does is what the node:http path does
 * (http-proxy.ts `onRequest`, http-forward.ts): the same target parsing, admission, identity cache,
 * header rewriting, pinned undici dispatch, metering, flow close reasons and refusal bodies.
 *
 * A connection is served here request by request while each arrives as one whole head with nothing
 * after it. Anything else — a head split over packets, pipelined bytes, a body, `Expect`, `Upgrade`,
 * a byte the fast parser does not take, a target node:http must refuse — hands the connection to
 * node:http at that request, with those bytes pushed back unread, and node serves it from there on.
 *
 * The response: status line, the origin's headers less hop-by-hop fields (forwardResponseHeaders)
 * plus `Via`, and `Date` when the origin sent none. The body keeps the origin's Content-Length, or is
 * sent chunked when the origin did not give one, as node:http's ServerResponse would. The head goes
 * out with the first body bytes in one writev (corked). The origin's 1xx responses before it are
 * relayed as they come (http-interim.ts).
 *
 * Timeouts as node:http's: limits.idleTimeoutMs while a request is served (not while it is admitted
 * or waits on its origin: admission's own timeouts, and the origin's, then answer 502 or 504; see
 * mayCutIdle), KEEP_ALIVE_MS between requests. One socket
 * timer serves both (the shorter of the two, set once per connection, re-armed by node on every read
 * and write); when it fires where the longer one applies, a one-off timer waits out the rest. So a
 * request costs no timer changes (two per request with node:http: ~2 µs on Node 20). A client
 * reset during a request ends its flow `client-reset` and aborts the origin request; so does our own
 * cut for limits.idleTimeoutMs of silence, but the flow ends `idle-timeout` (ConnectionState.isTimedOut,
 * as on node:http). A client FIN is a half-close (RFC 9112 §9.6), not an abort: the request being
 * served is answered whole, and so are the requests sent before the FIN, in order (what the client
 * sends while a request is served stays in the socket, and its FIN behind it unread, until that
 * request is answered: see onData); then the connection ends (see onEnd). A request's flow closes `closed`
 * once the origin's whole response has been handed to the client socket. After a connection's last
 * answer (`connection: close`, a 429, a drain) it ends lingering, as the gateway's refusals do: our
 * FIN, what the client still sends dropped, closed at its FIN or 2 s after the answer is written out.
 */
import type { Socket } from 'node:net';
import type { Dispatcher } from 'undici';
import type { GatewayContext } from '../context.ts';
import type { Flow } from '../flow/flow.ts';
import { formatAuthority } from '../protocol/authority.ts';
import type { RejectMapping } from '../reject.ts';
import { SlotArray } from '../slot-array.ts';
import { type ConnectionState, connectionState, mayCutIdle, resetOrDestroy } from './http-connection-state.ts';
import { httpDate } from './http-date.ts';
import { type FastRequestHead, parseFastRequestHead } from './http-fast-head.ts';
import { OriginExchange } from './http-forward.ts';
import { noteChunkQueued } from './http-origin-reads.ts';
import { dispatchToOrigin, StaggeredOrigin } from './http-origin-dial.ts';
import { forwardRequestHeaders, forwardResponseHeaders, INVALID_FIELD_CHAR, relayedStatusText } from './http-headers.ts';
import type { HttpListenerState } from './http-proxy.ts';
import { lingerOnceWritten, type RefusalDetails, refusalDetails, refusalText } from './http-refusal.ts';
import { type AbsoluteTarget, hostHeaderFor, parseAbsoluteTarget } from './http-target.ts';

/** Idle time allowed between two requests of a connection (node:http's keepAliveTimeout here). */
export const KEEP_ALIVE_MS = 5000;

export interface FastPath {
  /**
   * Offer a new connection's first bytes. True: the fast path serves the connection from now on.
   * False: nothing was taken or changed; the caller hands the bytes and the socket to node:http.
   */
  take(socket: Socket, first: Buffer, handOver: HandOver): boolean;
  /** Close connections waiting between requests; those serving one close after it (drain). */
  closeIdle(): void;
}

/** Gives a socket to node:http with `bytes` pushed back unread (no listeners of ours are left on it). */
export type HandOver = (socket: Socket, bytes: Buffer) => void;

/** The fast path of one listener. */
export function createFastPath(state: HttpListenerState): FastPath {
  // A SlotArray, not a Set: see gateway/slot-array.ts.
  const live = new SlotArray<FastConnection>();
  let isClosing = false;
  const path: FastPathShared = {
    state,
    live,
    isClosing: () => isClosing,
  };
  return {
    take(socket, first, handOver) {
      if (isClosing) return false;
      const start = acceptable(state, first);
      if (start === null) return false;
      const conn = new FastConnection(path, socket, handOver);
      conn.slot = live.add(conn);
      conn.serve(start.head, start.target);
      return true;
    },
    closeIdle() {
      isClosing = true;
      for (const conn of live.values()) conn.closeIfIdle();
    },
  };
}

interface FastPathShared {
  readonly state: HttpListenerState;
  readonly live: SlotArray<FastConnection>;
  isClosing(): boolean;
}

type OkTarget = Extract<AbsoluteTarget, { ok: true }>;

/** `bytes` as exactly one fast request head and its target, or null. */
function acceptable(state: HttpListenerState, bytes: Buffer): { head: FastRequestHead; target: OkTarget } | null {
  const head = parseFastRequestHead(bytes, state.ctx.policy.current().config.limits.maxHeaderBytes);
  if (head === null || head.end !== bytes.length) return null;
  const target = parseAbsoluteTarget(head.url);
  return target.ok ? { head, target } : null;
}

/** One client connection served by the fast path. */
class FastConnection {
  private readonly path: FastPathShared;
  readonly socket: Socket;
  private readonly handOver: HandOver;
  readonly conn: ConnectionState;
  /** A request is being served (admission, or its exchange with the origin). */
  private isBusy = false;
  /** The current request's exchange with its origin, once admitted. */
  private exchange: FastExchange | null = null;
  /**
   * The client sent more while a request was served (the next request): those bytes are back in the
   * socket, unread, and reading is paused until the request is answered (see onData).
   */
  private isHolding = false;
  private isGone = false;
  /** The client sent its FIN: no request comes after those already read (see onEnd). */
  private isHalfClosed = false;
  /** Its last response is answered and our side ended: what the client still sends is dropped (endLingering). */
  private isEnded = false;
  /** This connection's slot in the fast path's live connections. */
  slot = -1;
  /** The socket's timeout: the shorter of KEEP_ALIVE_MS and limits.idleTimeoutMs (at connection start). */
  private readonly timeoutMs: number;
  /** Waiting out the rest of the longer limit after the socket timer fired (see onTimeout), or null. */
  private extension: NodeJS.Timeout | null = null;

  constructor(path: FastPathShared, socket: Socket, handOver: HandOver) {
    this.path = path;
    this.socket = socket;
    this.handOver = handOver;
    this.conn = connectionState(socket);
    // Flowing mode: each chunk as it is read (no 'readable' round trip per request).
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onClose);
    socket.on('error', ignore);
    socket.on('drain', this.onDrain);
    socket.on('timeout', this.onTimeout);
    this.timeoutMs = Math.min(KEEP_ALIVE_MS, path.state.ctx.policy.current().config.limits.idleTimeoutMs);
    socket.setTimeout(this.timeoutMs);
    socket.resume();
  }

  /** Serve one request (its head was read whole); the next is taken once this one is answered. */
  serve(head: FastRequestHead, target: OkTarget): void {
    const { state } = this.path;
    this.isBusy = true;
    this.run(head, target).catch((err: unknown) => {
      state.ctx.log.error({ err: (err as Error).message }, 'proxy request handler failed');
      this.socket.destroy();
    });
  }

  private async run(head: FastRequestHead, target: OkTarget): Promise<void> {
    const { state } = this.path;
    const { ctx } = state;
    const result = await state.admitRequest({ url: head.url, headers: head.headers, socket: this.socket }, 'http', target.host, target.port);
    if (!result.ok) {
      this.answer(result.reject, refusalDetails(result), head.isLast, head.method === 'HEAD');
      return;
    }
    const { flow } = result;
    if (this.isGone || this.socket.destroyed) {
      if (flow.state === 'active') ctx.flows.close(flow, this.conn.isTimedOut ? 'idle-timeout' : 'client-reset');
      return;
    }
    // Killed while admission ran (admin DELETE, quarantine): its record is written; the client is reset.
    if (flow.state !== 'active') {
      resetOrDestroy(this.socket);
      return;
    }
    const headers = forwardRequestHeaders(head.rawHeaders, {
      host: hostHeaderFor(target.host, target.port),
      stripped: state.strippedHeaders(result.snapshot),
      via: ctx.via.value,
    });
    const exchange = new FastExchange(this, ctx, flow, head.method === 'HEAD', head.isLast);
    this.exchange = exchange;
    if (this.isHalfClosed) exchange.clientHalfClosed();
    const limits = result.snapshot.config.limits;
    const opts: Dispatcher.DispatchOptions = {
      origin: `http://${formatAuthority(result.ip, flow.destination.port)}`,
      path: target.path,
      method: head.method,
      headers,
      headersTimeout: limits.idleTimeoutMs,
      bodyTimeout: limits.idleTimeoutMs,
    };
    this.conn.isAwaitingOrigin = true;
    const agent = state.agents.for(result.upstream, limits.connectTimeoutMs);
    if (result.alternates.length > 0 && result.upstream === null) exchange.alternates = new StaggeredOrigin(ctx, result, opts, agent, exchange);
    dispatchToOrigin(agent, opts, exchange);
  }

  /**
   * A refusal or failure before any response byte: answered here, the connection goes on. `isHead`:
   * the request was a HEAD, answered without the JSON body (its framing would desync the client).
   */
  answer(mapping: RejectMapping, details: RefusalDetails, isLast: boolean, isHead: boolean): void {
    if (this.isGone) return;
    // A 429 is the connection's last answer (what the client sent ahead is dropped): one refusal
    // per connection for a client over its rate, as on node:http.
    if (mapping.status === 429) this.conn.isShedding = true;
    const last = isLast || this.mustClose() || this.conn.isShedding;
    this.socket.write(refusalText(mapping, details, last, isHead));
    this.next(last);
  }

  /**
   * The connection must end after the current response: the listener closes or drains, or the client
   * half-closed (its FIN is read only once nothing is held: no further request can come).
   */
  mustClose(): boolean {
    return this.path.isClosing() || this.path.state.ctx.isDraining() || this.isHalfClosed;
  }

  /** The current request is answered: end the connection, or wait for (or take) the next request. */
  next(isLast: boolean): void {
    this.isBusy = false;
    this.exchange = null;
    this.conn.isAwaitingOrigin = false;
    if (this.isGone) return;
    // Between requests: KEEP_ALIVE_MS (onTimeout).
    if (isLast || this.mustClose()) {
      this.endLingering();
      return;
    }
    if (!this.isHolding) return;
    // What the client sent meanwhile now flows to onData as it came (a FIN behind it after it).
    this.isHolding = false;
    this.socket.resume();
  }

  /**
   * Request bytes between requests: one whole fast head → serve it; anything else → node:http (also
   * after the client's FIN: a FIN behind these bytes has not been read yet, see onData).
   */
  private dispatch(bytes: Buffer): void {
    const start = acceptable(this.path.state, bytes);
    if (start === null) {
      // Paused while node:http attaches, then resumed: node's 'data' listener gets these bytes first.
      const s = this.socket;
      s.pause();
      this.release();
      this.handOver(s, bytes);
      s.resume();
      return;
    }
    this.serve(start.head, start.target);
  }

  /** Detach every listener of ours: the socket is node:http's (or closed) from here on. */
  private release(): void {
    const s = this.socket;
    this.path.live.remove(this.slot, this);
    s.setTimeout(0);
    this.stopExtension();
    s.removeListener('data', this.onData);
    s.removeListener('end', this.onEnd);
    s.removeListener('close', this.onClose);
    s.removeListener('error', ignore);
    s.removeListener('drain', this.onDrain);
    s.removeListener('timeout', this.onTimeout);
  }

  closeIfIdle(): void {
    if (!this.isBusy && !this.isGone && !this.isEnded) this.endLingering();
  }

  /**
   * The connection's last answer is handed to the socket (or there is none: closeIfIdle): our side
   * ends, and what the client still sends is read and dropped (pipelined requests unanswered) until
   * its FIN, or LINGER_MS after our answer and FIN are written out (lingerThenDestroy), whatever it
   * sends meanwhile. From 'finish', not from now: a slow reader may still be receiving a large
   * response, and it gets it whole. Before, only the client's FIN or KEEP_ALIVE_MS of its silence
   * ended it: a client that kept sending kept the connection.
   */
  private endLingering(): void {
    this.isEnded = true;
    this.isHolding = false;
    const s = this.socket;
    s.end();
    // Read on (dropping what is held and what comes) to see the client's FIN.
    if (s.isPaused()) s.resume();
    // A client that never reads the answer but keeps sending re-arms the socket's timer (onTimeout)
    // with every byte: without write progress for limits.idleTimeoutMs it is reset (lingerOnceWritten).
    lingerOnceWritten(s, this.path.state.ctx.policy.current().config.limits.idleTimeoutMs);
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.isEnded) return;
    if (!this.isBusy) {
      this.dispatch(chunk);
      return;
    }
    // While a request is served, what comes (the next request) goes back into the socket, unread, and
    // reading pauses until the answer is out (next). The stream still buffers up to its highWaterMark,
    // so a reset is seen; but with bytes held, a FIN behind them is not emitted as 'end' until they are
    // taken: node:http, which cannot take a connection whose end has been read, can still be handed a
    // request the fast path does not serve (a body, a split head), and answers it before the FIN.
    const s = this.socket;
    s.pause();
    s.unshift(chunk);
    this.isHolding = true;
  };

  /**
   * The client's FIN: a half-close (RFC 9112 §9.6), not an abort. The request being served is still
   * answered, whole (its flow `closed`), then the connection ends (no further request can come): the
   * answer then says `connection: close` where its head is not already out (mustClose). Requests sent
   * before the FIN are answered first: the FIN is emitted only once they are taken (onData), by the
   * fast path or node:http. Between requests the connection ends now. The limits still apply:
   * an origin silent for finGraceMs after the FIN ends the flow `client-reset` (a client that closed
   * sends the same FIN: OriginExchange.clientHalfClosed), limits.idleTimeoutMs while the answer is
   * written to a client that does not read it.
   */
  private readonly onEnd = (): void => {
    this.isHalfClosed = true;
    this.exchange?.clientHalfClosed();
    if (!this.isBusy && !this.isEnded && !this.isGone) this.endLingering();
  };

  private readonly onClose = (): void => {
    this.isGone = true;
    this.stopExtension();
    this.path.live.remove(this.slot, this);
    this.exchange?.clientGone();
  };

  private readonly onDrain = (): void => {
    this.exchange?.resumeOrigin();
  };

  /**
   * The socket was silent for timeoutMs (node re-arms its timer on every read and write). While the
   * request waits on its origin, the origin's timeouts decide. Otherwise the limit is
   * limits.idleTimeoutMs while a request is served and KEEP_ALIVE_MS between requests; where it is
   * longer than timeoutMs, a one-off timer waits out the rest from now, and the connection goes only if
   * it was silent all along (byte counts unchanged). Any later silence of timeoutMs starts it afresh.
   */
  private readonly onTimeout = (): void => {
    this.stopExtension();
    if (!mayCutIdle(this.conn)) return;
    const s = this.socket;
    const limit = this.isBusy ? this.path.state.ctx.policy.current().config.limits.idleTimeoutMs : KEEP_ALIVE_MS;
    if (limit <= this.timeoutMs) {
      this.cutIdle();
      return;
    }
    const mark = s.bytesRead + s.bytesWritten;
    this.extension = setTimeout(() => {
      this.extension = null;
      if (!s.destroyed && s.bytesRead + s.bytesWritten === mark && mayCutIdle(this.conn)) this.cutIdle();
    }, limit - this.timeoutMs);
    this.extension.unref();
  };

  /** Close the connection for silence: a request still served ends `idle-timeout`, not `client-reset`. */
  private cutIdle(): void {
    this.conn.isTimedOut = true;
    this.socket.destroy();
  }

  private stopExtension(): void {
    if (this.extension === null) return;
    clearTimeout(this.extension);
    this.extension = null;
  }
}

/** One request sent to its origin and answered on the raw socket: the undici handler. */
class FastExchange extends OriginExchange {
  private readonly owner: FastConnection;
  private readonly isHead: boolean;
  private isLast: boolean;
  private resume: (() => void) | null = null;
  /** The response head, kept until the first body bytes (or the end) so both go in one writev. */
  private head: string | null = null;
  private isHeadSent = false;
  private isChunked = false;

  constructor(owner: FastConnection, ctx: GatewayContext, flow: Flow, isHead: boolean, isLast: boolean) {
    super(ctx, flow, owner.conn);
    this.owner = owner;
    this.isHead = isHead;
    this.isLast = isLast;
  }

  /** The client connection closed (a reset, or we cut it for silence) before the response was complete. */
  clientGone(): void {
    if (this.isClientGone || this.flow.state !== 'active') return;
    this.abortOrigin('client went away');
    this.finish(this.clientGoneReason());
  }

  resumeOrigin(): void {
    this.resume?.();
  }

  protected isResponseStarted(): boolean {
    return this.isHeadSent;
  }

  protected isWaitOnClient(): boolean {
    return this.owner.socket.writableLength > 0;
  }

  protected cutClient(reset: boolean): void {
    if (reset) resetOrDestroy(this.owner.socket);
    else this.owner.socket.destroy();
  }

  protected answerFailure(mapping: RejectMapping, details: RefusalDetails): void {
    this.owner.answer(mapping, details, this.isLast, this.isHead);
  }

  protected writeInterim(head: string): void {
    // Every request served here is HTTP/1.1 (http-fast-head.ts), and one at a time: the 1xx goes at
    // once, not corked with the final head (the client acts on its hints while the origin works).
    if (this.isClientGone || this.isHeadSent || this.head !== null) return;
    this.owner.socket.write(head, 'latin1');
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (this.isClientGone) return true;
    if (statusCode < 200) {
      this.onInterim(statusCode, rawHeaders, statusText);
      return true;
    }
    if (this.refuseUnrelayable(statusCode, rawHeaders)) return true;
    this.status = statusCode;
    this.connection.isAwaitingOrigin = false;
    this.resume = resume;
    const headers = forwardResponseHeaders(rawHeaders, { via: this.responseVia() });
    let head = `HTTP/1.1 ${statusCode} ${relayedStatusText(statusCode, statusText)}\r\n`;
    let hasLength = false;
    let hasDate = false;
    for (let i = 0; i + 1 < headers.length; i += 2) {
      const name = headers[i] as string;
      const value = headers[i + 1] as string;
      if (INVALID_FIELD_CHAR.test(value)) continue;
      const lower = name.length === 14 || name.length === 4 ? name.toLowerCase() : '';
      if (lower === 'content-length') {
        // RFC 9110 §8.6: a 204 carries no Content-Length (a 304's stands for the representation: kept).
        if (statusCode === 204) continue;
        hasLength = true;
      } else if (lower === 'date') hasDate = true;
      head += `${name}: ${value}\r\n`;
    }
    if (!hasDate) head += `date: ${httpDate()}\r\n`;
    // Framing for this client (RFC 9112 §6.3): no body after HEAD, 204 or 304; otherwise the
    // origin's Content-Length, or chunked when the origin gave none.
    if (!this.isHead && statusCode !== 204 && statusCode !== 304 && !hasLength) {
      this.isChunked = true;
      head += 'transfer-encoding: chunked\r\n';
    }
    if (!this.isLast && this.owner.mustClose()) this.isLast = true;
    if (this.isLast) head += 'connection: close\r\n';
    this.head = `${head}\r\n`;
    return true;
  }

  onData(chunk: Buffer): boolean {
    // undici passes empty chunks too; in chunked framing an empty chunk would end the body.
    if (this.isClientGone || chunk.length === 0) return true;
    this.flow.bytesIn += chunk.length;
    const s = this.owner.socket;
    const head = this.head;
    if (head === null && !this.isChunked) {
      const ok = s.write(chunk);
      if (s.writableLength !== 0) noteChunkQueued();
      return ok;
    }
    s.cork();
    if (head !== null) {
      this.head = null;
      this.isHeadSent = true;
      s.write(head, 'latin1');
    }
    if (this.isChunked) s.write(`${chunk.length.toString(16)}\r\n`);
    let ok = s.write(chunk);
    if (this.isChunked) ok = s.write('\r\n');
    s.uncork();
    if (s.writableLength !== 0) noteChunkQueued();
    return ok;
  }

  onComplete(trailers?: readonly (Buffer | string)[] | null): void {
    if (this.isCutByReset(trailers) || this.isClientGone) return;
    const s = this.owner.socket;
    let tail = this.head ?? '';
    this.head = null;
    this.isHeadSent = true;
    if (this.isChunked) tail += '0\r\n\r\n';
    if (tail !== '') s.write(tail, 'latin1');
    this.finish('closed');
    this.owner.next(this.isLast);
  }
}

function ignore(): void {}
