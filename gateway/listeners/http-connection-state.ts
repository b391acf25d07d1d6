/**
 * Per-client-connection state of the HTTP listener, kept on the socket itself under a symbol:
 * one object per connection, no WeakMap/WeakSet lookups per request on the hot path.
 */
import { Socket } from 'node:net';
import type { Identity, PolicySnapshot, ProcessInfo } from '../../policy/types.ts';
import { resetSocket } from '../flow/socket-reset.ts';

/** An identity resolved on a keep-alive connection, reused while the credentials stay the same. */
export interface CachedIdentity {
  key: string;
  version: number;
  identity: Identity;
  /** The policy it was resolved under: its host stays while that policy runs (admission's hostUnder). */
  snapshot: PolicySnapshot;
  /** Reused until then (ms, the identity resolver's clock): a signed token's expiry; worked out on first reuse. */
  untilMs?: number;
}

export interface ConnectionState {
  /**
   * A request on this connection waits on its origin (its body, if any, all sent on): the origin's
   * own timeouts govern it. Not while the client still owes body bytes: its silence is the client's.
   */
  isAwaitingOrigin: boolean;
  /** The listener cut this connection for limits.idleTimeoutMs of silence: its flows end `idle-timeout`. */
  isTimedOut: boolean;
  /**
   * node's parser refused what the client sent after a request's head (a malformed chunked body:
   * `clientError`, answered 400 there): the request it was reading ends `bad-request`, and is not sent
   * to its origin when its admission ends after that (http-forward.ts).
   */
  isMalformed: boolean;
  /**
   * node's parser refused the head of a request pipelined behind requests still being answered: its
   * 400 (or 408, 431) goes out once their answers are out, and node's further reports of the same
   * error (one per chunk the client sends) change nothing (http-proxy.ts onClientError).
   */
  isRefusalOwed: boolean;
  /**
   * Admissions of this connection's requests now running (DNS, identity, attribution: each bounded by
   * its own timeout). The gateway is deciding: the client's silence meanwhile is not idleness.
   */
  admissions: number;
  /** The idle timer fired during an admission: it is armed again once the admissions are over. */
  isIdleOwed: boolean;
  identity: CachedIdentity | null;
  /** The flow of this connection's latest request: a process attributed to it is the connection's. */
  lastFlow: { readonly identity: Identity } | null;
  /**
   * node:http requests of this connection still being answered, told when the socket closes (see
   * watchClientClose). Null until the first; one 'close' listener per connection serves them all.
   */
  closeWatchers: Set<ClientCloseWatcher> | null;
  /**
   * A request of this connection was refused 429, or answered by its origin before its body was
   * whole (http-early-answer.ts), or answered by the gateway with its body unread (http-refusal.ts
   * closeAfterUnreadBody): the connection ends after that answer and the requests the client
   * pipelined behind it are dropped unanswered, without a flow (a CONNECT or Upgrade too:
   * isBehindLastAnswer in http-connect.ts).
   */
  isShedding: boolean;
  /** node:http: the admission of this connection's latest request, while it runs (they run in order). */
  admitting: Promise<unknown> | null;
  /**
   * Where, in the bytes the client sent, the request the front or the fast path handed to node:http
   * begins (bytesRead then), or -1: an extension method there is known to start the packet node's
   * parser refused (http-extension-method.ts).
   */
  handedAt: number;
}

/** Something to tell when a client connection closes, or sends its FIN. */
export interface ClientCloseWatcher {
  onClientClose(): void;
  /** The client half-closed (its FIN): it may still read, or may have left (see finGraceMs). */
  onClientFin(): void;
}

/**
 * How long an origin may stay silent once the client has sent its FIN after a whole request: as long
 * as it may take to accept a connection, never longer than the idle timeout (10 s by default). After a
 * FIN the client may have half-closed and still read (RFC 9112 §9.6), or left, and TCP does not tell
 * the two apart until something is written: an answer within it is relayed whole, past it the client
 * counts as gone. Upgrade (http-upgrade.ts) and absolute-URI requests (http-forward.ts) alike.
 */
export function finGraceMs(limits: { readonly connectTimeoutMs: number; readonly idleTimeoutMs: number }): number {
  return Math.min(limits.connectTimeoutMs, limits.idleTimeoutMs);
}

const kState = Symbol('egressgate.http.connection');
type WithState = { [kState]?: ConnectionState };

/** The state of a client connection, created on first use. */
export function connectionState(socket: object): ConnectionState {
  const holder = socket as WithState;
  let state = holder[kState];
  if (!state) {
    state = { isAwaitingOrigin: false, isTimedOut: false, isMalformed: false, isRefusalOwed: false, admissions: 0, isIdleOwed: false, identity: null, lastFlow: null, closeWatchers: null, isShedding: false, admitting: null, handedAt: -1 };
    holder[kState] = state;
  }
  return state;
}

