/**
 * The absolute-URI path: one admitted request (`GET http://host/…`) sent to its origin with undici
 * and the response streamed back, never buffered whole.
 *
 * Pinning and pooling: http-origin-agents.ts (OriginAgents). What an exchange with the origin
 * shares with the fast path's, its timers and what an origin failure means: http-origin-exchange.ts
 * (OriginExchange). Both are re-exported here, their names unchanged.
 *
 * Metering (SPEC §5, payload only): `bytesOut` = request body bytes undici wrote to the origin
 * connection (its `onBodySent`, after de-chunking: the client's chunk framing is not payload);
 * `bytesIn` = response body bytes received from the origin (`onData`, after undici removed the
 * origin's chunk framing). Request and response heads, the relayed 1xx heads among them
 * (http-interim.ts), are the proxy handshake and never counted.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Dispatcher } from 'undici';
import type { Admitted } from '../admission.ts';
import type { Flow } from '../flow/flow.ts';
import { resetWhenFlushed } from '../flow/tunnel.ts';
import type { GatewayContext } from '../context.ts';
import { formatAuthority } from '../protocol/authority.ts';
import type { RejectMapping } from '../reject.ts';
import { type ClientCloseWatcher, clientGoneReason, connectionState, resetOrDestroy, unwatchClientClose, watchClientClose } from './http-connection-state.ts';
import { closeAfterEarlyAnswer } from './http-early-answer.ts';
import type { OriginAgents } from './http-origin-agents.ts';
import { OriginExchange } from './http-origin-exchange.ts';
import { noteChunkQueued } from './http-origin-reads.ts';
import { dispatchToOrigin, StaggeredOrigin } from './http-origin-dial.ts';
import { dropContentLength, forwardResponseHeaders, relayedStatusText } from './http-headers.ts';
import { type RefusalDetails, sendRefusal } from './http-refusal.ts';

export { ORIGIN_KEEPALIVE_MAX_MS, OriginAgents } from './http-origin-agents.ts';
export { OriginExchange, undiciErrorCode } from './http-origin-exchange.ts';

export interface ForwardTarget {
  /** Origin-form request target, exactly as the client wrote it after the authority. */
  readonly path: string;
  /** Headers for the origin (hop-by-hop and identity headers already removed, Host and Via set). */
  readonly headers: string[];
  readonly hasBody: boolean;
}

/**
 * Send one admitted request to its origin and stream the answer back. The flow is closed exactly
 * once, when the exchange ends (`closed`), the client goes away (`client-reset`), or the origin
 * fails (the failure's reason; before any response byte the client gets the refusal body).
 */
export function forwardRequest(
  ctx: GatewayContext,
  agents: OriginAgents,
  admitted: Admitted,
  req: IncomingMessage,
  res: ServerResponse,
  target: ForwardTarget,
): void {
  const { flow, snapshot } = admitted;
  // The client may have gone while admission ran; its 'close' has then already been emitted. Or
  // node's parser refused its body meanwhile (a malformed chunk, in the packet of the head: the
  // client was answered 400): nothing is dialled for a request that can never be sent whole.
  const connection = connectionState(req.socket);
  if (res.destroyed || req.socket.destroyed || connection.isMalformed) {
    if (flow.state === 'active') ctx.flows.close(flow, clientGoneReason(connection));
    return;
  }
  // Killed while admission ran (admin DELETE, quarantine): its record is written; the client is reset.
  if (flow.state !== 'active') {
    res.destroy();
    resetOrDestroy(req.socket);
    return;
  }
  const exchange = new Exchange(ctx, flow, req, res);
  let body: IncomingMessage | AsyncIterable<Buffer> | null = null;
  if (target.hasBody) body = Number.isFinite(flow.budgetOut) ? budgeted(req, flow, () => {
      // The detection engine decides: cut at exactly the budget (enforce), or let it run (monitor: would-kill).
      const cut = flow.onBudget ? flow.onBudget(flow) : true;
      if (cut) ctx.flows.kill(flow.id, 'an0080.bulk-upload');
      return cut;
    }) : req;
  const idleTimeoutMs = snapshot.config.limits.idleTimeoutMs;
  const opts: Dispatcher.DispatchOptions = {
    origin: `http://${formatAuthority(admitted.ip, flow.destination.port)}`,
    path: target.path,
    method: req.method as Dispatcher.HttpMethod,
    headers: target.headers,
    body: body as Dispatcher.DispatchOptions['body'],
    headersTimeout: idleTimeoutMs,
    bodyTimeout: idleTimeoutMs,
  };
  exchange.awaitOrigin(target.hasBody);
  const agent = agents.for(admitted.upstream, snapshot.config.limits.connectTimeoutMs);
  // The name's other addresses dialled staggered with the first (undici reads the body only once connected).
  if (admitted.alternates.length > 0 && admitted.upstream === null) exchange.alternates = new StaggeredOrigin(ctx, admitted, opts, agent, exchange);
  dispatchToOrigin(agent, opts, exchange);
}

