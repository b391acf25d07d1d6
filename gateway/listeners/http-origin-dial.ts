/**
 * How an absolute-URI request's origin connection is named and dialled: which flow a connection
 * undici opens is for (its connector is told only the origin), and, for a name with several
 * addresses, the staggered dial of them all (dialFirstReachable, as on the tunnels).
 *
 * undici keeps one pool per origin, and the origin is the pinned address (`http://<checked ip>:port`,
 * http-forward.ts): a connection pooled under an address is only ever one to that address, so a
 * request is only sent on a connection to an address its own admission checked. A staggered dial
 * whose winner is another address than the request's origin therefore does not hand its socket to
 * that origin's pool: the request fails there with SENT_ELSEWHERE (before undici connected it, so
 * before it read any of its body) and is dispatched again to the winner's origin, whose connector
 * takes the connected socket (StaggeredOrigin.connect).
 */
import type { Socket } from 'node:net';
import { buildConnector, type Dispatcher } from 'undici';
import { type Admitted, admitAlternate } from '../admission.ts';
import type { GatewayContext } from '../context.ts';
import type { Flow } from '../flow/flow.ts';
import { formatAuthority } from '../protocol/authority.ts';
import { connectTimedOut, dialFirstReachable } from '../upstream/dial.ts';

/**
 * undici's connector for a direct origin connection (plain TCP: the origin is always http://),
 * bounded by `timeoutMs` (limits.connectTimeoutMs) on a timer of our own, as a tunnel's dial is
 * (dial.ts). undici's own connect timeout runs on its fast timers, which tick every 499 ms and fire a
 * timer at the first tick past its delay, counted from the tick after it was armed: through a real
 * serve, connectTimeoutMs 1,000 answered 504 at 1,500 ms (3,000 at 3,500; 200 at 1,000). One timer per new origin connection,
 * cleared when it connects or fails: a request on a pooled connection costs nothing. On timeout
 * the socket is destroyed with the error a tunnel's dial fails with (EGW_DIAL_TIMEOUT), which
 * undici's connector hands to the request.
 */
export function boundedConnector(timeoutMs: number): buildConnector.connector {
  // timeout 0: undici arms no timer of its own.
  const connector = buildConnector({ timeout: 0, noDelay: true });
  return (opts, callback) => {
    let timer: NodeJS.Timeout | null = null;
    // Typed void, but undici's connector returns the socket it opened (core/connect.js).
    const socket = connector(opts, (...args) => {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      callback(...args);
    }) as unknown as Socket;
    timer = setTimeout(onConnectTimeout, timeoutMs, socket, opts.hostname, Number(opts.port) || 80);
    return socket;
  };
}

/** boundedConnector's limit is over: undici's 'error' listener hands the failure to the request. */
function onConnectTimeout(socket: Socket, hostname: string, port: number): void {
  // undici's client gives its connector an IPv6 origin without the brackets.
  socket.destroy(connectTimedOut(hostname, port));
}

/** What this module needs of an exchange (http-origin-exchange.ts OriginExchange). */
export interface DialledExchange extends Dispatcher.DispatchHandler {
  flowOf(): Flow;
  /** The staggered dial of the flow's name's addresses, or null (one address, or a parent proxy). */
  alternates: StaggeredOrigin | null;
  onError(err: Error): void;
}

/**
 * Which exchange an origin connection undici opens is for. undici's connector is told only the
 * origin, but it runs during `dispatch` (a request without a body: `dispatching`) or in the
 * microtask undici queues there (a body: the oldest of `awaitingDial`, each forgotten in a microtask
 * queued right after its own dispatch, so by then the earlier ones are gone). Only an exchange whose
 * flow goes to that address, not already dialling, is named; a connection opened otherwise is no
 * flow's (a kill then aborts the request once connected, as before).
 */
let dispatching: DialledExchange | null = null;
const awaitingDial: DialledExchange[] = [];

export function exchangeDialling(ip: string, port: number): DialledExchange | undefined {
  const exchange = dispatching ?? awaitingDial[0];
  if (exchange === undefined) return undefined;
  const flow = exchange.flowOf();
  if (flow.dialling !== null || flow.state !== 'active') return undefined;
  return flow.destination.ip === ip && flow.destination.port === port ? exchange : undefined;
}

function forgetOldestDispatch(): void {
  awaitingDial.shift();
}

/** `agent.dispatch` of an exchange's request, its origin connection (if one is opened) named to its flow. */
export function dispatchToOrigin(agent: Dispatcher, opts: Dispatcher.DispatchOptions, exchange: DialledExchange): void {
  // Only a request with a body has its connection opened in a later microtask: the others (every
  // fast-path GET and HEAD) queue nothing.
  const isDeferred = opts.body != null;
  dispatching = exchange;
  if (isDeferred) awaitingDial.push(exchange);
  try {
    agent.dispatch(opts, exchange);
  } catch (err) {
    exchange.onError(err as Error);
  } finally {
    dispatching = null;
    if (isDeferred) queueMicrotask(forgetOldestDispatch);
  }
}

