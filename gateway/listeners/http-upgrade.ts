/**
 * `Upgrade` requests (websocket and friends) through the proxy: admission like any absolute-URI
 * request, then a raw socket to the checked address (gateway/upstream/dial.ts), our rewritten
 * request head, and the origin's answer:
 * - 1xx interim answers before it (103 Early Hints …): relayed as they come (readFinalAnswer).
 * - `101 Switching Protocols`, sent as HTTP/1.1 and naming in its Upgrade a protocol the request
 *   offered (else 502): its head (hop-by-hop fields removed except Upgrade, the origin's Connection
 *   replaced by our `connection: Upgrade`, Via added) goes to the client and both sockets go to the
 *   tunnel.
 * - anything else: its head (with `Connection: close`) and its body are relayed byte for byte to
 *   the client, and the connection closes when the origin is done: no second request rides on it.
 *
 * An HTTP/1.0 request carrying Upgrade is no upgrade (RFC 9110 §7.8): it goes to the origin without
 * Upgrade, with `Connection: close`, and its answer is relayed as a declined upgrade's (a 101 to it
 * is a bad response: 502).
 *
 * An Upgrade request with a body is refused (400): the body would have to be relayed before the
 * origin's answer, which this path does not do.
 *
 * A TRACE or OPTIONS carrying Upgrade honours `Max-Forwards` as on the absolute-URI paths
 * (http-max-forwards.ts): at 0 answered here, nothing dialled; above it passed on one less; twice, 400.
 *
 * Metering: everything after the handshake both ways — after a 101, every byte the tunnel carries
 * (including bytes that arrived with the 101 head and bytes the client sent after its request head);
 * without a 101, the raw response body (its chunk framing included). Heads are never counted.
 *
 * A client that closes or resets while its name is looked up or its destination dialled ends its flow
 * `client-reset` at once, the dial abandoned (holdClient with the flow table), as a CONNECT client does.
 *
 * A client's FIN before the answer is complete (it sends nothing more, RFC 9112 §9.6, and may or may
 * not still read) leaves the origin `finGraceMs` of silence to answer, then the client counts as gone:
 * `client-reset`, both sockets closed. Node:http stops watching the socket at the upgrade and the
 * listener allows half-open sockets, so a FIN alone never brings 'close' (holdClient).
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { admitAlternate, failFlow } from '../admission.ts';
import { GatewayError } from '../errors.ts';
import { bareLineFeedAt } from '../protocol/http-line-ends.ts';
import type { Flow } from '../flow/flow.ts';
import { tunnel } from '../flow/tunnel.ts';
import { mapError } from '../reject.ts';
import { dialFirstReachable } from '../upstream/dial.ts';
import { type ViaName, viaOnward } from '../via.ts';
import { earlierResponses, holdClient, isBehindLastAnswer, outlastsEarlierResponses } from './http-connect.ts';
import { ChunkedEnd } from './http-chunked-end.ts';
import { finGraceMs, resetOrDestroy } from './http-connection-state.ts';
import { httpDate } from './http-date.ts';
import { interimResponseHead, isRelayableInterim, MAX_INTERIM_RELAYED } from './http-interim.ts';
import { dropContentLength, forwardRequestHeaders, forwardResponseHeaders, INVALID_FIELD_CHAR, relayedStatusText, serialiseRequestHead, splitHeaderLine, viaFor } from './http-headers.ts';
import { finalRecipientText, maxForwardsFault, maxForwardsOf } from './http-max-forwards.ts';
import type { HttpListenerState } from './http-proxy.ts';
import { lingerOnceWritten, refusalDetails, writeRawRefusal } from './http-refusal.ts';
import { expectationFault, hostHeaderFor, httpVersionFault, parseAbsoluteTarget, shapeRefusalCode, smugglingShape } from './http-target.ts';
import { switchesToOffered } from './http-upgrade-tokens.ts';

export interface ResponseHead {
  status: number;
  statusText: string;
  /** Flat raw header list. */
  headers: string[];
  /** The minor version of its status line (HTTP/1.0 or HTTP/1.1): what our Via says it was received as. */
  minor: number;
}

