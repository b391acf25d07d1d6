/**
 * `CONNECT host:port` (RFC 9110 §9.3.6): admission, dial exactly the checked address, answer
 * `200 Connection Established`, then hand both sockets to the tunnel. Bytes the client sent after
 * the CONNECT head (`head`) are payload: the tunnel writes them upstream and counts them in
 * bytesOut. The CONNECT head and our 200 are the proxy handshake and never counted.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { admitAlternate, type ClientWatch, failFlow } from '../admission.ts';
import type { FlowTable } from '../flow/flow-table.ts';
import { tunnel } from '../flow/tunnel.ts';
import { parseAuthority } from '../protocol/authority.ts';
import { isShortage, mapError } from '../reject.ts';
import { dialFirstReachable } from '../upstream/dial.ts';
import { viaFor, viaOnward } from '../via.ts';
import { isShedding } from './http-connection-state.ts';
import type { HttpListenerState, RequestHead } from './http-proxy.ts';
import { httpDate } from './http-date.ts';
import { lingerThenDestroy, refusalDetails, writeRawRefusal } from './http-refusal.ts';
import { connectContentFault, expectationFault, hostFieldFault, httpVersionFault, shapeRefusalCode } from './http-target.ts';

/** The 200 head with its Date, rebuilt only when httpDate() moves on (once a second at most). */
let establishedDate = '';
let established = '';

/** The CONNECT 200 head: one cached string per second, no formatting per connection. */
function establishedHead(): string {
  const date = httpDate();
  if (date !== establishedDate) {
    establishedDate = date;
    established = `HTTP/1.1 200 Connection Established\r\ndate: ${date}\r\n\r\n`;
  }
  return established;
}

/** A held client (holdClient); its `flow`, once admission opens one, ends when the client leaves. */
export interface ClientHold extends ClientWatch {
  isGone(): boolean;
  /** Stop watching. */
  release(): void;
}

/**
 * Watch a detached client socket while admission and the dial run: bytes stay queued (paused), an
 * early close or reset is noticed (and reported once to `onGone`, if given), and an error never goes
 * unhandled. With `flows`, the hold's `flow` (named by admission: AdmissionRequest.watch) ends then
 * (FlowTable.clientLeft: recorded `client-reset` at once, its dial abandoned). A FIN alone is no
 * leaving: the listener allows half-open sockets and the socket is paused, so it brings no 'close'.
 */
export function holdClient(socket: Duplex, onGone?: () => void, flows?: Pick<FlowTable, 'clientLeft'>): ClientHold {
  let gone = false;
  const hold: ClientHold = {
    flow: null,
    isGone: () => gone || socket.destroyed,
    release: () => {
      socket.removeListener('close', onClose);
      socket.removeListener('error', onError);
    },
  };
  const onClose = (): void => {
    if (gone) return;
    gone = true;
    if (hold.flow !== null) flows?.clientLeft(hold.flow);
    onGone?.();
  };
  const onError = onClose;
  socket.pause();
  socket.on('close', onClose);
  socket.on('error', onError);
  return hold;
}

/**
 * Responses node:http still owes on this connection to requests pipelined ahead of a CONNECT or an
 * Upgrade (node emits 'connect' and 'upgrade' as soon as it has parsed the head). The answer to the
 * CONNECT must follow them, not land in the middle of them, and the tunnel must not carry them.
 * Null when none is owed (always on the CONNECT front, which takes only a connection's first request).
 */
export function earlierResponses(socket: Duplex): Promise<void> | null {
  const owed = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
  if (!owed || owed.writableFinished || owed.destroyed) return null;
  return new Promise<void>((resolve) => {
    const done = (): void => {
      owed.removeListener('finish', done);
      owed.removeListener('close', done);
      socket.removeListener('close', done);
      resolve();
    };
    owed.once('finish', done);
    owed.once('close', done);
    socket.once('close', done);
  }).then(() => earlierResponses(socket) ?? undefined);
}

/**
 * Wait for the responses `owed` (earlierResponses) ahead of a CONNECT or Upgrade; false when the
 * client left meanwhile, its socket then released and destroyed. Callers check for `owed` first, so a
 * connection owing nothing (every CONNECT front one) pays no extra turn.
 */
export async function outlastsEarlierResponses(owed: Promise<void>, socket: Duplex, hold: { isGone: () => boolean; release: () => void }): Promise<boolean> {
  await owed;
  if (!hold.isGone()) return true;
  hold.release();
  socket.destroy();
  return false;
}

/**
 * A CONNECT or Upgrade pipelined behind a 429 (the connection's last answer, see onRequest in
 * http-proxy.ts) is dropped like the requests behind it: not admitted, no dial, no flow, no record,
 * no answer. Asked once the responses owed ahead of it are out, so the 429 has been decided. True
 * when it was dropped: the socket is then released and ended here.
 */
export function isBehindLastAnswer(socket: Duplex, hold: { release: () => void }): boolean {
  if (!isShedding(socket)) return false;
  hold.release();
  socket.end();
  lingerThenDestroy(socket);
  return true;
}

