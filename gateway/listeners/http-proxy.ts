/**
 * The HTTP forward-proxy listener (SPEC §1): absolute-URI requests, `Upgrade`, and `CONNECT` tunnels,
 * on node:http (strict parser; `insecureHTTPParser` stays off). Listening is main.ts's job.
 *
 * Flow of a connection:
 *  0. (plain HTTP listener, via withConnectFront) a whole, plain CONNECT head in the first packet is
 *     parsed by http-connect-front.ts and goes straight to http-connect.ts; a simple absolute-URI
 *     GET or HEAD is served by http-fast-path.ts (steps 3–8 below on the raw socket) for as long as
 *     the connection's requests stay simple; every other connection, or the rest of one, continues
 *     at 1, unread.
 *  1. accept: node's parser reads the head within `limits.headerTimeoutMs` and `limits.maxHeaderBytes`.
 *     Anything it refuses (bad request line, smuggling shapes — CL with TE, duplicate CL, obs-fold,
 *     bad TE —, oversized head, slowloris) lands in `clientError`: 400 / 431 / 408 as JSON, a warn
 *     log line with the parser's reason, and the connection closed. Other connections never notice.
 *     A method it does not know (an extension method, `BREW`) at the start of a connection's bytes,
 *     or of those the fast path handed over, is no refusal: the request comes back to node:http and
 *     on through the steps below (http-extension-method.ts). A request line that is no HTTP one
 *     (`RTSP/1.0`, which node's parser reads as HTTP/1.0) is 400 (http-request-line.ts).
 *     Bytes after a request that closes its connection are dropped there, not refused (onClientError).
 *  2. route by shape: `CONNECT host:port` → http-connect.ts; a request with `Upgrade` → http-upgrade.ts;
 *     everything else must be an absolute `http://` URI (origin-form → 400: we are not an origin).
 *  3. parse the authority (gateway/protocol/authority.ts): one normalised host and port, or 400.
 *  4. a second smuggling guard on what node accepted: CL with TE, several CL, a CL past 2^53 − 1,
 *     a TE that is not exactly chunked, Host twice or of invalid syntax → 400 and close (another
 *     coding before a final chunked, `gzip, chunked`, is a coding we do not implement: 501 and
 *     close); HTTP/0.9 → 400, `HTTP/2.0` in an HTTP/1 request line → 505 and close; an Expect
 *     member other than 100-continue (HTTP/1.1) → 417 and close (expectationFault).
 *  5. admission (gateway/admission.ts): identify (Proxy-Authorization Basic, trusted identity
 *     headers, host inventory, local process) → a Via naming us (a loop of proxies: 508) → limits → resolve once → self-dial guard → policy →
 *     connect-time detectors. A refusal is answered through gateway/reject.ts and its flow is
 *     already closed with the reason. An admitted TRACE or OPTIONS with `Max-Forwards: 0` is
 *     answered here as its final recipient (http-max-forwards.ts) and goes no further.
 *  6. dial exactly the checked address: undici pool pinned to `http://ip:port` (absolute-URI), or
 *     a socket from gateway/upstream/dial.ts (CONNECT, Upgrade); parent proxy if configured.
 *  7. relay with metering: streamed request/response bodies (http-forward.ts) or the tunnel
 *     (gateway/flow/tunnel.ts); backpressure and half-close both ways.
 *  8. close the flow exactly once with its reason; keep-alive client connections go back to step 1
 *     for their next request, which is a new flow.
 */