/** A status is three digits from 100 to 599 (RFC 9110 §15): any other head is a bad response, 502. */
const STATUS_LINE = /^HTTP\/1\.([01]) ([1-5][0-9]{2})(?: ([^\r\n]*))?$/;

/** Parse a response head (without the final CRLFCRLF). Refuses obs-fold and malformed lines. */
export function parseResponseHead(text: string): ResponseHead | null {
  const lines = text.split('\r\n');
  const m = STATUS_LINE.exec(lines[0] ?? '');
  if (!m) return null;
  const headers: string[] = [];
  for (let i = 1; i < lines.length; i++) {
    const field = splitHeaderLine(lines[i] as string);
    // A control byte in a value (CR, NUL, 0x01 …): llhttp refuses it on the absolute-URI paths too.
    if (field === null || INVALID_FIELD_CHAR.test(field.value)) return null;
    headers.push(field.name, field.value);
  }
  return { status: Number(m[2]), statusText: m[3] ?? '', headers, minor: Number(m[1]) };
}

/**
 * Read a response head from a socket: resolves with the head text and any bytes after it. Rejects
 * at once when `clientGone` aborts (the client left: nobody waits for the answer any more).
 */
function readResponseHead(socket: Socket, maxBytes: number, timeoutMs: number, clientGone: AbortSignal): Promise<{ head: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    /** Bytes already checked for a bare LF: each is looked at once however the head is cut. */
    let checked = 0;
    const timer = setTimeout(() => done(new GatewayError('EGW_DIAL_TIMEOUT', 'origin did not answer the upgrade')), timeoutMs);
    const done = (err: Error | null, value?: { head: string; rest: Buffer }): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      socket.removeListener('error', onEnd);
      socket.removeListener('close', onEnd);
      clientGone.removeEventListener('abort', onClientGone);
      socket.pause();
      if (err) reject(err);
      else resolve(value as { head: string; rest: Buffer });
    };
    const onClientGone = (): void => done(new Error('client went away'));
    // 'close' too: a kill destroys the socket, which then emits neither 'end' nor 'error'.
    const onEnd = (): void => done(new GatewayError('EGW_UPSTREAM_RESET', 'origin closed before answering the upgrade'));
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      size += chunk.length;
      const all = chunks.length === 1 ? chunk : Buffer.concat(chunks, size);
      const end = all.indexOf('\r\n\r\n');
      // A bare LF in the head (never in what follows it: the tunnel's or the body's bytes) is refused
      // at once, as llhttp refuses it on the absolute-URI paths; its CRLFCRLF would never come.
      if (bareLineFeedAt(all, checked, end < 0 ? size : end + 4) !== -1) {
        done(new GatewayError('EGW_UPSTREAM_BAD_RESPONSE', 'origin answered the upgrade with a bare LF line end'));
        return;
      }
      checked = size;
      // Past maxBytes the head is refused whether or not its end came in the same read (before, only
      // a head still unfinished was: one whole in one read passed at any size).
      if ((end < 0 ? size : end + 4) > maxBytes) {
        done(new GatewayError('EGW_UPSTREAM_BAD_RESPONSE', 'origin response head too large'));
        return;
      }
      if (end < 0) return;
      done(null, { head: all.subarray(0, end).toString('latin1'), rest: all.subarray(end + 4) });
    };
    if (clientGone.aborted) {
      done(new Error('client went away'));
      return;
    }
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onEnd);
    socket.on('close', onEnd);
    clientGone.addEventListener('abort', onClientGone);
    // A socket from a parent proxy's handshake comes paused (no byte lost before a reader is there),
    // and a 'data' listener does not resume a paused stream.
    socket.resume();
  });
}