/** One request/response exchange on node:http's IncomingMessage and ServerResponse. */
class Exchange extends OriginExchange implements ClientCloseWatcher {
  private readonly req: IncomingMessage;
  private readonly res: ServerResponse;
  /** Kept: undici detaches `req.socket` once it has consumed the request body. */
  private readonly clientSocket: Socket;
  private resume: (() => void) | null = null;
  private isUpstreamDone = false;
  /** The answer's head came while the client still owed body bytes: the connection ends after it. */
  private isEarly = false;
  /**
   * The final response's fields and reason phrase, held from onHeaders until its first body byte or
   * its end (sendHead), or null. res.writeHead only stores a head (node sends it with the first write),
   * but sets headersSent: an origin whose body broke before its first byte then left nothing to
   * answer with, and the client got a bare close where the fast path answers 502.
   */
  private heldHeaders: string[] | null = null;
  private heldText = '';

  constructor(ctx: GatewayContext, flow: Flow, req: IncomingMessage, res: ServerResponse) {
    super(ctx, flow, connectionState(req.socket));
    this.req = req;
    this.res = res;
    this.clientSocket = req.socket;
    // RFC 9112 §6.1: no transfer coding to an HTTP/1.0 client, whose answer without a length is
    // close-delimited. node:http chunks one whose request lists `chunked` in TE (ServerResponse).
    if (req.httpVersionMinor === 0) res.useChunkedEncodingByDefault = false;
    res.once('close', () => this.onClientClose());
    // A response queued behind another (pipelining) gets no 'close' when the client leaves.
    watchClientClose(req.socket, this.connection, this);
  }

  /** The response closed (sent, or the client went), or the client socket closed. Once. */
  onClientClose(): void {
    if (this.isUpstreamDone && this.res.writableFinished) {
      this.finish('closed');
      return;
    }
    this.abortOrigin('client went away');
    this.finish(this.clientGoneReason());
  }

  /**
   * The request is sent on. With a body still to come from the client, the connection waits on the
   * client (limits.idleTimeoutMs applies) until the body is whole; then on the origin.
   */
  awaitOrigin(hasBody: boolean): void {
    if (!hasBody || this.req.complete) {
      this.connection.isAwaitingOrigin = true;
      return;
    }
    this.req.once('end', () => {
      // Not once the origin has answered (early) or failed.
      if (this.status === 0 && !this.isUpstreamDone) this.connection.isAwaitingOrigin = true;
    });
  }

  protected override finish(reason: string): void {
    unwatchClientClose(this.connection, this);
    super.finish(reason);
  }

  protected isResponseStarted(): boolean {
    return this.res.headersSent;
  }

  protected isWaitOnClient(): boolean {
    const { res } = this;
    return this.isUpstreamDone || res.socket === null || res.writableLength > 0 || this.clientSocket.writableLength > 0;
  }

  /** The client's FIN (watchClientClose): its request is whole, or the parser has already failed it. */
  onClientFin(): void {
    if (this.req.complete) this.clientHalfClosed();
  }

  protected cutClient(reset: boolean): void {
    // The reset first: res.destroy() destroys the socket, and a reset after that sends nothing (the
    // client read a FIN, a clean end).
    if (reset) resetOrDestroy(this.clientSocket);
    else if (this.res.headersSent && !this.clientSocket.destroyed) {
      // Cut mid-body (the origin failed): a reset once what was written is handed over, not a FIN,
      // which would end an HTTP/1.0 client's close-delimited body as if it were whole.
      resetWhenFlushed(this.clientSocket);
      return;
    }
    this.res.destroy();
  }

  protected answerFailure(mapping: RejectMapping, details: RefusalDetails): void {
    // The kept socket: after an origin failure mid-upload undici has detached `req.socket` (502
    // upstream-reset), and the answer must still end lingering, not in node's reset.
    sendRefusal(this.res, mapping, details, !this.req.complete, this.clientSocket);
  }

