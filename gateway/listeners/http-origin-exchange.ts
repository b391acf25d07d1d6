/**
 * What both absolute-URI paths' undici handlers share (OriginExchange: http-forward.ts's Exchange on
 * node:http, http-fast-path.ts's FastExchange on the raw socket), and what an undici or socket error
 * means to the gateway (undiciErrorCode).
 */
import type { Socket } from 'node:net';
import type { Dispatcher } from 'undici';
import { type Flow, KILLED_WHILE_DIALLING } from '../flow/flow.ts';
import type { GatewayContext } from '../context.ts';
import { dialErrorCode, errorText, GatewayError, type GatewayErrorCode, isOwnShortage } from '../errors.ts';
import { mapError, mapKill, type RejectMapping } from '../reject.ts';
import { type ConnectionState, clientGoneReason, finGraceMs } from './http-connection-state.ts';
import type { StaggeredOrigin } from './http-origin-dial.ts';
import { type ReceivedVersion, unrelayableFraming } from './http-headers.ts';
import { isReceivedInHttp10, setReadPastInterim } from './http-origin-reads.ts';
import { isCutByOriginReset } from './http-origin-reset.ts';
import { closeIfTrailersSayClose, letGoOfOrigin, noteConnecting, resetOriginSocket, type SocketHolder } from './http-origin-socket.ts';
import { interimResponseHead, isRelayableInterim, MAX_INTERIM_RELAYED } from './http-interim.ts';
import type { RefusalDetails } from './http-refusal.ts';

/** The byte budget's kill (http-forward.ts budgeted): its origin connection is not reset. */
const BUDGET_KILL = 'an0080.bulk-upload';

/** Turn an undici / socket error into a gateway code, once, here. */
export function undiciErrorCode(err: unknown): GatewayErrorCode {
  if (err instanceof GatewayError) return err.code;
  const code = (err as { code?: unknown } | null)?.code;
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return 'EGW_DIAL_TIMEOUT';
    case 'UND_ERR_SOCKET':
      // undici also closes the socket with this code when the origin breaks the protocol: a 100
      // Continue nobody asked for, a 101 to a request without Upgrade, a response with no request.
      return isProtocolViolation(err) ? 'EGW_UPSTREAM_BAD_RESPONSE' : 'EGW_UPSTREAM_RESET';
    case 'UND_ERR_CLOSED':
    case 'UND_ERR_DESTROYED':
      return 'EGW_UPSTREAM_RESET';
    // The origin answered, but its response is not one to relay: a framing or parse error (llhttp's
    // HPE_* codes: duplicate or conflicting lengths, bad bytes, obs-fold), a body that does not match
    // its Content-Length, or a head past undici's limits.
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
    case 'UND_ERR_RES_EXCEEDED_MAX_SIZE':
    case 'UND_ERR_HEADERS_OVERFLOW':
      return 'EGW_UPSTREAM_BAD_RESPONSE';
    case 'UND_ERR_INVALID_ARG':
    case 'UND_ERR_NOT_SUPPORTED':
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH':
      return 'EGW_BAD_REQUEST';
    default:
      // undici's HTTPParserError carries llhttp's HPE_* code, or none.
      if ((err as Error | null)?.name === 'HTTPParserError' || (typeof code === 'string' && code.startsWith('HPE_'))) return 'EGW_UPSTREAM_BAD_RESPONSE';
      return dialErrorCode(err);
  }
}

/** undici's SocketError messages for an origin that broke HTTP/1.1 (client-h1.js), not a reset. */
const PROTOCOL_VIOLATIONS: ReadonlySet<string> = new Set(['bad response', 'bad upgrade']);

function isProtocolViolation(err: unknown): boolean {
  const message = (err as Error | null)?.message;
  return typeof message === 'string' && PROTOCOL_VIOLATIONS.has(message);
}

/**
 * What both absolute-URI paths' undici handlers share (this file's Exchange, and http-fast-path.ts's
 * for requests served on the raw socket): the flow's close, the connect mark, the origin abort when
 * the client goes, and what an origin failure means for the flow and the client. A subclass says how
 * its client is answered or cut. Methods on the prototype: a request costs one object.
 */