import { STATUS_CODES, createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http';
import type { Server as NetServer, Socket } from 'node:net';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { type Admitted, admit, type ClientWatch, type Refused } from '../admission.ts';
import { namesUpstream } from '../admission/policy-facts.ts';
import { certSubjectOf } from '../identity/client-cert.ts';
import type { GatewayContext, IdentityClaims } from '../context.ts';
import type { GatewayErrorCode } from '../errors.ts';
import type { Config } from '../../policy/config.ts';
import type { PolicySnapshot, Protocol } from '../../policy/types.ts';
import { askIfReset } from '../flow/socket-reset.ts';
import { mapError } from '../reject.ts';
import { earlierResponses, handleConnect } from './http-connect.ts';
import { wrapWithConnectFront } from './http-connect-front.ts';
import { beginAdmission, connectionProcess, connectionState, endAdmission, expireCachedIdentity, mayCutIdle } from './http-connection-state.ts';
import { createFastPath } from './http-fast-path.ts';
import { type ExtensionMethodOptions, takeExtensionMethod } from './http-extension-method.ts';
import { forwardRequest, OriginAgents } from './http-forward.ts';
import { forwardRequestHeaders, normaliseStrippedName, parseProxyBasic, viaFor, viaNamesUs } from './http-headers.ts';
import { maxForwardsFault, maxForwardsOf, traceEcho } from './http-max-forwards.ts';
import { closeAfterUnreadBody, refusalDetails, sendRefusal, writeRawRefusal } from './http-refusal.ts';
import { announcedLineFault } from './http-request-line.ts';
import { expectationFault, hostHeaderFor, httpVersionFault, isRepeatedField, parseAbsoluteTarget, shapeRefusalCode, smugglingShape } from './http-target.ts';
import { handleUpgrade } from './http-upgrade.ts';

export interface HttpProxyOptions {
  tls?: { cert: string | Buffer; key: string | Buffer; ca?: string | Buffer; requestCert?: boolean };
}

/** What admission reads of a request: an IncomingMessage, or a head the CONNECT fast path parsed. */
export interface RequestHead {
  readonly url?: string | undefined;
  readonly headers: IncomingHttpHeaders;
  /** Names and values as received (IncomingMessage); absent on the CONNECT front's heads, which never repeat a name. */
  readonly rawHeaders?: readonly string[];
  /** The request line's major version (IncomingMessage); absent on the CONNECT front's heads, all HTTP/1.1. */
  readonly httpVersionMajor?: number;
  /** Its minor version, as the major: what our Via says the request was received as (viaFor). */
  readonly httpVersionMinor?: number;
  readonly socket: Socket;
}

/** What the request handlers of one listener share. */
export interface HttpListenerState {
  readonly ctx: GatewayContext;
  readonly listener: 'http' | 'https';
  readonly agents: OriginAgents;
  /**
   * Run admission for a request on this listener. The identity is cached per client connection for
   * the next request on it — not for CONNECT, the last request a connection carries.
   */
  /** `watch`: the CONNECT or Upgrade handler's hold on its client (AdmissionRequest.watch). */
  admitRequest(req: RequestHead, protocol: Protocol, host: string, port: number, watch?: ClientWatch): Promise<Admitted | Refused>;
  /** Identity headers never forwarded (in any underscore spelling: isStrippedName), for the current snapshot. */
  strippedHeaders(snapshot: PolicySnapshot): ReadonlySet<string>;
  /**
   * Why the request's credentials are ambiguous, or null: `Proxy-Authorization` twice
   * (`duplicate-proxy-authorization`), the signed token header twice from any source (a token is
   * believed from anywhere: `duplicate-signed-token`), or the user or host identity header twice
   * from a source trusted for them (`duplicate-identity-header`; from any other source they are
   * ignored and stripped as always). A front proxy and the gateway could each take another of the
   * two, so such a request is refused 400 before admission, as a duplicate Content-Length is. Only
   * a request that carries one of these fields is looked at further.
   */
  repeatedCredential(req: RequestHead): string | null;
}

/**
 * Create the HTTP (or, with `opts.tls`, HTTPS) forward-proxy server for a gateway. The caller
 * listens and closes it, and releases its pooled origin connections with closeOriginPools.
 */
export function createHttpProxy(ctx: GatewayContext, opts: HttpProxyOptions = {}): Server | HttpsServer {
  const limits = ctx.policy.current().config.limits;
  const serverOptions: ServerOptions = {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headerTimeoutMs,
    // The whole-request timeout would cut long uploads; the header timeout and idle timeout cover slow clients.
    requestTimeout: 0,
    // How often node checks header timeouts: often enough that a small headerTimeoutMs is honoured.
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(limits.headerTimeoutMs / 4))),
    keepAliveTimeout: 5000,
    insecureHTTPParser: false,
    // Absolute-URI requests carry their authority; Host is rebuilt from it (RFC 9112 §3.2.2).
    requireHostHeader: false,
    noDelay: true,
  };
  const listener: 'http' | 'https' = opts.tls ? 'https' : 'http';
  const server: Server | HttpsServer = opts.tls
    ? createHttpsServer({
        ...serverOptions,
        allowHalfOpen: true,
        cert: opts.tls.cert,
        key: opts.tls.key,
        ca: opts.tls.ca,
        requestCert: opts.tls.requestCert ?? false,
        rejectUnauthorized: false,
        // The TLS handshake is part of the head a client owes: it has limits.headerTimeoutMs for it
        // (node's own 120 s held a silent or dribbling client's place that long), and the header
        // timeout again, from the handshake's end, for its request head.
        handshakeTimeout: limits.headerTimeoutMs,
      })
    : createHttpServer(serverOptions);
  server.timeout = limits.idleTimeoutMs;
  // Every header field reaches the request (maxHeaderSize bounds them): past node's default of 2000
  // raw entries (~1000 fields) node dropped the rest silently while its parser still framed the body
  // by them, so a Content-Length, Transfer-Encoding, Expect or Connection there went unseen here.
  server.maxHeadersCount = 0;
  // A client's FIN after a whole request is a half-close, not an abort (RFC 9112 §9.6): node:http
  // then marks the response it is answering (or the last one queued) as the connection's last and
  // ends the connection after it, instead of aborting the requests in flight. A FIN mid-request
  // still fails node's parser: clientError, and the request's flow ends `client-reset`. The TLS
  // sockets of the HTTPS listener allow half-open too (allowHalfOpen above), else a client's
  // close_notify and FIN would end our side before the answer.
  // An origin silent for finGraceMs after the FIN ends the flow (http-origin-exchange.ts clientHalfClosed).
  (server as { httpAllowHalfOpen?: boolean }).httpAllowHalfOpen = true;
  // ...but only once the handshake is done. node's TLS socket takes allowHalfOpen from the TCP socket
  // it wraps; half-open during the handshake, a TLS 1.3 client whose FIN came with (or right after)
  // its Finished was never seen to end: the connection, and its place in maxConnectionsPerSource,
  // stayed until limits.headerTimeoutMs (a TLS health check's handshake-then-close held one each).
  // So the TCP socket is not half-open (its TLS socket ends with the FIN) until 'secureConnection'.
  if (opts.tls) {
    server.prependListener('connection', (socket: Socket) => {
      socket.allowHalfOpen = false;
    });
    server.prependListener('secureConnection', (socket: TLSSocket) => {
      socket.allowHalfOpen = true;
    });
  }

  let strippedFor: PolicySnapshot | null = null;
  let stripped: ReadonlySet<string> = new Set();
  let identityNamesFor: PolicySnapshot | null = null;
  let userHeader = '';
  let hostHeader = '';
  /** '' while no signed token header is configured. */
  let signedHeader = '';

  const state: HttpListenerState = {
    ctx,
    listener,
    agents: new OriginAgents(limits.connectTimeoutMs, ctx.via.value, ctx),
    strippedHeaders(snapshot) {
      if (strippedFor !== snapshot) {
        strippedFor = snapshot;
        stripped = new Set(ctx.identity.strippedHeaders(snapshot).map(normaliseStrippedName));
      }
      return stripped;
    },
    repeatedCredential(req) {
      const raw = req.rawHeaders;
      if (raw === undefined) return null;
      const h = req.headers;
      if (h['proxy-authorization'] !== undefined && isRepeatedField(raw, 'proxy-authorization')) return 'duplicate-proxy-authorization';
      const snapshot = ctx.policy.current();
      if (identityNamesFor !== snapshot) {
        identityNamesFor = snapshot;
        userHeader = snapshot.config.identity.headers.user.toLowerCase();
        hostHeader = snapshot.config.identity.headers.host.toLowerCase();
        signedHeader = snapshot.config.identity.headers.signed?.header.toLowerCase() ?? '';
      }
      if (signedHeader !== '' && h[signedHeader] !== undefined && isRepeatedField(raw, signedHeader)) return 'duplicate-signed-token';
      const isRepeated = (h[userHeader] !== undefined && isRepeatedField(raw, userHeader)) || (h[hostHeader] !== undefined && isRepeatedField(raw, hostHeader));
      return isRepeated && ctx.identity.trustsHeadersFrom(req.socket.remoteAddress ?? '', snapshot) ? 'duplicate-identity-header' : null;
    },
    async admitRequest(req, protocol, host, port, watch) {
      const claims = claimsOf(req);
      const isLooped = viaNamesUs(req.headers.via, ctx.via);
      // A CONNECT after absolute-URI requests on the same connection is the same socket: the process
      // attributed to them is its process (the agent reports a socket once).
      if (protocol === 'connect') return admit(ctx, { protocol, listener, claims, destHost: host, destPort: port, server: req.socket, knownProcess: connectionProcess(req.socket), isLooped, watch });
      const snapshot = ctx.policy.current();
      const headerNames = snapshot.config.identity.headers;
      // The signed token is part of the key too: a new token (other user, later expiry) must be re-verified.
      const signedName = headerNames.signed?.header.toLowerCase();
      const key = `${req.headers['proxy-authorization'] ?? ''}\u0000${req.headers[headerNames.user.toLowerCase()] ?? ''}\u0000${req.headers[headerNames.host.toLowerCase()] ?? ''}\u0000${signedName ? (req.headers[signedName] ?? '') : ''}`;
      const connection = connectionState(req.socket);
      // Regression: an expired signed token kept working on a keep-alive connection (the key is the token's text).
      expireCachedIdentity(connection, key, () => ctx.identity.reusableUntilMs(claims, snapshot), ctx.identity.now);
      const cached = connection.identity;
      const reused = cached && cached.key === key && cached.version === snapshot.version ? cached : undefined;
      const identity = reused?.identity;
      // The client waits on the gateway meanwhile: the idle timer does not cut it (mayCutIdle).
      beginAdmission(connection);
      let result: Admitted | Refused;
      try {
        result = await admit(ctx, {
          protocol,
          listener,
          claims,
          destHost: host,
          destPort: port,
          server: req.socket,
          identity,
          // Resolved under the policy running now: its host (a trusted header's, a certificate's) stays.
          ...(reused ? { loginSince: reused.snapshot } : {}),
          isLooped,
          // The process of this connection's earlier request, also when that request was refused (no
          // identity cached) or its credentials changed: an agent report named it after that
          // request was admitted, or named it once for the socket (it reports a socket once).
          knownProcess: connection.lastFlow?.identity.process ?? null,
          watch,
        });
      } finally {
        endAdmission(connection, req.socket);
      }
      if (result.ok && !identity) connection.identity = { key, version: snapshot.version, identity: result.flow.identity, snapshot };
      connection.lastFlow = result.flow;
      return result;
    },
  };

  // A reload may change the limits: new connections get the header size and timeouts in force
  // (node reads server.maxHeaderSize when it sets up each connection's parser); the origin connect
  // timeout follows in OriginAgents.for().
  // Prepended: it must run before node's own connection listener, which sets up the parser.
  let limitsFor = ctx.policy.current();
  // node reads a TLS server's handshake timeout per connection from a property it keeps under a
  // symbol of its own, with no setter: found once here, so a reload reaches new handshakes as it
  // reaches headersTimeout. Without it (another node), the handshake keeps the start's value.
  const handshakeTimeoutKey = opts.tls ? Object.getOwnPropertySymbols(server).find((k) => k.description === 'handshake-timeout') : undefined;
  server.prependListener('connection', () => {
    const snapshot = ctx.policy.current();
    if (snapshot === limitsFor) return;
    limitsFor = snapshot;
    server.headersTimeout = snapshot.config.limits.headerTimeoutMs;
    if (handshakeTimeoutKey !== undefined) (server as unknown as Record<symbol, number>)[handshakeTimeoutKey] = snapshot.config.limits.headerTimeoutMs;
    server.timeout = snapshot.config.limits.idleTimeoutMs;
    (server as { maxHeaderSize?: number }).maxHeaderSize = snapshot.config.limits.maxHeaderBytes;
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    onRequest(state, req, res, false).catch((err: unknown) => internalError(state, res, err));
  });
  // `Expect: 100-continue` (RFC 9110 §10.1.1): node would send 100 Continue before any decision.
  // With this listener it does not: admission runs first, only an admitted request is asked for its
  // body, and a refused one gets its final status without the client ever sending the body.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    onRequest(state, req, res, true).catch((err: unknown) => internalError(state, res, err));
  });
  // Any other Expect (RFC 9110 §10.1.1): node would answer a bare 417 itself, before admission and
  // unlogged. Here the request goes the usual way: a member the gateway cannot meet is the gateway's
  // own 417 (expectationFault), JSON and logged as its other refusals before admission; an Expect
  // with no member at all (`Expect:`, `Expect: ,`) is no expectation, and the request is served.
  // (node asks only for HTTP/1.1 requests; checkContinue may hold another member too: `100-continue, foo`.)
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    onRequest(state, req, res, false).catch((err: unknown) => internalError(state, res, err));
  });
  server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    handleConnect(state, req, socket, head).catch((err: unknown) => {
      ctx.log.error({ err: (err as Error).message }, 'CONNECT handler failed');
      socket.destroy();
    });
  });
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    handleUpgrade(state, req, socket, head).catch((err: unknown) => {
      ctx.log.error({ err: (err as Error).message }, 'Upgrade handler failed');
      socket.destroy();
    });
  });
  // An idle client connection is closed, but not while the gateway admits its request or it waits
  // on a slow origin: those have their own timeouts (DNS: 502, origin: 504), and cutting the client
  // first would hide the answer. A client that stops sending the body of its request is idle
  // (http-forward.ts). One whose body node stopped reading for backpressure never read its reset: it
  // is asked first (askIfReset), so its flow ends `client-reset`, not `idle-timeout`.
  server.on('timeout', (socket: Duplex) => {
    const connection = connectionState(socket);
    if (!mayCutIdle(connection)) return;
    askIfReset(socket, (isReset) => {
      if (!isReset) connection.isTimedOut = true;
      socket.destroy();
    });
  });
  // A request with a method node's parser does not know comes back to it as one it does (http-extension-method.ts).
  const extension: ExtensionMethodOptions = {
    log: ctx.log,
    get limits() {
      return ctx.policy.current().config.limits;
    },
    reattach: (socket) => server.emit(opts.tls ? 'secureConnection' : 'connection', socket),
  };
  server.on('clientError', (err: NodeJS.ErrnoException & { reason?: string }, socket: Duplex) => onClientError(ctx, err, socket, extension));
  // No 'close' handler releases the origin pools: the plain server never listens itself (the front
  // does), so its 'close' comes at once on close(), while requests are still in flight. Whoever
  // closes the server closes the pools (closeOriginPools), when the requests on them have ended.
  states.set(server, state);
  return server;
}