/**
 * A refused CONNECT target as logged: at most 256 characters, and without what comes before an `@`
 * (userinfo: `user:password@host:port` is no authority, but its password must not reach the logs).
 */
function loggedTarget(url: string): string {
  const at = url.lastIndexOf('@');
  return (at < 0 ? url : `[userinfo]${url.slice(at)}`).slice(0, 256);
}

/** Handle one CONNECT request on a detached client socket. Never throws for client mistakes. */
export async function handleConnect(state: HttpListenerState, req: RequestHead, socket: Duplex, head: Buffer): Promise<void> {
  const { ctx } = state;
  const hold = holdClient(socket, undefined, ctx.flows);
  const owed = earlierResponses(socket);
  if (owed && !(await outlastsEarlierResponses(owed, socket, hold))) return;
  if (isBehindLastAnswer(socket, hold)) return;
  // `CONNECT host:port HTTP/2.0` (node's parser reads it as HTTP/1): 505 before anything, as on the
  // absolute-URI paths (smugglingShape). The front's heads are HTTP/1.1.
  const version = req.httpVersionMajor === undefined ? null : httpVersionFault(req.httpVersionMajor);
  if (version !== null) {
    hold.release();
    const code = shapeRefusalCode(version);
    ctx.log.warn({ client: req.socket.remoteAddress, code, why: version }, 'bad CONNECT request refused');
    writeRawRefusal(socket, mapError(code), { flowId: null, isBlock: false });
    return;
  }
  const authority = parseAuthority(req.url ?? '', null);
  if (!authority) {
    hold.release();
    ctx.log.warn({ client: req.socket.remoteAddress, code: 'EGW_BAD_REQUEST', target: loggedTarget(req.url ?? '') }, 'bad CONNECT target refused');
    writeRawRefusal(socket, mapError('EGW_BAD_REQUEST'), { flowId: null, isBlock: false });
    return;
  }
  // Host twice or invalid (RFC 9112 §3.2), content framed on a CONNECT (its bytes would be tunnelled:
  // connectContentFault), or two credentials (http-proxy.ts repeatedCredential): 400 before
  // admission, no flow, as for a bad target. An expectation other than 100-continue: 417, as on
  // the absolute-URI and Upgrade paths (expectationFault); a 100-continue is ignored (no content).
  const repeated = hostFieldFault(req.headers, req.rawHeaders) ?? connectContentFault(req.headers) ?? state.repeatedCredential(req) ?? expectationFault(req);
  if (repeated !== null) {
    hold.release();
    const code = shapeRefusalCode(repeated);
    ctx.log.warn({ client: req.socket.remoteAddress, code, why: repeated }, 'bad CONNECT request refused');
    writeRawRefusal(socket, mapError(code), { flowId: null, isBlock: false });
    return;
  }
  const result = await state.admitRequest(req, 'connect', authority.host, authority.port, hold);
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
  const { flow } = result;
  const limits = result.snapshot.config.limits;
  if (hold.isGone()) {
    // Left before the flow was named on the hold (its identity resolved meanwhile): nothing is dialled.
    hold.release();
    socket.destroy();
    ctx.flows.close(flow, 'client-reset');
    return;
  }
  let upstream: Socket;
  try {
    upstream = await dialFirstReachable({ ip: result.ip, port: authority.port, upstream: result.upstream, timeoutMs: limits.connectTimeoutMs, flow, via: result.upstream === null ? ctx.via.value : viaOnward(req.headers.via, viaFor(ctx.via, req.httpVersionMajor ?? 1, req.httpVersionMinor ?? 1)), unanswered: ctx.unanswered, names: ctx }, result.alternates, (ip, isOutcome) => admitAlternate(ctx, result, ip, isOutcome));
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
    // Out of descriptors or local ports is logged once per ten seconds (DescriptorShortage), not per flow; a kill by its killer.
    if (!isShortage(mapping) && !isKilled) ctx.log.warn({ flowId: flow.id, reason: mapping.reason, err: (err as Error).message }, 'CONNECT dial failed');
    writeRawRefusal(socket, mapping, { flowId: flow.id, isBlock: flow.verdict === 'block' });
    return;
  }
  hold.release();
  if (hold.isGone()) {
    // The client left while we dialled (or as the flow was killed: its record is written).
    upstream.destroy();
    socket.destroy();
    ctx.flows.close(flow, 'client-reset');
    return;
  }
  if (flow.state !== 'active') {
    // Killed as the dial completed: the client hears what the kill means, nothing is relayed.
    upstream.destroy();
    writeRawRefusal(socket, failFlow(ctx, flow, null), { flowId: flow.id, isBlock: flow.verdict === 'block' });
    return;
  }
  socket.write(establishedHead());
  tunnel(ctx.flows, flow, socket as Socket, upstream, { idleTimeoutMs: limits.idleTimeoutMs, head });
}