export abstract class OriginExchange implements Dispatcher.DispatchHandler, SocketHolder, ReceivedVersion {
  protected readonly ctx: GatewayContext;
  protected readonly flow: Flow;
  readonly connection: ConnectionState;
  protected isClientGone = false;
  /** The final response's status once its head has come, else 0. */
  protected status = 0;
  private abortUpstream: ((err?: Error) => void) | null = null;
  /** The origin connection undici wrote the request on, until it is done with it (http-origin-socket.ts): a kill resets it. */
  originSocket: Socket | null = null;
  private isConnected = false;
  /**
   * The staggered dial of the name's addresses (StaggeredOrigin), for a flow whose name has several
   * and no parent proxy. Null for the one-address destinations most flows have.
   */
  alternates: StaggeredOrigin | null = null;
  /** When the first 1xx (interim) response came (performance.now()), or 0: see onInterim. */
  private interimSinceMs = 0;
  /** The 1xx responses relayed to the client so far (at most MAX_INTERIM_RELAYED). */
  private interimRelayed = 0;
  /** llhttp is told to read on past a 1xx that says the connection ends (setReadPastInterim), until the final head. */
  private isReadingPastInterim = false;
  /** Armed by the client's FIN (clientHalfClosed): the origin's silence past finGraceMs ends the flow. */
  private finTimer: NodeJS.Timeout | null = null;
  /** What the origin had sent when finTimer was armed (flow.bytesIn, the head as 1). */
  private finMark = 0;
  /** The client's FIN came while the origin connection was being dialled: finTimer is armed at onConnect. */
  private isFinWhileDialling = false;
  /** The wait for the response's head once the request is whole at the origin: see onRequestSent. */
  private headTimer: NodeJS.Timeout | null = null;

  constructor(ctx: GatewayContext, flow: Flow, connection: ConnectionState) {
    this.ctx = ctx;
    this.flow = flow;
    this.connection = connection;
    // A detector kill or admin DELETE: cut both sides now. Before the origin connection is made, the
    // client hears what the kill means (the kill destroys the connecting socket: FlowTable.kill).
    flow.abort = (reason: string) => {
      if (!this.isConnected && !this.isResponseStarted()) {
        this.isClientGone = true;
        this.connection.isAwaitingOrigin = false;
        this.answerFailure(mapKill(flow.closeReason ?? 'admin'), { flowId: flow.id, isBlock: flow.verdict === 'block' });
        return;
      }
      // undici's abort closes the origin connection with a FIN: reset first, as the client is. Not
      // for the byte budget's kill, whose origin side closes as a tunnel's does (docs/spec-notes.md):
      // a reset would drop body bytes that fit the budget, still queued for the origin.
      if (reason !== BUDGET_KILL) this.resetOrigin();
      this.abortOrigin('flow killed');
      this.cutClient(true);
    };
  }

  /** The flow this exchange carries. */
  flowOf(): Flow {
    return this.flow;
  }

  /** Close the flow with `reason`, once. */
  protected finish(reason: string): void {
    if (this.finTimer !== null) {
      clearTimeout(this.finTimer);
      this.finTimer = null;
    }
    if (this.headTimer !== null) {
      clearTimeout(this.headTimer);
      this.headTimer = null;
    }
    if (this.flow.state === 'active') this.ctx.flows.close(this.flow, reason);
  }

  /**
   * The client sent its FIN after its whole request: a half-close, not an abort (RFC 9112 §9.6). The
   * answer is still relayed whole; but TCP does not tell a half-close from a client that closed until
   * something is written to it, so the origin gets finGraceMs of silence at a time (one timer, checked
   * when it fires: nothing per chunk). Silent that long, with nothing of the answer waiting on the
   * client, the client counts as gone: the origin request is aborted, the flow ends `client-reset`.
   * The grace counts from the connection (onConnect) when the FIN came while it was dialled: a dial
   * has its own bound (limits.connectTimeoutMs, as long as the grace by default), and its failure
   * is the answer the half-closed client waits for and what the record says (`connect-timeout`, a
   * failed attempt), as on CONNECT. Before, the grace armed at a FIN sent with the request ran out
   * first: no 504, the record `client-reset`, no failed attempt counted.
   */
  clientHalfClosed(): void {
    if (this.finTimer !== null || this.isClientGone || this.flow.state !== 'active') return;
    if (!this.isConnected) {
      this.isFinWhileDialling = true;
      return;
    }
    this.finMark = this.originProgress();
    this.finTimer = setTimeout(onFinGrace, finGraceMs(this.ctx.policy.current().config.limits), this);
    this.finTimer.unref();
  }