const states = new WeakMap<Server | HttpsServer, HttpListenerState>();

/**
 * Close the origin connection pools of a server made by createHttpProxy: gracefully (undici
 * `close()`: requests still in flight finish first), and at once (`destroy()`, aborting what is
 * left) when that takes longer than `graceMs`; 0 destroys them now. After it, the server's
 * absolute-URI requests cannot be sent.
 */
export async function closeOriginPools(server: Server | HttpsServer, graceMs: number): Promise<void> {
  const state = states.get(server);
  if (!state) return;
  if (graceMs > 0) {
    let timer: NodeJS.Timeout | undefined;
    const isClosed = await Promise.race([
      state.agents.close().then(() => true),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(false), graceMs);
      }),
    ]);
    clearTimeout(timer);
    if (isClosed) return;
  }
  await state.agents.destroy();
}

/**
 * After a reload: close the pooled parent proxy connections of a server made by createHttpProxy
 * whose parent URL `config` no longer names (OriginAgents.keepOnly; requests in flight on them finish).
 */
export function pruneOriginPools(server: Server | HttpsServer, config: Readonly<Config>): void {
  states.get(server)?.agents.keepOnly((upstream) => namesUpstream(config, upstream));
}

/**
 * The server to listen on for a plain-HTTP proxy made by createHttpProxy: the CONNECT fast path
 * (http-connect-front.ts) in front of it. Connections it does not take go to `server` unchanged.
 */