/**
 * undici (7.30.2) dials an origin once more for a request it has just aborted: the abort
 * (client-h1.js writeH1's `abort`, ~l. 1230) errors the request and destroys its socket with
 * InformationalError('aborted'); that socket's close (onHttpSocketClose, ~l. 993-1006) fails the
 * head request only for a close whose error is not UND_ERR_INFO, so the aborted one stays queued
 * and kPendingIdx is set back to it; `client[kResume]()` then finds a request pending and no
 * connection, and connects for it (client.js _resume, ~l. 618-650) before it would drop it unsent
 * (~l. 661-665). The origin accepted one more connection and saw it closed empty (the Agent closes
 * the pool its last connection left). Filed upstream as nodejs/undici#5845. Every client that leaves
 * mid-request, each kill and FIN grace aborts that way. The client's 'disconnect' for that close
 * reaches the Agent (onOriginDisconnect) just before, in the same synchronous run: the connector
 * fails the one connect to that origin that follows it (isRedialOfAborted), and undici drops the
 * aborted request as it does after any failed connect (handleConnectError: it is aborted already,
 * its handler hears nothing). Nothing is done per request.
 */
let redialled: string | null = null;

function forgetRedial(): void {
  redialled = null;
}

/** The Agents' 'disconnect' listener: after an abort's close, note the origin undici will dial again. */
export function onOriginDisconnect(origin: URL | string, _targets: unknown, err: Error | null | undefined): void {
  if ((err as NodeJS.ErrnoException | null | undefined)?.code !== 'UND_ERR_INFO' || err?.message !== 'aborted') return;
  const url = typeof origin === 'string' ? new URL(origin) : origin;
  redialled = `${url.hostname.replace(/^\[|\]$/g, '')}:${Number(url.port) || 80}`;
  // It connects within this run, or not at all (a destroyed client).
  queueMicrotask(forgetRedial);
}

/** Whether the connector is asked for the connection undici opens for a request it aborted (see above). */
export function isRedialOfAborted(hostname: string, port: number): boolean {
  if (redialled === null || redialled !== `${hostname.replace(/^\[|\]$/g, '')}:${port}`) return false;
  redialled = null;
  return true;
}

/** What the connector answers that connect: undici fails the aborted request with it, unheard. */
export const NOT_REDIALLED = new Error('not dialled again for a request undici aborted');

/**
 * The error a request fails with in the pool of the address it was dispatched to when its
 * staggered dial connected to another of the name's addresses (StaggeredOrigin): the exchange then
 * dispatches it to that one (OriginExchange.isSentElsewhere). One object for every such request.
 */
export const SENT_ELSEWHERE = new Error('connected to another address of the name');

const NO_ALTERNATES: readonly string[] = Object.freeze([]);

/**
 * The origin connection of one absolute-URI request whose name has other addresses
 * (Admitted.alternates), not through a parent proxy: the first connection undici opens for it is
 * the staggered dial of the name's addresses (RFC 8305: the next 250 ms after the one before while
 * that one still connects, at once when it refuses; each checked first, admitAlternate; the losers
 * destroyed when one connects; the flow's `dialling`, so a kill or the client leaving destroys every
 * attempt; limits.connectTimeoutMs the one deadline). A request for a one-address name has none.
 */
export class StaggeredOrigin {
  /** The winner of the dial, connected to `handedIp`, until its origin's connector takes it. */
  private handed: Socket | null = null;
  private handedIp = '';
  /** The name's addresses were dialled: another connection for the request dials only its own. */
  private isDialled = false;

  constructor(
    private readonly ctx: GatewayContext,
    private readonly admitted: Admitted,
    private readonly opts: Dispatcher.DispatchOptions,
    private readonly agent: Dispatcher,
    private readonly exchange: DialledExchange,
  ) {}

  /** undici's connector for this request's connection to ip:port (its origin). */
  connect(ip: string, port: number, callback: buildConnector.Callback): void {
    const { flow } = this.admitted;
    const handed = this.handed;
    if (handed !== null) {
      this.handed = null;
      if (ip === this.handedIp) {
        flow.dialling = handed;
        // Not from within the connector's call: undici resumes the client only after it returns.
        queueMicrotask(() => callback(null, handed));
        return;
      }
      handed.destroy();
    }
    const alternates = this.isDialled ? NO_ALTERNATES : this.admitted.alternates;
    this.isDialled = true;
    const timeoutMs = this.admitted.snapshot.config.limits.connectTimeoutMs;
    dialFirstReachable({ ip, port, upstream: null, timeoutMs, flow, via: this.ctx.via.value, unanswered: this.ctx.unanswered }, alternates, this.admit).then(
      (socket) => {
        // The record names the address that answered (admitAlternate): the request's origin, or another.
        const winner = flow.destination.ip;
        if (winner === ip || winner === null) {
          callback(null, socket);
          return;
        }
        this.handed = socket;
        this.handedIp = winner;
        callback(SENT_ELSEWHERE, null);
        // Not taken by the winner's connector (the request went on a pooled connection to it, or
        // was not sent on): closed. undici opens a request-with-body's connection in a microtask
        // it queued during the dispatch, before this one.
        queueMicrotask(this.dropHanded);
      },
      (err: Error) => callback(err, null),
    );
  }

  /**
   * The request failed with SENT_ELSEWHERE: it goes to the address that answered, whose connector
   * takes the connected socket. True when it was dispatched there.
   */
  redispatch(err: Error): boolean {
    if (err !== SENT_ELSEWHERE || this.handed === null) return false;
    const { flow } = this.admitted;
    this.opts.origin = `http://${formatAuthority(this.handedIp, flow.destination.port)}`;
    // Free for the winner's connector to name (exchangeDialling); the socket is `handed` meanwhile.
    flow.dialling = null;
    dispatchToOrigin(this.agent, this.opts, this.exchange);
    return true;
  }

  private readonly admit = (ip: string, isOutcome?: boolean): boolean => admitAlternate(this.ctx, this.admitted, ip, isOutcome);

  private readonly dropHanded = (): void => {
    const handed = this.handed;
    this.handed = null;
    handed?.destroy();
  };
}
