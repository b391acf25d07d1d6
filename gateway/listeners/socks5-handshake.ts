/**
 * The SOCKS5 handshake state machine of one downstream connection: greeting → (RFC 1929 auth) →
 * request. It drives the pure codec (gateway/protocol/socks5-codec.ts) with whatever bytes have
 * arrived, so a client may split its messages anywhere or pipeline them all in one write.
 *
 * It owns only the handshake: once a request is parsed it stops reading (pause) and hands the
 * request, the identity and any bytes the client already sent past the request to `onRequest`.
 * Every refusal goes out through `refuse()`: the reply bytes (if the protocol has a place for one),
 * a warn log with the reason, then a graceful close that never crashes and never lingers. A
 * refused RFC 1929 login also leaves its flow record (admission/refusals.ts, refuseLogin): no destination
 * was named yet, and it is the connection's only record. A connection closed before its first byte
 * (a port probe) began no handshake: it is closed without a log line.
 */
import type { Socket } from 'node:net';
import { formatAuthority, normaliseHost } from '../protocol/authority.ts';
import { refuseLogin } from '../admission.ts';
import type { GatewayContext } from '../context.ts';
import type { GatewayErrorCode } from '../errors.ts';
import { mapError, SOCKS_REP } from '../reject.ts';
import {
  encodeAuthStatus,
  encodeMethod,
  encodeReply,
  METHOD,
  type Parsed,
  parseGreeting,
  parseRequest,
  parseUserPass,
  type SocksRequest,
} from '../protocol/socks5-codec.ts';
import type { Identity, PolicySnapshot } from '../../policy/types.ts';

type Stage = 'greeting' | 'auth' | 'request' | 'done';

/** How long a refused client gets to read its reply before the socket is destroyed. */
const LINGER_MS = 2000;
/** Bytes a client may have sent ahead of the handshake's progress (pipelined auth + request). */
const MAX_PENDING_BYTES = 4096;

export interface HandshakeResult {
  readonly request: SocksRequest;
  readonly identity: Identity;
  readonly snapshot: PolicySnapshot;
  /** Bytes the client sent after the request (optimistic data): they belong upstream. */
  readonly head: Buffer;
  readonly username: string | null;
}

export interface Downstream {
  readonly socket: Socket;
  readonly clientIp: string;
  readonly clientPort: number;
  /**
   * What closing the listener does to this connection while it carries no flow (handshake, dial,
   * flow-less UDP association): replace it, or pass null once the FlowTable owns a flow for it
   * (then draining is the flow table's business). `isHeld`: the drain's start leaves it open (a
   * handshake under way, whose request is refused `shutting-down`), its end closes it.
   */
  setCloser(closer: (() => void) | null, isHeld?: boolean): void;
}

/**
 * Run the handshake on `down`. `onRequest` is called at most once, with the socket paused and the
 * handshake's listeners removed; everything else ends in a refusal and a close.
 */