  /** finGraceMs after the FIN (or after the origin's last progress): see clientHalfClosed. */
  finGraceOver(): void {
    this.finTimer = null;
    if (this.isClientGone || this.flow.state !== 'active') return;
    const progress = this.originProgress();
    // The origin sent more meanwhile, or the client has not taken what was sent: not the origin's silence.
    if (progress !== this.finMark || this.isWaitOnClient()) {
      this.finMark = progress;
      this.finTimer = setTimeout(onFinGrace, finGraceMs(this.ctx.policy.current().config.limits), this);
      this.finTimer.unref();
      return;
    }
    this.connection.isAwaitingOrigin = false;
    this.abortOrigin('client gone after its FIN');
    this.finish('client-reset');
    this.cutClient(false);
  }

  private originProgress(): number {
    return this.flow.bytesIn + (this.status > 0 ? 1 : 0) + this.interimRelayed;
  }

  /**
   * undici has written the whole request to the origin: the final response's head must come within
   * limits.idleTimeoutMs (of the first 1xx, if one came: onInterim), on a timer of ours. undici's own
   * headersTimeout (set to the same limit) runs on its fast timers, which tick every 499 ms and fire a
   * timer at the first tick past its delay: through a real serve, an origin that took the request and
   * never answered got the client its 504 at ~1,500 ms with idleTimeoutMs 1,000 (~3,500 at 3,000),
   * while CONNECT's idle timeout, a socket timer, cut at ~1,000. One timer per request, armed here
   * and not touched when the head comes (headWaitOver finds it came): cleared when the flow ends.
   * undici's timer stays, a backstop that fires after ours.
   */
  onRequestSent(): void {
    if (this.status !== 0 || this.headTimer !== null || this.isClientGone || this.flow.state !== 'active') return;
    this.headTimer = setTimeout(onHeadWait, this.ctx.policy.current().config.limits.idleTimeoutMs, this);
    this.headTimer.unref();
  }

  /** limits.idleTimeoutMs after the request was sent (or after the first 1xx): see onRequestSent. */
  headWaitOver(): void {
    this.headTimer = null;
    if (this.status !== 0 || this.isClientGone || this.flow.state !== 'active') return;
    const limitMs = this.ctx.policy.current().config.limits.idleTimeoutMs;
    // A 1xx came meanwhile: the final response is due limitMs after the first one.
    if (this.interimSinceMs !== 0) {
      const leftMs = this.interimSinceMs + limitMs - performance.now();
      if (leftMs >= 1) {
        this.headTimer = setTimeout(onHeadWait, leftMs, this);
        this.headTimer.unref();
        return;
      }
    }
    this.abortUpstream?.(new GatewayError('EGW_DIAL_TIMEOUT', `no response from the origin within ${limitMs} ms`));
  }

  /** Why the flow ends when its client connection has gone: a malformed body, cut for silence, or the client left. */
  protected clientGoneReason(): string {
    return clientGoneReason(this.connection);
  }

  /**
   * The client is gone (or the flow killed): the origin request is aborted. Before undici's
   * onConnect there is nothing to abort yet: the origin connection being made for this flow
   * (exchangeDialling named it; every attempt of a staggered dial) is destroyed, as FlowTable.kill
   * does, so nothing reaches the origin after the client left.
   */
  protected abortOrigin(why: string): void {
    this.isClientGone = true;
    if (this.abortUpstream !== null) this.abortUpstream(new GatewayError('EGW_UPSTREAM_RESET', why));
    else if (!this.isConnected) {
      const dialling = this.flow.dialling;
      if (dialling !== null) dialling.destroy(dialling.listenerCount('error') > 0 ? KILLED_WHILE_DIALLING : undefined);
    }
  }

