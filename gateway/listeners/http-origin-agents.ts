/**
 * The undici dispatchers of the HTTP listener's absolute-URI paths (http-forward.ts, and
 * http-fast-path.ts for requests served on the raw socket).
 *
 * Pinning: the undici origin is `http://<checked ip>:<port>`, so undici never resolves a name; the
 * origin still sees `Host: <name>`. One Agent keeps a keep-alive pool per ip:port (connections to
 * one address are shared by every virtual host on it, as a forward proxy's should be); a parent
 * proxy gets an Agent of its own whose connect step goes through gateway/upstream/dial.ts. A name
 * with several addresses has them dialled staggered by the connector, and a request whose dial
 * another address won goes to that address's pool (http-origin-dial.ts).
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { Agent, type buildConnector } from 'undici';
import { GatewayError } from '../errors.ts';
import { formatAuthority } from '../protocol/authority.ts';
import { dial, type ParentNames } from '../upstream/dial.ts';
import { parentName } from '../upstream/parent-label.ts';
import { adoptOriginReads } from './http-origin-reads.ts';
import { watchOriginReset } from './http-origin-reset.ts';
import { mendReasonPhrases } from './http-origin-status.ts';
import { boundedConnector, exchangeDialling, isRedialOfAborted, NOT_REDIALLED, onOriginDisconnect } from './http-origin-dial.ts';

/**
 * The undici dispatchers of one listener: direct, and one per parent proxy URL. undici fixes the
 * connect timeout when an Agent is made, so a reload that changes `limits.connectTimeoutMs` makes
 * new Agents; the old ones finish their requests in flight and close. A reload that no longer names
 * a parent URL (its credentials rotated, the parent removed) closes that URL's Agent the same way
 * (keepOnly).
 */
export class OriginAgents {
  private direct: Agent;
  private readonly viaUpstream = new Map<string, Agent>();
  /** Agents let go of (retune, keepOnly) whose requests in flight have not all finished yet: a drain's destroy reaches them too. */
  private readonly closing = new Set<Agent>();
  private connectTimeoutMs: number;
  /** Our Via entry, on the CONNECT each parent proxy is asked (the gateway's ViaName). */
  private readonly via: string;
  /** Where a parent named by host name is looked up (dial.ts parentAddress); absent: the OS resolver. */
  private readonly names: ParentNames | undefined;

  constructor(connectTimeoutMs: number, via: string, names?: ParentNames) {
    this.connectTimeoutMs = connectTimeoutMs;
    this.via = via;
    this.names = names;
    this.direct = directAgent(connectTimeoutMs);
  }

  /** The dispatcher for a flow: direct to the pinned address, or through its parent proxy. */
  for(upstream: string | null, connectTimeoutMs: number = this.connectTimeoutMs): Agent {
    if (connectTimeoutMs !== this.connectTimeoutMs) this.retune(connectTimeoutMs);
    if (!upstream) return this.direct;
    let agent = this.viaUpstream.get(upstream);
    if (!agent) {
      const timeoutMs = this.connectTimeoutMs;
      const via = this.via;
      const names = this.names;
      agent = new Agent({
        keepAliveTimeout: 4000,
        keepAliveMaxTimeout: ORIGIN_KEEPALIVE_MAX_MS,
        pipelining: 1,
        // The origin is always an IP literal here, so the parent proxy is asked for exactly that address.
        connect: (opts, callback) => {
          const ip = opts.hostname.replace(/^\[|\]$/g, '');
          const port = Number(opts.port) || 80;
          if (isRedialOfAborted(ip, port)) {
            callback(NOT_REDIALLED, null);
            return;
          }
          dial({ ip, port, upstream, timeoutMs, flow: exchangeDialling(ip, port)?.flowOf(), via, names }).then(
            (socket: Socket) => {
              const early = spokeFirst(socket, ip, port, upstream);
              if (early !== null) {
                callback(early, null);
                return;
              }
              adoptOriginReads(socket);
              callback(null, socket);
              mendReasonPhrases(socket);
            },
            (err: Error) => callback(err, null),
          );
        },
      });
      agent.on('disconnect', onOriginDisconnect);
      this.viaUpstream.set(upstream, agent);
    }
    return agent;
  }

  /**
   * After a reload: the Agent of every parent URL `isNamed` refuses is closed, gracefully (undici
   * `close()`: its requests in flight finish, its idle pooled connections to the parent close now),
   * and the next request through that URL, if any (a flow admitted under the policy before), gets a
   * new one. Before, each was kept for the process's life, and its pooled connections, logged in
   * with the old credentials, until their keep-alive ran out (up to 8 s).
   */
  keepOnly(isNamed: (upstream: string) => boolean): void {
    for (const [upstream, agent] of this.viaUpstream) {
      if (isNamed(upstream)) continue;
      this.viaUpstream.delete(upstream);
      this.retire(agent);
    }
  }