  protected writeInterim(head: string): void {
    const { req, res } = this;
    // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client. The head goes on the socket only while this is
    // its current response (a pipelined one queued behind another has no socket yet: dropped) and
    // before its own head. Not res.writeEarlyHints: it sends 103 only, requires a Link and throws on
    // valid ones (a comma-separated list, a quoted title with a space).
    if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) return;
    const socket = res.socket;
    if (socket === null || res.headersSent || socket.destroyed) return;
    socket.write(head, 'latin1');
  }

  onBodySent(chunk: unknown): void {
    // undici passes the chunk itself (its typings say a size); accept both.
    this.flow.bytesOut += typeof chunk === 'number' ? chunk : Buffer.byteLength(chunk as Buffer);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) {
      this.onInterim(statusCode, rawHeaders, statusText);
      return true;
    }
    if (this.refuseUnrelayable(statusCode, rawHeaders)) return true;
    this.status = statusCode;
    this.connection.isAwaitingOrigin = false;
    if (this.resume === null) {
      this.resume = resume;
      // From the next tick: node:http emits a pipelined connection's 'drain' on the response in
      // progress from within another response's write (its queued output counted, _http_server's
      // updateOutgoingData), so inside that one's undici parser; undici's resume asserts no parser
      // runs, and the assertion failed the later request (`unreachable`) and cut the connection.
      this.res.on('drain', () => process.nextTick(resume));
    }
    const headers = forwardResponseHeaders(rawHeaders, { via: this.responseVia() });
    // RFC 9110 §8.6: a 204 carries no Content-Length (a 304's stands for the representation: kept).
    if (statusCode === 204) dropContentLength(headers);
    // An answer before the whole body (an early 413): the rest of the body is not read, so this
    // connection carries no further request (closeAfterEarlyAnswer); nor while draining.
    this.isEarly = !this.req.complete;
    if (this.isEarly || this.ctx.isDraining()) headers.push('connection', 'close');
    this.heldHeaders = headers;
    this.heldText = relayedStatusText(statusCode, statusText);
    return true;
  }

  /** The held head goes to node:http (isResponseStarted from here on): see heldHeaders. */
  private sendHead(headers: string[]): void {
    this.heldHeaders = null;
    this.res.writeHead(this.status, this.heldText, headers);
  }

  onData(chunk: Buffer): boolean {
    const held = this.heldHeaders;
    if (held !== null) {
      // undici passes empty chunks too: not a body byte, the head stays held.
      if (chunk.length === 0) return true;
      this.sendHead(held);
    }
    this.flow.bytesIn += chunk.length;
    const ok = this.res.write(chunk);
    if (this.res.writableLength !== 0) noteChunkQueued();
    return ok;
  }

  onComplete(trailers?: readonly (Buffer | string)[] | null): void {
    if (this.isCutByReset(trailers)) return;
    this.isUpstreamDone = true;
    if (this.heldHeaders !== null) this.sendHead(this.heldHeaders);
    if (this.isEarly) closeAfterEarlyAnswer(this.req, this.res, this.clientSocket, this.connection);
    this.res.end();
  }

  override onError(err: Error): void {
    if (!this.clientSocket.destroyed && this.isSentElsewhere(err)) return;
    this.isUpstreamDone = true;
    // The client connection went first (a reset or the idle cut mid-body: undici then fails on the
    // request body): the flow ends for the client's reason, not as an origin failure.
    if (this.clientSocket.destroyed && this.flow.state === 'active') {
      this.connection.isAwaitingOrigin = false;
      this.abortOrigin('client went away');
      this.finish(this.clientGoneReason());
      return;
    }
    super.onError(err);
  }
}

/**
 * A request body that stops at the flow's byte budget (an0080 kill): what fits is sent, then the
 * flow is cut, so not one byte past the budget reaches the origin. Only used when a budget is set;
 * the common path hands `req` to undici directly.
 */
async function* budgeted(req: IncomingMessage, flow: Flow, onExceeded: () => boolean): AsyncGenerator<Buffer> {
  let sent = 0;
  for await (const data of req as AsyncIterable<Buffer>) {
    let chunk = data;
    // Past the budget the engine either cuts, or moves flow.budgetOut on (and the rest meets that).
    while (chunk.length > flow.budgetOut - sent) {
      const room = flow.budgetOut - sent;
      if (room > 0) {
        sent += room;
        yield chunk.subarray(0, room);
        chunk = chunk.subarray(room);
      }
      const before = flow.budgetOut;
      if (onExceeded()) return;
      if (flow.budgetOut <= before) flow.budgetOut = Number.POSITIVE_INFINITY;
    }
    sent += chunk.length;
    yield chunk;
  }
}