/**
 * Why a request's flow ends when its client connection went before the exchange did: the client's
 * framing error, the listener's idle cut, or the client leaving.
 */
export function clientGoneReason(state: ConnectionState): 'bad-request' | 'idle-timeout' | 'client-reset' {
  return state.isMalformed ? 'bad-request' : state.isTimedOut ? 'idle-timeout' : 'client-reset';
}

/**
 * The process already attributed to this client connection (its latest request's flow), or null;
 * reads the state without creating it.
 */
export function connectionProcess(socket: object): ProcessInfo | null {
  return (socket as WithState)[kState]?.lastFlow?.identity.process ?? null;
}

/**
 * Whether the listener's idle timer (limits.idleTimeoutMs) may cut this connection now that it fired.
 * Not while the gateway works on one of its requests: its admission runs (the timer is then owed
 * again when the admission ends, see endAdmission: a client that still owes a request body is idle
 * from there) or it waits on its origin (the origin's own timeouts answer, and the response re-arms
 * the timer). Before, a lookup slower than the idle timeout cut the client and recorded `client-reset`.
 */
export function mayCutIdle(state: ConnectionState): boolean {
  if (state.admissions > 0) {
    state.isIdleOwed = true;
    return false;
  }
  return !state.isAwaitingOrigin;
}

/** A request of this connection goes into admission: see mayCutIdle. */
export function beginAdmission(state: ConnectionState): void {
  state.admissions++;
}

/**
 * Its admission is over: an idle timer that fired meanwhile is armed again (its whole length from now),
 * so the connection's silence from here on is counted. Only on that rare path: no timer change otherwise.
 */
export function endAdmission(state: ConnectionState, socket: { readonly destroyed: boolean; readonly timeout?: number | undefined; setTimeout(ms: number): unknown }): void {
  state.admissions--;
  if (state.admissions > 0 || !state.isIdleOwed) return;
  state.isIdleOwed = false;
  if (!socket.destroyed && socket.timeout !== undefined && socket.timeout > 0) socket.setTimeout(socket.timeout);
}

/**
 * A request of this connection was refused 429 (ConnectionState.isShedding). Asks without creating
 * the state: a connection that has none (every CONNECT front one) has refused nothing.
 */
export function isShedding(socket: object): boolean {
  return (socket as WithState)[kState]?.isShedding === true;
}

/**
 * Tell `watcher` when `socket` closes, until unwatchClientClose. A ServerResponse emits 'close' only
 * once it has had the socket: one still queued behind another (pipelining) never does when the
 * client leaves, so its request must hear of the socket's close here. Its FIN too (onClientFin), at
 * once when it already came. One 'close' and one 'end' listener per connection serve all its requests.
 */
export function watchClientClose(socket: { readonly readableEnded: boolean; once(event: 'close' | 'end', fn: () => void): unknown }, state: ConnectionState, watcher: ClientCloseWatcher): void {
  let watchers = state.closeWatchers;
  if (watchers === null) {
    watchers = new Set();
    state.closeWatchers = watchers;
    const all = watchers;
    socket.once('close', () => {
      const left = [...all];
      all.clear();
      for (const w of left) w.onClientClose();
    });
    if (!socket.readableEnded) {
      socket.once('end', () => {
        for (const w of [...all]) w.onClientFin();
      });
    }
  }
  watchers.add(watcher);
  if (socket.readableEnded) watcher.onClientFin();
}

/** Stop telling `watcher` about the close (its request is over). */
export function unwatchClientClose(state: ConnectionState, watcher: ClientCloseWatcher): void {
  state.closeWatchers?.delete(watcher);
}

/**
 * Tear a client connection down with a TCP reset, on the HTTPS listener's TLS sockets too
 * (socket-reset.ts); a stream that is no socket is destroyed.
 */
export function resetOrDestroy(socket: { resetAndDestroy?: () => unknown; destroy: () => unknown }): void {
  if (socket instanceof Socket) resetSocket(socket);
  else socket.destroy();
}

/**
 * Forgets the identity cached on a connection once the credentials it came from have expired (a
 * signed token's `exp`), so the request is resolved again — and refused. `untilMs` is asked once
 * per cached identity, on its first reuse; without a token it is Infinity and this is one compare.
 */
export function expireCachedIdentity(state: ConnectionState, key: string, untilMs: () => number, now: () => number): void {
  const cached = state.identity;
  if (cached === null || cached.key !== key) return;
  cached.untilMs ??= untilMs();
  if (cached.untilMs !== Number.POSITIVE_INFINITY && now() >= cached.untilMs) state.identity = null;
}