  /**
   * A 1xx response came: relayed to the client (writeInterim) when it is one to relay
   * (isRelayableInterim), and only the first MAX_INTERIM_RELAYED of the request. undici re-arms its
   * headers timeout on each one, so an origin that sends them at a trickle, each within
   * limits.idleTimeoutMs of the last, would hold the request without an answer for as long as it
   * likes. The final response must come within limits.idleTimeoutMs of the first 1xx, else the
   * request fails as an origin timeout (504), at the next 1xx or on our timer (headWaitOver),
   * whichever comes first. Only this rare path reads the clock.
   *
   * A status below 100 is none (RFC 9110 §15: three digits, 100 to 599), though llhttp reads any
   * three digits and undici hands it here as a 1xx: the origin broke the protocol, 502
   * upstream-bad-response, undici drops that connection. Before, undici's own assertion at the end
   * of that head failed the request instead, taken for an unreachable destination (502
   * `unreachable`, the record too).
   */
  protected onInterim(statusCode: number, rawHeaders: Buffer[], statusText: string): void {
    if (statusCode < 100) {
      this.abortUpstream?.(new GatewayError('EGW_UPSTREAM_BAD_RESPONSE', `status ${String(statusCode).padStart(3, '0')} is no HTTP status`));
      return;
    }
    // An interim answer is never the connection's last: the final one must follow on it. llhttp
    // takes an HTTP/1.0 1xx without keep-alive (or one saying `Connection: close`) for the last and
    // failed the final answer behind it, 502 upstream-bad-response, where the Upgrade path relays it.
    if (!this.isReadingPastInterim) {
      this.isReadingPastInterim = true;
      setReadPastInterim(this.originSocket, true);
    }
    const now = performance.now();
    if (this.interimSinceMs === 0) {
      this.interimSinceMs = now;
    } else {
      const limitMs = this.ctx.policy.current().config.limits.idleTimeoutMs;
      if (now - this.interimSinceMs >= limitMs) {
        this.abortUpstream?.(new GatewayError('EGW_DIAL_TIMEOUT', `no final response within ${limitMs} ms of the first 1xx`));
        return;
      }
    }
    if (this.interimRelayed >= MAX_INTERIM_RELAYED || !isRelayableInterim(statusCode)) return;
    this.interimRelayed++;
    this.writeInterim(interimResponseHead(statusCode, statusText, rawHeaders, this.responseVia()));
  }

  /**
   * A final response's head the relay cannot pass on (a status past 599, which is none: RFC 9110
   * §15, as one below 100 is, onInterim; unrelayableFraming: a transfer coding it does not
   * implement, a Content-Length past 2^53 − 1, Transfer-Encoding in an HTTP/1.0 response): the
   * origin request is failed as a bad response, so the client gets 502 upstream-bad-response and
   * undici drops that origin connection. True when it was refused: the caller relays nothing of it.
   */
  protected refuseUnrelayable(statusCode: number, rawHeaders: Buffer[]): boolean {
    // The final head (both paths call this first with it): whether the connection ends after it is its own word.
    if (this.isReadingPastInterim) {
      this.isReadingPastInterim = false;
      setReadPastInterim(this.originSocket, false);
    }
    if (statusCode > 599) {
      this.abortUpstream?.(new GatewayError('EGW_UPSTREAM_BAD_RESPONSE', `status ${statusCode} is no HTTP status`));
      return true;
    }
    const fault = unrelayableFraming(rawHeaders, this);
    if (fault === null) return false;
    this.abortUpstream?.(new GatewayError('EGW_UPSTREAM_BAD_RESPONSE', `response framing not relayable: ${fault}`));
    return true;
  }

  /** The response being read said HTTP/1.0 (its origin connection's parser: http-origin-reads.ts). */
  isReceivedInHttp10(): boolean {
    return isReceivedInHttp10(this.originSocket);
  }

  /**
   * Our Via entry for the response being read (RFC 9110 §7.6.3: the version it was received in):
   * `1.0 egressgate-…` for an HTTP/1.0 status line, else `1.1 …`, as when it cannot be told. Two
   * llhttp wasm calls per response head, ~15–30 ns on Node 20 (docs/benchmarks.md budgets ~55 µs of
   * CPU per absolute-URI request).
   */
  protected responseVia(): string {
    return this.isReceivedInHttp10() ? this.ctx.via.value10 : this.ctx.via.value;
  }

  /** A kill: the origin connection the request is on is reset (http-origin-socket.ts), if it is known. */
  private resetOrigin(): void {
    const socket = this.originSocket;
    this.originSocket = null;
    if (socket !== null) resetOriginSocket(socket);
  }

  /**
   * undici is done with the request (completed or failed): its origin connection goes back to the
   * pool and may carry another request next, while the flow may live on (its answer still queued for
   * the client). Neither a kill's reset nor FlowTable.kill's destroy of the flow's `dialling` socket
   * (the connection opened for it) may reach it from now on: before, a kill of a flow whose answer
   * waited behind a pipelined one closed the pooled connection another client's request was on.
   */
  private letGoOfOrigin(): void {
    letGoOfOrigin(this);
    if (this.isConnected) this.flow.dialling = null;
  }

  onConnect(abort: (err?: Error) => void): void {
    this.abortUpstream = abort;
    this.originSocket = null;
    if (!this.isConnected) {
      this.isConnected = true;
      this.ctx.flows.markConnected(this.flow);
      if (this.isFinWhileDialling) this.clientHalfClosed();
    }
    if (this.isClientGone) abort(new GatewayError('EGW_UPSTREAM_RESET', 'client went away'));
    // Not aborted: undici writes the request now, and publishes the socket it writes it on first.
    else noteConnecting(this);
  }