/**
 * Read the origin's answer to the Upgrade past its interim responses (RFC 9110 §15.2: a client must
 * take any number of 1xx before the final answer, and a 101 is the final answer to an Upgrade). Each
 * 1xx the absolute-URI paths relay (isRelayableInterim: 102, 103 …) goes to the client as it comes,
 * the first MAX_INTERIM_RELAYED of them, rewritten as there (interimResponseHead), our Via naming the
 * version each was received in (RFC 9110 §7.6.3: an HTTP/1.0 one says 1.0); `via` null: an HTTP/1.0
 * client, which gets none (RFC 9110 §15.2). The final answer must come within limits.idleTimeoutMs
 * of the first 1xx (else 504, as on the absolute-URI paths), so a trickle of them cannot hold the
 * client. A 100 nobody asked for (the gateway sends no Expect) is a bad answer, as undici takes it
 * there: `parsed` null, as for a head that does not parse.
 */
async function readFinalAnswer(
  upstream: Socket,
  client: Duplex,
  limits: { maxHeaderBytes: number; idleTimeoutMs: number },
  clientGone: AbortSignal,
  via: ViaName | null,
): Promise<{ parsed: ResponseHead | null; rest: Buffer }> {
  let deadline = 0;
  let relayed = 0;
  for (;;) {
    const waitMs = deadline === 0 ? limits.idleTimeoutMs : deadline - performance.now();
    if (waitMs < 1) throw new GatewayError('EGW_DIAL_TIMEOUT', `no final answer to the upgrade within ${limits.idleTimeoutMs} ms of the first 1xx`);
    const answer = await readResponseHead(upstream, limits.maxHeaderBytes, waitMs, clientGone);
    const parsed = parseResponseHead(answer.head);
    if (parsed === null || parsed.status === 101 || parsed.status >= 200) return { parsed, rest: answer.rest };
    if (parsed.status === 100) return { parsed: null, rest: answer.rest };
    if (deadline === 0) deadline = performance.now() + limits.idleTimeoutMs;
    if (via !== null && relayed < MAX_INTERIM_RELAYED && isRelayableInterim(parsed.status)) {
      relayed++;
      client.write(interimResponseHead(parsed.status, parsed.statusText, parsed.headers, viaFor(via, 1, parsed.minor)), 'latin1');
    }
    // What came after the 1xx is the next head's: read again from there.
    if (answer.rest.length > 0) upstream.unshift(answer.rest);
  }
}

/**
 * Call `onGone` `graceMs` after the client's FIN (counted from now if the FIN already came).
 * Returns the function that stops watching: the answer came, or the exchange ended otherwise.
 * A FIN behind bytes the client sent after its head stays unseen while the socket is paused.
 */
function afterClientFin(socket: Duplex, graceMs: number, onGone: () => void): () => void {
  let timer: NodeJS.Timeout | null = null;
  const onEnd = (): void => {
    timer = setTimeout(onGone, graceMs);
  };
  if (socket.readableEnded) onEnd();
  else socket.once('end', onEnd);
  return () => {
    socket.removeListener('end', onEnd);
    if (timer) clearTimeout(timer);
  };
}

/**
 * How many body bytes follow a declined Upgrade's answer (RFC 9112 §6.3): none after 204, 304 or an
 * answer to HEAD; its Content-Length's worth; `chunked` to its last chunk and trailers when chunked is
 * the final transfer coding (ChunkedEnd); null (until the origin closes) for other codings or unframed
 * bodies. An origin that keeps its connection alive after a framed answer never closes it. False when
 * the framing is ambiguous, as the absolute-URI paths' parser (llhttp) judges it: Content-Length with
 * Transfer-Encoding, more than one Content-Length field, or one that is not 1*DIGIT (at most 15
 * digits). The answer is relayed with its own framing, so such a head would reach the client as sent
 * and each reader would find the body's end where its own rule says (RFC 9112 §6.3, §11.2).
 */