export function withConnectFront(server: Server): NetServer {
  const state = states.get(server);
  if (!state) throw new Error('withConnectFront: not a server made by createHttpProxy');
  const { ctx } = state;
  const fast = createFastPath(state);
  return wrapWithConnectFront(server, {
    log: ctx.log,
    limits: () => ctx.policy.current().config.limits,
    onConnect: (head, socket, rest) => {
      handleConnect(state, head, socket, rest).catch((err: unknown) => {
        ctx.log.error({ err: (err as Error).message }, 'CONNECT handler failed');
        socket.destroy();
      });
    },
    takeRequest: (socket, first, handOver) => fast.take(socket, first, handOver),
    onClose: () => fast.closeIdle(),
  });
}

/** Absolute-URI request: steps 2–8. `expectsContinue`: the client waits for 100 before its body. */
async function onRequest(state: HttpListenerState, req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> {
  const { ctx } = state;
  const connection = connectionState(req.socket);
  // Behind a 429 on this connection: dropped unanswered (the connection ends after the 429).
  if (connection.isShedding) return;
  const target = parseAbsoluteTarget(req.url ?? '');
  // The first fault in the order the CONNECT path and the first-line check judge: the request line's
  // protocol and version, the target, then the header fields; the answer and the log name that one.
  // announcedLineFault first, while node:http is still announcing the request (RTSP/1.0 reads as 1.0).
  const lineFault = announcedLineFault(req) ?? httpVersionFault(req.httpVersionMajor);
  const shape =
    lineFault ??
    (target.ok ? (smugglingShape(req) ?? state.repeatedCredential(req) ?? maxForwardsFault(req.method, req.headers['max-forwards'], req.rawHeaders) ?? expectationFault(req)) : null);
  if (!target.ok || shape) {
    const why = shape ?? (target.ok ? null : target.reason);
    const code = shape ? shapeRefusalCode(shape) : 'EGW_BAD_REQUEST';
    ctx.log.warn({ client: req.socket.remoteAddress, method: req.method, code, why }, 'bad proxy request refused');
    sendRefusal(res, mapError(code), { flowId: null, isBlock: false }, true);
    return;
  }
  // Pipelined requests are admitted one after another, so a 429 stops the ones behind it before
  // they are admitted (node:http announces them all as soon as it has parsed them).
  // One whose client left while those before it were admitted is dropped too: nobody waits for it.
  const admitNow = (): Promise<Admitted | Refused> | null =>
    connection.isShedding || req.socket.destroyed ? null : state.admitRequest(req, 'http', target.host, target.port);
  const earlier = connection.admitting;
  const admission = earlier === null ? admitNow() : earlier.then(admitNow, admitNow);
  if (admission === null) return;
  connection.admitting = admission;
  let result: Admitted | Refused | null;
  try {
    result = await admission;
  } finally {
    if (connection.admitting === admission) connection.admitting = null;
  }
  if (result === null) return;
  if (!result.ok) {
    // A 429 is the connection's last answer: a client over its rate gets one refusal per connection,
    // not one per request it pipelined (each a flow, a record and an answer).
    if (result.reject.status === 429) connection.isShedding = true;
    // While draining this connection carries no further request (as the fast path's answers say).
    sendRefusal(res, result.reject, refusalDetails(result), !req.complete || ctx.isDraining() || connection.isShedding);
    return;
  }
  // TRACE or OPTIONS with Max-Forwards (RFC 9110 §7.6.2): at 0 the gateway is the final recipient
  // and answers itself, admitted like any request but never forwarded; above it, one hop less.
  const forwards = maxForwardsOf(req.method, req.headers['max-forwards']);
  if (forwards === 0) {
    answerAsFinalRecipient(state, result, req, res);
    return;
  }
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  if (expectsContinue && hasBody) res.writeContinue();
  const headers = forwardRequestHeaders(req.rawHeaders, {
    host: hostHeaderFor(target.host, target.port),
    stripped: state.strippedHeaders(result.snapshot),
    maxForwards: forwards === null ? null : forwards - 1,
    via: viaFor(ctx.via, req.httpVersionMajor, req.httpVersionMinor),
  });
  forwardRequest(ctx, state.agents, result, req, res, { path: target.path, headers, hasBody });
}

/**
 * Answer an admitted TRACE or OPTIONS whose Max-Forwards is 0 as its final recipient: TRACE with its
 * request reflected (`message/http`, less credentials, cookies and identity headers), OPTIONS with
 * 200 and no content. Nothing reaches the destination: the flow closes `closed` with no bytes. A
 * request body (which TRACE must not have) is not read: the connection closes (lingering) after the answer.
 */
function answerAsFinalRecipient(state: HttpListenerState, admitted: Admitted, req: IncomingMessage, res: ServerResponse): void {
  const { flow, snapshot } = admitted;
  if (flow.state === 'active') {
    // Nothing dialled: not connected and no Community ID. Closed `closed`, the detectors fold it as
    // neither a connection nor a failed attempt (outcomeOfEnded: `blocked`, counted nowhere).
    state.ctx.flows.markAnsweredHere(flow);
    state.ctx.flows.close(flow, 'closed');
  }
  const isLast = !req.complete || state.ctx.isDraining();
  const headers: string[] = [];
  if (isLast) headers.push('connection', 'close');
  // Its body unread, the connection ends lingering, as a refusal's (closeAfterUnreadBody).
  if (!req.complete) closeAfterUnreadBody(req, res);
  if (req.method === 'TRACE') {
    const body = traceEcho(`${req.method} ${req.url ?? ''} HTTP/${req.httpVersion}`, req.rawHeaders, state.strippedHeaders(snapshot));
    res.writeHead(200, STATUS_CODES[200], [...headers, 'content-type', 'message/http', 'content-length', String(Buffer.byteLength(body, 'latin1'))]);
    res.end(body, 'latin1');
    return;
  }
  res.writeHead(200, STATUS_CODES[200], [...headers, 'content-length', '0']);
  res.end();
}

/** Identity claims of a request: client address, Proxy-Authorization Basic, headers, TLS client cert. */
export function claimsOf(req: RequestHead): IdentityClaims {
  const basic = parseProxyBasic(req.headers['proxy-authorization']);
  const socket = req.socket as Partial<TLSSocket> & typeof req.socket;
  let certSubject: string | null = null;
  if (socket.encrypted && socket.authorized && typeof socket.getPeerCertificate === 'function') {
    // CN, else a DNS/email/URI subjectAltName (gateway/identity/client-cert.ts).
    certSubject = certSubjectOf(socket as TLSSocket);
  }
  return {
    clientIp: req.socket.remoteAddress ?? '',
    clientPort: req.socket.remotePort ?? 0,
    username: basic?.username ?? null,
    password: basic?.password ?? null,
    headers: req.headers,
    certSubject,
  };
}

const PARSER_ERRORS: Record<string, GatewayErrorCode> = {
  HPE_HEADER_OVERFLOW: 'EGW_HEADERS_TOO_LARGE',
  ERR_HTTP_REQUEST_TIMEOUT: 'EGW_HEADER_TIMEOUT',
  ERR_HTTP_HEADERS_TIMEOUT: 'EGW_HEADER_TIMEOUT',
};

/** Parser and timeout failures: answer once, log the reason, close. Never throws. */
function onClientError(ctx: GatewayContext, err: NodeJS.ErrnoException & { reason?: string }, socket: Duplex, extension: ExtensionMethodOptions): void {
  // Bytes after a request that said `Connection: close` (or an HTTP/1.0 one without keep-alive):
  // the request before them is whole and valid, and is answered, `connection: close`; what came
  // after it is dropped unread (RFC 9112 §9.6: no further request is processed), as on the fast
  // path. node's parser refuses each such chunk: nothing is answered, cut or logged for it (node
  // ends the connection after that answer). Before, the request got a 400 in place of its answer,
  // or its answer was cut, although its origin had it.
  if (err.code === 'HPE_CLOSED_CONNECTION') return;
  const connection = connectionState(socket);
  if (connection.isRefusalOwed) return;
  // An extension method (BREW, FOO): forwarded as any request, not refused.
  if (takeExtensionMethod(err, socket as Socket, extension)) return;
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
    socket.destroy();
    return;
  }
  // The HTTPS listener: a TLS failure (no handshake within limits.headerTimeoutMs, bytes that are no
  // ClientHello, a protocol version or ALPN refused) leaves no TLS connection to answer on: no HTTP
  // refusal, which would have gone out as plain text or lingered; logged with the reason, closed.
  if (err.code?.startsWith('ERR_SSL_') || err.code?.startsWith('ERR_TLS_')) {
    const tlsCode: GatewayErrorCode = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'EGW_HEADER_TIMEOUT' : 'EGW_BAD_REQUEST';
    ctx.log.warn({ client: (socket as Duplex & { remoteAddress?: string }).remoteAddress, code: tlsCode, tls: err.code, why: err.reason ?? err.message }, 'client TLS refused');
    socket.destroy();
    return;
  }
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const code = PARSER_ERRORS[err.code ?? ''] ?? 'EGW_BAD_REQUEST';
  const net = socket as Duplex & { remoteAddress?: string; _httpMessage?: { headersSent?: boolean } | null; parser?: { incoming?: IncomingMessage | null } | null };
  // The parser was reading a request's body (its chunks or trailers): the refusal is that request's.
  const isBodyRefused = net.parser?.incoming?.complete === false;
  // The head of a request pipelined behind others (the last request node announced is whole) is
  // refused while their answers are still owed: they are answered first, whole, and its refusal
  // follows, the connection's last answer (none after a 429 or another last answer). The requests
  // before it are no part of its error. Before, the 400 went out in their place, or cut the answer
  // under way, and a request still in admission was recorded `bad-request` and never sent.
  const owed = isBodyRefused ? null : earlierResponses(socket);
  if (owed !== null) {
    connection.isRefusalOwed = true;
    ctx.log.warn({ client: net.remoteAddress, code, parser: err.code, why: err.reason ?? err.message }, 'client request refused');
    void owed.then(() => {
      if (!connection.isShedding && socket.writable) writeRawRefusal(socket, mapError(code), { flowId: null, isBlock: false });
    });
    return;
  }
  // Malformed bytes (not an oversized or late head, nor a FIN mid-request: HPE_INVALID_EOF_STATE is
  // a client that stopped, its flow `client-reset`): a request whose body the parser was reading ends
  // `bad-request`, and one still in admission is never sent (http-forward.ts). So does one whose
  // trailer section is over maxHeaderBytes (431): the parser was reading its body, the request can
  // never be sent whole. Before, it was dialled anyway and recorded `client-reset`.
  if (err.code !== 'HPE_INVALID_EOF_STATE' && (code === 'EGW_BAD_REQUEST' || (isBodyRefused && code === 'EGW_HEADERS_TOO_LARGE'))) connection.isMalformed = true;
  ctx.log.warn({ client: net.remoteAddress, code, parser: err.code, why: err.reason ?? err.message }, 'client request refused');
  // A response already under way cannot be replaced by an error status: just cut the connection.
  if (net._httpMessage?.headersSent) {
    socket.destroy();
    return;
  }
  writeRawRefusal(socket, mapError(code), { flowId: null, isBlock: false });
}

function internalError(state: HttpListenerState, res: ServerResponse, err: unknown): void {
  state.ctx.log.error({ err: (err as Error).message }, 'proxy request handler failed');
  sendRefusal(res, mapError('EGW_DIAL_UNREACHABLE'), { flowId: null, isBlock: false }, true);
}