  onError(err: Error): void {
    const { ctx, flow } = this;
    // undici is done with the request: its connection is no longer this exchange's to reset.
    this.letGoOfOrigin();
    if (this.isSentElsewhere(err)) return;
    this.connection.isAwaitingOrigin = false;
    if (this.isClientGone || flow.state !== 'active') {
      this.finish(this.clientGoneReason());
      return;
    }
    if (isCompleteWithoutBody(this.status, err)) {
      this.onComplete();
      return;
    }
    const code = undiciErrorCode(err);
    const mapping = mapError(code);
    if (this.isResponseStarted()) {
      // Mid-response: the client must see a truncated body, not a clean end.
      this.finish(mapping.reason);
      this.cutClient(false);
      return;
    }
    if (isOwnShortage(code)) {
      // The gateway's own descriptors or local ports ran out: logged once per ten seconds, not a failed connect.
      ctx.descriptors?.dialFailed(String((err as NodeJS.ErrnoException).code));
    } else {
      if (!this.isConnected) ctx.detection?.onConnectFailed(flow);
      ctx.log.warn({ flowId: flow.id, code, err: errorText(err) }, 'origin request failed');
    }
    this.finish(mapping.reason);
    this.answerFailure(mapping, { flowId: flow.id, isBlock: false });
  }

  /** Another of the name's addresses answered the staggered dial and the request went there (StaggeredOrigin). */
  protected isSentElsewhere(err: Error): boolean {
    return this.alternates !== null && !this.isConnected && !this.isClientGone && this.flow.state === 'active' && this.alternates.redispatch(err);
  }

  /** The origin's response is complete; `trailers`, its trailer section as undici passes it (raw). */
  abstract onComplete(trailers?: readonly (Buffer | string)[] | null): void;

  /**
   * undici ended the response because its origin connection was reset (a close-delimited body cut
   * short: http-origin-reset.ts): failed as an origin reset instead (502 before any of it went to
   * the client, else the client cut), the flow `upstream-reset`. True when so. Called first thing
   * in onComplete: it reads the mark on its origin connection (originSocket) whatever the exchange's
   * state, and lets go of that connection, closed first when the response's `trailers` said
   * `Connection: close` (closeIfTrailersSayClose: llhttp refuses what comes next on it).
   */
  protected isCutByReset(trailers: readonly (Buffer | string)[] | null | undefined): boolean {
    const socket = this.originSocket;
    // undici is done with the request: its connection may carry another request next.
    this.letGoOfOrigin();
    if (!isCutByOriginReset(socket)) {
      closeIfTrailersSayClose(socket, trailers);
      return false;
    }
    this.onError(new GatewayError('EGW_UPSTREAM_RESET', 'the origin reset its connection before the end of the body'));
    return true;
  }
  /** Some of the response has gone to the client. */
  protected abstract isResponseStarted(): boolean;
  /**
   * The answer waits on the client, not on the origin: the origin's response is complete, or some of
   * it is still buffered for the client (which does not read it yet, or has a response ahead of it).
   */
  protected abstract isWaitOnClient(): boolean;
  /** Cut the client connection: `reset` for a kill, else a plain close after what was written. */
  protected abstract cutClient(reset: boolean): void;
  /** Answer a failure before any response byte. */
  protected abstract answerFailure(mapping: RejectMapping, details: RefusalDetails): void;
  /**
   * Send the client an interim response head (interimResponseHead) now, before the final one, or
   * drop it where it must not or cannot go (an HTTP/1.0 client, a client already gone).
   */
  protected abstract writeInterim(head: string): void;
}

function onFinGrace(exchange: OriginExchange): void {
  exchange.finGraceOver();
}

function onHeadWait(exchange: OriginExchange): void {
  exchange.headWaitOver();
}

/**
 * undici 7 fails a 304 or 204 whose head carries a non-zero Content-Length, as a body shorter than
 * announced (undici 8, which needs node 22, fixed it). Those statuses never have a body (RFC 9112
 * §6.3), and a 304 may announce the length of the representation it stands for (RFC 9110 §8.6):
 * with its head received, such a response is complete. undici does not reuse that connection.
 */
function isCompleteWithoutBody(status: number, err: Error): boolean {
  return (status === 304 || status === 204) && (err as { code?: unknown }).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH';
}