export function declinedBodyLength(head: ResponseHead, method: string | undefined): number | 'chunked' | null | false {
  let length: number | null = null;
  let hasCoding = false;
  /** The last transfer coding named, lower-case. */
  let lastCoding = '';
  for (let i = 0; i + 1 < head.headers.length; i += 2) {
    const name = (head.headers[i] as string).toLowerCase();
    if (name === 'transfer-encoding') {
      hasCoding = true;
      for (const token of (head.headers[i + 1] as string).split(',')) {
        const coding = token.trim().toLowerCase();
        if (coding !== '') lastCoding = coding;
      }
    }
    if (name !== 'content-length') continue;
    const value = head.headers[i + 1] as string;
    if (length !== null || !/^[0-9]{1,15}$/.test(value)) return false;
    length = Number(value);
  }
  if (hasCoding && length !== null) return false;
  if (head.status === 204 || head.status === 304 || method === 'HEAD') return 0;
  if (hasCoding) return lastCoding === 'chunked' ? 'chunked' : null;
  return length;
}

/** Whether a flat header list holds a Date field. */
function hasDate(headers: readonly string[]): boolean {
  for (let i = 0; i < headers.length; i += 2) if ((headers[i] as string).toLowerCase() === 'date') return true;
  return false;
}

function serialiseResponseHead(head: ResponseHead, headers: readonly string[]): string {
  let out = `HTTP/1.1 ${head.status} ${relayedStatusText(head.status, head.statusText)}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) out += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${out}\r\n`;
}

/**
 * An HTTP/1.0 request: node:http announces one carrying `Connection: upgrade` and `Upgrade` as an
 * upgrade, but a server must ignore Upgrade in an HTTP/1.0 request (RFC 9110 §7.8). This path then
 * forwards it as a plain request, its answer relayed as a declined upgrade's is, and the connection
 * closes after it (as a 1.0 connection without keep-alive does).
 */
function isHttp10(req: IncomingMessage): boolean {
  return req.httpVersionMajor === 1 && req.httpVersionMinor === 0;
}

/** Handle one request carrying `Upgrade` on a detached client socket. */
export async function handleUpgrade(state: HttpListenerState, req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
  // The client leaving ends the wait for the origin's answer (readResponseHead): at once when it
  // closes or resets, finGraceMs after its FIN. The relay and the tunnel watch the FIN themselves.
  const clientGone = new AbortController();
  const stopFinWatch = afterClientFin(socket, finGraceMs(state.ctx.policy.current().config.limits), () => clientGone.abort());
  try {
    await answerUpgrade(state, req, socket, head, clientGone);
  } finally {
    stopFinWatch();
  }
}