export function runHandshake(ctx: GatewayContext, down: Downstream, onRequest: (result: HandshakeResult) => void): void {
  const { socket } = down;
  let stage: Stage = 'greeting';
  let pending: Buffer = Buffer.alloc(0);
  let username: string | null = null;
  let password: string | null = null;
  let busy = false;
  /** The client's FIN has come: what it sent before it is still the handshake's to finish. */
  let isEnded = false;
  /** The client has sent its first bytes (the connection is held through the drain from then on). */
  let isStarted = false;
  const destroySocket = (): void => {
    socket.destroy();
  };
  let identity: Identity | null = null;
  const snapshot = ctx.policy.current();
  const limits = snapshot.config.limits;
  const requireAuth = snapshot.config.identity.requireAuth;

  const timer = setTimeout(() => {
    const where = stage;
    fail('EGW_HEADER_TIMEOUT', `handshake not complete within ${limits.headerTimeoutMs} ms (at ${where})`, where === 'request');
  }, limits.headerTimeoutMs);

  const detach = (): void => {
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.removeListener('end', onEnd);
    socket.removeListener('close', onClose);
  };

  function fail(code: GatewayErrorCode, reason: string, withReply: boolean): void {
    if (stage === 'done') return;
    stage = 'done';
    detach();
    const reply = withReply ? encodeReply(mapError(code).socks) : null;
    refuse(ctx, down, reply, code, reason);
  }

  /** Advance through as many stages as the buffered bytes allow. */
  function pump(): void {
    while (!busy && stage !== 'done') {
      if (stage === 'greeting') {
        const r = parseGreeting(pending);
        if (r.kind === 'error' && pending[0] === 0x05) {
          // A SOCKS5 client offering nothing usable (zero methods) can still be told "no method".
          stage = 'done';
          detach();
          refuse(ctx, down, encodeMethod(METHOD.noAcceptable), r.code, r.reason);
          return;
        }
        if (!consume(r, false) || r.kind !== 'ok') return;
        const g = r.value;
        // Offer auth whenever the client can do it: credentials name a user even when not required.
        if (g.hasUserPass) {
          socket.write(encodeMethod(METHOD.userPass));
          stage = 'auth';
        } else if (g.hasNoAuth && !requireAuth) {
          socket.write(encodeMethod(METHOD.noAuth));
          stage = 'request';
        } else {
          stage = 'done';
          detach();
          const why = requireAuth ? 'authentication required, client offered no username/password method' : 'no acceptable method offered';
          // Without credentials where they are required: recorded as HTTP records its 407 to a request without them.
          if (requireAuth && g.hasNoAuth) refuseLogin(ctx, { protocol: 'socks5', listener: 'socks', clientIp: down.clientIp, clientPort: down.clientPort });
          refuse(ctx, down, encodeMethod(METHOD.noAcceptable), 'EGW_AUTH_REQUIRED', why);
          return;
        }
      } else if (stage === 'auth') {
        const r = parseUserPass(pending);
        if (r.kind === 'error') {
          stage = 'done';
          detach();
          refuse(ctx, down, encodeAuthStatus(false), r.code, r.reason);
          return;
        }
        if (!consume(r, false) || r.kind !== 'ok') return;
        username = r.value.username;
        password = r.value.password;
        // Identity is resolved now: RFC 1929 wants the verdict on the credentials before the request.
        // Reading stops meanwhile: what the client sends on (its request, then optimistic data)
        // waits in the kernel, not here, and is no flood (onData's cap counts no bytes while busy).
        busy = true;
        socket.pause();
        resolveIdentity(true);
        return;
      } else if (stage === 'request') {
        const r = parseRequest(pending);
        if (!consume(r, true) || r.kind !== 'ok') return;
        const req = r.value;
        let host = req.host;
        if (req.atyp === 0x03) {
          // Domain names go through the same normaliser as HTTP authorities ("0x7f.1" is 127.0.0.1).
          const norm = normaliseHost(host);
          if (norm === null) {
            fail('EGW_BAD_REQUEST', `unusable destination name ${JSON.stringify(host)}`, true);
            return;
          }
          host = norm.host;
        }
        // Port 0 names no service: nothing can be dialled there (HTTP's CONNECT host:0 is 400 too).
        // UDP ASSOCIATE's DST.PORT 0 is RFC 1928's "not known yet", and stays so.
        if (req.command === 'connect' && req.port === 0) {
          fail('EGW_BAD_REQUEST', `CONNECT ${JSON.stringify(host)} to port 0`, true);
          return;
        }
        stage = 'done';
        detach();
        socket.pause();
        const head = pending;
        pending = Buffer.alloc(0);
        if (identity === null) {
          // No-auth: resolve the (host-inventory / default) identity now.
          busy = true;
          void resolveFinal({ ...req, host }, head);
          return;
        }
        onRequest({ request: { ...req, host }, identity, snapshot, head, username });
        return;
      } else return;
    }
  }

  async function resolveFinal(request: SocksRequest, head: Buffer): Promise<void> {
    try {
      const res = await ctx.identity.resolve({ clientIp: down.clientIp, clientPort: down.clientPort, username: null, password: null }, snapshot);
      if (socket.destroyed) return;
      if (!res.ok) {
        refuse(ctx, down, encodeReply(SOCKS_REP.notAllowed), 'EGW_AUTH_REQUIRED', res.reason);
        return;
      }
      onRequest({ request, identity: res.identity, snapshot, head, username: null });
    } catch (err) {
      refuse(ctx, down, encodeReply(SOCKS_REP.generalFailure), 'EGW_CONFIG_INVALID', `identity resolution failed: ${String(err)}`);
    }
  }

  function resolveIdentity(withCredentials: boolean): void {
    ctx.identity
      .resolve(
        { clientIp: down.clientIp, clientPort: down.clientPort, username: withCredentials ? username : null, password: withCredentials ? password : null },
        snapshot,
      )
      .then(
        (res) => {
          busy = false;
          // A refused login is recorded even when the client did not wait for the answer: a
          // password-guessing client must not stay out of the flow log by closing first.
          if (!res.ok) refuseLogin(ctx, { protocol: 'socks5', listener: 'socks', clientIp: down.clientIp, clientPort: down.clientPort });
          if (stage === 'done' || socket.destroyed) return;
          if (!res.ok) {
            stage = 'done';
            detach();
            refuse(ctx, down, encodeAuthStatus(false), 'EGW_AUTH_REQUIRED', `username/password refused (${res.reason}) for user ${JSON.stringify(username)}`);
            return;
          }
          identity = res.identity;
          socket.write(encodeAuthStatus(true));
          stage = 'request';
          pump();
          // A request handed over leaves the socket paused for its flow; one still to come is read.
          if ((stage as Stage) !== 'done') socket.resume();
          if (isEnded) failIfStalled();
        },
        (err: unknown) => {
          busy = false;
          fail('EGW_CONFIG_INVALID', `identity resolution failed: ${String(err)}`, false);
        },
      );
  }

  /**
   * Drop the consumed bytes of a finished parse; on an error, refuse (with a reply in the request
   * stage, where RFC 1928 has one). Returns false when the caller must stop pumping.
   */
  function consume<T>(r: Parsed<T>, replyOnError: boolean): boolean {
    if (r.kind === 'need') return false;
    if (r.kind === 'error') {
      fail(r.code, r.reason, replyOnError);
      return false;
    }
    pending = pending.subarray(r.consumed);
    return true;
  }

  function onData(chunk: Buffer): void {
    // A handshake under way outlives the drain's start: its request, if it comes, is refused and recorded.
    if (!isStarted) {
      isStarted = true;
      down.setCloser(destroySocket, true);
    }
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    pump();
    // The largest legal handshake (greeting 257 + auth 513 + request 262) is ~1 KiB; a client that
    // keeps sending while its handshake is incomplete is flooding, not pipelining. While its
    // credentials are checked (busy) the socket is paused: what is buffered then is at most the one
    // chunk that carried them, whose bytes past the request are optimistic data for upstream.
    if (stage !== 'done' && !busy && pending.length > MAX_PENDING_BYTES) {
      fail('EGW_SOCKS_PROTOCOL', `${pending.length} bytes buffered during the handshake`, stage === 'request');
    }
  }
  /**
   * A client may half-close once it has sent everything (greeting, credentials, request and payload
   * in one go, then its FIN): the handshake goes on with what it buffered, and only one that still
   * needs bytes the client can no longer send is cut. While credentials are being checked the end
   * waits for the answer (failIfStalled runs then).
   */
  function onEnd(): void {
    isEnded = true;
    if (!isStarted) {
      // Closed before its first byte: a port probe (a balancer's health check, `nc -z`), no handshake
      // begun. Closed without a log line, as node:http closes an HTTP connection that sent nothing
      // (gw_downstream_cx_total counts it, as it does there).
      stage = 'done';
      detach();
      socket.destroy();
      return;
    }
    if (!busy) failIfStalled();
  }
  function failIfStalled(): void {
    if (stage !== 'done' && !busy) fail('EGW_SOCKS_PROTOCOL', `client closed during the handshake (at ${stage})`, false);
  }
  function onClose(): void {
    if (stage === 'done') return;
    stage = 'done';
    detach();
  }

  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('close', onClose);
}

/**
 * Send a refusal (if any), log why (`code`: an EGW_* code or a decision's reason), close. Reading continues (bytes discarded) until the client
 * closes or LINGER_MS passes, so the reply is not lost to a RST caused by unread input.
 */
export function refuse(ctx: GatewayContext, down: Downstream, reply: Buffer | null, code: GatewayErrorCode | string, reason: string, logged = true): void {
  const { socket } = down;
  if (logged) ctx.log.warn({ listener: 'socks', client: formatAuthority(down.clientIp, down.clientPort), code, reason }, 'socks5 refused');
  if (socket.destroyed) return;
  const linger = setTimeout(() => socket.destroy(), LINGER_MS);
  socket.once('close', () => clearTimeout(linger));
  socket.on('data', discard);
  socket.once('end', () => socket.destroy());
  if (reply) socket.end(reply);
  else socket.end();
  socket.resume();
}

function discard(): void {}