  private retune(connectTimeoutMs: number): void {
    const old = [this.direct, ...this.viaUpstream.values()];
    this.connectTimeoutMs = connectTimeoutMs;
    this.direct = directAgent(connectTimeoutMs);
    this.viaUpstream.clear();
    for (const agent of old) this.retire(agent);
  }

  /** Close an Agent no longer handed out once its requests in flight have finished. */
  private retire(agent: Agent): void {
    this.closing.add(agent);
    void agent
      .close()
      .catch(() => undefined)
      .finally(() => this.closing.delete(agent));
  }

  /**
   * Close every pooled origin connection once the requests in flight have finished (drain, after
   * its flows have ended). New requests are refused from here on.
   */
  async close(): Promise<void> {
    await Promise.all(this.all().map((a) => a.close().catch(() => undefined)));
  }

  /** Close every origin connection now, aborting any request still in flight (grace expired, tests). */
  async destroy(): Promise<void> {
    await Promise.all(this.all().map((a) => a.destroy().catch(() => undefined)));
  }

  private all(): Agent[] {
    return [this.direct, ...this.viaUpstream.values(), ...this.closing];
  }
}

/**
 * Whether the origin spoke before it was asked: bytes the parent's handshake put back on the socket
 * (they came with its CONNECT answer or its SOCKS5 reply, dial.ts) are the origin's, sent before
 * any request, so they answer nothing (an HTTP/1.1 response answers a request already sent). undici,
 * given a socket already holding them, fails the connection as a bad response without failing the
 * request and dials again at once: one request to a destination that speaks first (an SSH or SMTP
 * banner) made 10,212 connections through the parent in 3 s, the client answered nothing. So the
 * connection is refused here: the socket destroyed, the request 502 upstream-bad-response, as a
 * direct origin's answer that is no HTTP/1.1 is. Null: nothing came early (one length read per
 * connection through a parent; a direct dial's socket is handed over on connect, before the origin
 * can have sent anything).
 */
function spokeFirst(socket: Socket, ip: string, port: number, upstream: string): GatewayError | null {
  const early = socket.readableLength;
  if (early === 0) return null;
  socket.destroy();
  return new GatewayError('EGW_UPSTREAM_BAD_RESPONSE', `origin ${formatAuthority(ip, port)} sent ${early} bytes before the request (through ${parentName(upstream)})`);
}

/**
 * The longest an idle pooled origin connection is kept, whatever the origin's `Keep-Alive: timeout=`
 * says (undici honours up to 600 s by default). Pooled connections are no client's flows and count
 * against no limit, so an origin chosen by a client that answered `timeout=600` kept each one for ten
 * minutes: one client held 19,941 of the gateway's 20,000 descriptors that way (squid's
 * pconn_timeout is 60 s).
 */
export const ORIGIN_KEEPALIVE_MAX_MS = 10_000;

/**
 * undici's connect callback, the socket it is handed reading into reused buffers (http-origin-reads.ts),
 * watched for a reset (http-origin-reset.ts), and its parser keeping a reason phrase read in pieces
 * (http-origin-status.ts).
 */
function readingOwnBuffer(callback: buildConnector.Callback): buildConnector.Callback {
  return (...args) => {
    const socket = args[1];
    if (socket && !(socket instanceof TLSSocket)) adoptOriginReads(socket);
    if (socket) watchOriginReset(socket);
    callback(...args);
    if (socket) mendReasonPhrases(socket);
  };
}

function directAgent(connectTimeoutMs: number): Agent {
  // undici's own connector bounded by a timer of ours (boundedConnector), its socket named to the
  // flow it is opened for (exchangeDialling), so a kill while it connects destroys it. A request
  // whose name has other addresses dials them staggered instead (StaggeredOrigin).
  const connector = boundedConnector(connectTimeoutMs);
  const connect: buildConnector.connector = (opts, undiciCallback) => {
    const callback = readingOwnBuffer(undiciCallback);
    const port = Number(opts.port) || 80;
    if (isRedialOfAborted(opts.hostname, port)) {
      callback(NOT_REDIALLED, null);
      return;
    }
    const exchange = exchangeDialling(opts.hostname, port);
    const alternates = exchange === undefined ? null : exchange.alternates;
    if (alternates !== null) {
      alternates.connect(opts.hostname, port, callback);
      return;
    }
    // Typed void, but undici's connector returns the socket it opened (core/connect.js).
    const socket = connector(opts, callback) as unknown as Socket | undefined;
    if (exchange !== undefined && socket !== undefined) exchange.flowOf().dialling = socket;
    return socket;
  };
  // keepAliveTimeout below typical origin defaults (5 s) so we rarely reuse a socket the origin is closing.
  return new Agent({ connect, keepAliveTimeout: 4000, keepAliveMaxTimeout: ORIGIN_KEEPALIVE_MAX_MS, pipelining: 1 }).on('disconnect', onOriginDisconnect);
}