async function answerUpgrade(state: HttpListenerState, req: IncomingMessage, socket: Duplex, head: Buffer, clientGone: AbortController): Promise<void> {
  const { ctx } = state;
  // The client closing or resetting while admission looks its name up or the dial runs ends the flow
  // then (the hold's flow, named by admission: FlowTable.clientLeft), as CONNECT's does.
  const hold = holdClient(socket, () => clientGone.abort(), ctx.flows);
  const isGone = (): boolean => clientGone.signal.aborted || hold.isGone();
  const owed = earlierResponses(socket);
  if (owed && !(await outlastsEarlierResponses(owed, socket, { isGone, release: hold.release }))) return;
  if (isBehindLastAnswer(socket, hold)) return;
  const target = parseAbsoluteTarget(req.url ?? '');
  // A request body would have to reach the origin before its answer; websocket handshakes have
  // none, and relaying one here (h2c upgrade of a POST) is not supported: refuse rather than hang.
  const cl = req.headers['content-length'];
  // The first fault in the absolute-URI path's order (http-proxy.ts onRequest): the version, the
  // target, then the header fields; the answer and the log name that one.
  const smuggling =
    httpVersionFault(req.httpVersionMajor) ??
    (target.ok ? (smugglingShape(req) ?? state.repeatedCredential(req) ?? maxForwardsFault(req.method, req.headers['max-forwards'], req.rawHeaders) ?? expectationFault(req)) : null);
  const shape = smuggling ?? (target.ok && (req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0')) ? 'upgrade-with-body' : null);
  if (!target.ok || shape) {
    hold.release();
    const code = smuggling ? shapeRefusalCode(smuggling) : 'EGW_BAD_REQUEST';
    ctx.log.warn({ client: req.socket.remoteAddress, code, why: shape ?? (target.ok ? null : target.reason) }, 'bad upgrade request refused');
    writeRawRefusal(socket, mapError(code), { flowId: null, isBlock: false });
    return;
  }
  const result = await state.admitRequest(req, 'http', target.host, target.port, hold);
  if (!result.ok) {
    hold.release();
    // Left during admission (its lookup): the flow ended client-reset then, nobody to answer.
    if (hold.isGone()) {
      socket.destroy();
      return;
    }
    writeRawRefusal(socket, result.reject, refusalDetails(result));
    return;
  }
  const { flow, snapshot } = result;
  const limits = snapshot.config.limits;
  if (hold.isGone()) {
    // Left before the flow was named on the hold (its identity resolved meanwhile): nothing is dialled.
    hold.release();
    socket.destroy();
    ctx.flows.close(flow, 'client-reset');
    return;
  }
  // TRACE or OPTIONS with Max-Forwards (RFC 9110 §7.6.2), as on the absolute-URI paths: at 0 the
  // gateway is the final recipient (its Upgrade ignored, RFC 9110 §7.8 lets a server do that) and
  // nothing is dialled; above it, one hop less.
  const forwards = maxForwardsOf(req.method, req.headers['max-forwards']);
  if (forwards === 0) {
    hold.release();
    answerAsFinalRecipient(state, flow, req, socket, state.strippedHeaders(snapshot), limits.idleTimeoutMs);
    return;
  }
  let upstream: Socket;
  try {
    upstream = await dialFirstReachable({ ip: result.ip, port: target.port, upstream: result.upstream, timeoutMs: limits.connectTimeoutMs, flow, via: result.upstream === null ? ctx.via.value : viaOnward(req.headers.via, viaFor(ctx.via, req.httpVersionMajor, req.httpVersionMinor)), unanswered: ctx.unanswered, names: ctx }, result.alternates, (ip, isOutcome) => admitAlternate(ctx, result, ip, isOutcome));
  } catch (err) {
    hold.release();
    if (hold.isGone()) {
      // The client left while it dialled: the flow ended client-reset then (clientLeft), the dial
      // abandoned; no answer, no failed attempt.
      socket.destroy();
      ctx.flows.close(flow, 'client-reset');
      return;
    }
    const isKilled = flow.state === 'closed';
    const mapping = failFlow(ctx, flow, err);
    if (!isKilled) ctx.log.warn({ flowId: flow.id, reason: mapping.reason, err: (err as Error).message }, 'Upgrade dial failed');
    writeRawRefusal(socket, mapping, { flowId: flow.id, isBlock: flow.verdict === 'block' });
    return;
  }
  // Dialled: from here the wait for the answer watches the client itself (clientGone), as before.
  hold.flow = null;
  if (isGone()) {
    // The client left while we dialled (or as the flow was killed: its record is written).
    ctx.flows.markConnected(flow);
    hold.release();
    upstream.destroy();
    socket.destroy();
    ctx.flows.close(flow, 'client-reset');
    return;
  }
  if (flow.state !== 'active') {
    // Killed as the dial completed: the client hears what the kill means, nothing is sent.
    hold.release();
    upstream.destroy();
    writeRawRefusal(socket, failFlow(ctx, flow, null), { flowId: flow.id, isBlock: flow.verdict === 'block' });
    return;
  }
  ctx.flows.markConnected(flow);
  // An HTTP/1.0 request's Upgrade is ignored (RFC 9110 §7.8): it goes out as a plain request, and
  // `Connection: close` makes its answer end with the origin's connection (a 1.0 exchange ends there).
  const isPlain = isHttp10(req);
  /** The protocols offered to the origin: a 101 must switch to one of them (switchesToOffered). */
  const offered = req.headers.upgrade ?? 'websocket';
  const headers = forwardRequestHeaders(req.rawHeaders, {
    host: hostHeaderFor(target.host, target.port),
    stripped: state.strippedHeaders(snapshot),
    upgrade: isPlain ? null : offered,
    maxForwards: forwards === null ? null : forwards - 1,
    via: viaFor(ctx.via, req.httpVersionMajor, req.httpVersionMinor),
  });
  if (isPlain) headers.push('connection', 'close');
  upstream.write(serialiseRequestHead(req.method ?? 'GET', target.path, headers), 'latin1');
  // A kill while we wait for the origin's answer cuts both sides.
  flow.abort = () => {
    upstream.resetAndDestroy();
    resetOrDestroy(socket as Socket);
  };
  let answer: { parsed: ResponseHead | null; rest: Buffer };
  try {
    answer = await readFinalAnswer(upstream, socket, limits, clientGone.signal, isPlain ? null : ctx.via);
  } catch (err) {
    hold.release();
    upstream.destroy();
    if (isGone() || flow.state !== 'active') {
      socket.destroy();
      ctx.flows.close(flow, 'client-reset');
      return;
    }
    const mapping = mapError(err instanceof GatewayError ? err.code : 'EGW_UPSTREAM_RESET');
    ctx.flows.close(flow, mapping.reason);
    writeRawRefusal(socket, mapping, { flowId: flow.id, isBlock: false });
    return;
  }
  hold.release();
  const { parsed } = answer;
  if (hold.isGone() || flow.state !== 'active' || !parsed) {
    upstream.destroy();
    if (!parsed && !hold.isGone()) {
      const mapping = mapError('EGW_UPSTREAM_BAD_RESPONSE');
      ctx.flows.close(flow, mapping.reason);
      writeRawRefusal(socket, mapping, { flowId: flow.id, isBlock: false });
    } else {
      socket.destroy();
      ctx.flows.close(flow, 'client-reset');
    }
    return;
  }
  // A 101 to a request that asked for no upgrade (HTTP/1.0) is not a valid answer, nor one sent as
  // HTTP/1.0 (a version with neither Upgrade nor 1xx: RFC 9110 §7.8, RFC 1945 §9.1), nor one that
  // does not name the protocol it switches to or names one not offered: nothing is tunnelled.
  if (parsed.status === 101 && (isPlain || parsed.minor === 0 || !switchesToOffered(parsed.headers, offered))) {
    upstream.destroy();
    const mapping = mapError('EGW_UPSTREAM_BAD_RESPONSE');
    ctx.flows.close(flow, mapping.reason);
    writeRawRefusal(socket, mapping, { flowId: flow.id, isBlock: false });
    return;
  }
  if (parsed.status === 101) {
    socket.write(serialiseResponseHead(parsed, forwardResponseHeaders(parsed.headers, { upgrade: true, via: viaFor(ctx.via, 1, parsed.minor) })), 'latin1');
    if (answer.rest.length > 0) upstream.unshift(answer.rest);
    tunnel(ctx.flows, flow, socket as Socket, upstream, { idleTimeoutMs: limits.idleTimeoutMs, head });
    return;
  }
  const bodyLength = declinedBodyLength(parsed, req.method);
  if (bodyLength === false) {
    // Ambiguous framing: refused as the absolute-URI paths refuse it, nothing of it relayed.
    upstream.destroy();
    const mapping = mapError('EGW_UPSTREAM_BAD_RESPONSE');
    ctx.flows.close(flow, mapping.reason);
    writeRawRefusal(socket, mapping, { flowId: flow.id, isBlock: false });
    return;
  }
  // RFC 9112 §6.1: no transfer coding in an answer to an HTTP/1.0 request, which cannot read one.
  const coding = isPlain ? http10Coding(parsed) : null;
  if (coding === false) {
    // A coding other than chunked alone: one the client cannot undo, refused as the absolute-URI paths refuse it.
    upstream.destroy();
    const mapping = mapError('EGW_UPSTREAM_BAD_RESPONSE');
    ctx.flows.close(flow, mapping.reason);
    writeRawRefusal(socket, mapping, { flowId: flow.id, isBlock: false });
    return;
  }
  // A chunked answer to HTTP/1.0 goes on without Transfer-Encoding (and Trailer), its end the close.
  const headersOut = forwardResponseHeaders(parsed.headers, { keepFraming: coding !== 'chunked', via: viaFor(ctx.via, 1, parsed.minor) });
  // RFC 9110 §8.6: a 204 carries no Content-Length (a 304's stands for the representation: kept),
  // as on the absolute-URI paths; its body is none either way (declinedBodyLength).
  if (parsed.status === 204) dropContentLength(headersOut);
  // RFC 9110 §6.6.1: a Date when the origin sent none, as both absolute-URI paths add it.
  if (!hasDate(headersOut)) headersOut.push('date', httpDate());
  headersOut.push('connection', 'close');
  socket.write(serialiseResponseHead(parsed, headersOut), 'latin1');
  relayRefusedUpgrade(state, flow, socket, upstream, answer.rest, bodyLength, coding === 'chunked', limits);
}

/**
 * Answer an admitted TRACE or OPTIONS with `Max-Forwards: 0` as its final recipient (finalRecipientText),
 * as node:http's path does (http-proxy.ts): the flow `closed` with no bytes, nothing dialled, the
 * connection ended lingering once the answer is written out ('finish'), as endClient and the fast
 * path do. Before, the linger started when the answer was handed to end(): a TRACE echo larger than
 * the socket buffers (limits.maxHeaderBytes raised to megabytes) was cut 2 s later, mid-answer,
 * for a client that had not read it all by then.
 */
function answerAsFinalRecipient(state: HttpListenerState, flow: Flow, req: IncomingMessage, socket: Duplex, stripped: ReadonlySet<string>, stallMs: number): void {
  if (flow.state === 'active') {
    state.ctx.flows.markAnsweredHere(flow);
    state.ctx.flows.close(flow, 'closed');
  }
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const requestLine = `${req.method ?? ''} ${req.url ?? ''} HTTP/${req.httpVersion}`;
  socket.end(finalRecipientText(req.method ?? '', requestLine, req.rawHeaders, stripped), 'latin1');
  lingerOnceWritten(socket, stallMs);
}

/**
 * The transfer coding of an answer to an HTTP/1.0 request: null when it names none, 'chunked' when
 * chunked is its only one (the relay takes the framing off), false for any other (RFC 9112 §6.1).
 */
function http10Coding(head: ResponseHead): 'chunked' | false | null {
  let coding: 'chunked' | false | null = null;
  for (let i = 0; i + 1 < head.headers.length; i += 2) {
    if ((head.headers[i] as string).toLowerCase() !== 'transfer-encoding') continue;
    for (const token of (head.headers[i + 1] as string).split(',')) {
      const name = token.trim().toLowerCase();
      if (name === '') continue;
      if (name !== 'chunked' || coding !== null) return false;
      coding = 'chunked';
    }
  }
  return coding;
}

/**
 * The origin declined the upgrade: relay its response body to the client (`bodyLength` bytes, to the
 * end of its chunked framing, or until the origin closes when null), then close both: `closed`, the
 * client's side lingering as after a refusal (endClient). An origin silent for `idleTimeoutMs` (nothing read from it: it neither sends nor closes, or the
 * client reads nothing so it stays paused) ends the relay, `idle-timeout`; once the client has sent
 * its FIN, silent for finGraceMs: `client-reset`.
 * `isDechunked` (an HTTP/1.0 client's chunked answer): only the chunk data is relayed and counted,
 * the close ends it; so a body cut short (the origin closes, or its framing breaks, before the last
 * chunk) resets the client, which would otherwise take it as whole: `upstream-reset`,
 * `upstream-bad-response`.
 */
function relayRefusedUpgrade(
  state: HttpListenerState,
  flow: Flow,
  socket: Duplex,
  upstream: Socket,
  rest: Buffer,
  bodyLength: number | 'chunked' | null,
  isDechunked: boolean,
  limits: { connectTimeoutMs: number; idleTimeoutMs: number },
): void {
  const { ctx } = state;
  const finish = (reason: string): void => {
    if (flow.state === 'active') ctx.flows.close(flow, reason);
  };
  /**
   * The body stops short: the client is dropped. Dechunked, with a reset: its answer ends at the
   * close, so a FIN would tell it the body was whole.
   */
  const cut = (reason: string): void => {
    finish(reason);
    upstream.destroy();
    if (isDechunked) resetOrDestroy(socket as Socket);
    else socket.destroy();
  };
  /** Follows a chunked body's framing to its end; null for other bodies. */
  const chunked = bodyLength === 'chunked' ? new ChunkedEnd() : null;
  /** Body bytes still owed to the client; null: until the origin's end (or, chunked, until the end is seen). */
  let left = bodyLength === 'chunked' ? null : bodyLength;
  /** Writes one run of chunk data on, counted (isDechunked). */
  const onData = isDechunked
    ? (data: Buffer): void => {
        flow.bytesIn += data.length;
        socket.write(data);
      }
    : undefined;
  /** Relay `chunk` (no more than the body's rest); true once the body is whole: closed. */
  const relay = (chunk: Buffer): boolean => {
    if (chunked !== null && left === null) {
      const end = chunked.scan(chunk, onData);
      if (end >= 0) left = end;
      else if (isDechunked && chunked.isLost) {
        cut('upstream-bad-response');
        return true;
      }
    }
    const part = left !== null && chunk.length > left ? chunk.subarray(0, left) : chunk;
    if (left !== null) left -= part.length;
    let isFull: boolean;
    if (isDechunked) isFull = socket.writableNeedDrain;
    else {
      flow.bytesIn += part.length;
      isFull = !socket.write(part);
    }
    if (left !== 0) {
      if (isFull) upstream.pause();
      return false;
    }
    finish('closed');
    endClient();
    upstream.destroy();
    return true;
  };
  let isEnding = false;
  /**
   * The answer is whole: our side ends, and the client has LINGER_MS from when that is written out
   * to close its own (lingerThenDestroy), as after the absolute-URI paths' last answer. Before, a
   * client that kept its side open held the connection for ever (node:http no longer watches it).
   */
  const endClient = (): void => {
    if (isEnding) return;
    isEnding = true;
    socket.end();
    lingerOnceWritten(socket, limits.idleTimeoutMs);
  };
  let isClientEnded = false;
  upstream.setTimeout(limits.idleTimeoutMs, () => cut(isClientEnded ? 'client-reset' : 'idle-timeout'));
  // The client's FIN: the rest of the answer is still relayed, but the origin's silence is cut sooner.
  const onClientEnd = (): void => {
    isClientEnded = true;
    upstream.setTimeout(finGraceMs(limits));
  };
  if (socket.readableEnded) onClientEnd();
  else socket.once('end', onClientEnd);
  // A kill resets both sides: a FIN would tell the client a body read until the close was whole.
  flow.abort = () => {
    upstream.resetAndDestroy();
    resetOrDestroy(socket as Socket);
  };
  upstream.on('data', relay);
  socket.on('drain', () => upstream.resume());
  upstream.once('end', () => {
    if (isDechunked && left !== 0) {
      cut('upstream-reset');
      return;
    }
    endClient();
    finish('closed');
  });
  upstream.once('close', () => {
    if (flow.state === 'active') cut('upstream-reset');
  });
  upstream.on('error', () => undefined);
  socket.on('error', () => undefined);
  socket.once('close', () => {
    upstream.destroy();
    finish('client-reset');
  });
  // What the client sends now has nowhere to go: discard it.
  socket.resume();
  // Bytes that came with the head first (the whole body, or none owed at all, may be there already).
  if ((rest.length > 0 || left === 0) && relay(rest)) return;
  upstream.resume();
}
