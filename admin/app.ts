/**
 * The admin API (SPEC §6): fastify 5 with TypeBox schemas on every route. `buildAdmin` builds the
 * instance and never listens (main.ts does, on 127.0.0.1:9180 by default; tests use inject()).
 *
 * Request path: 0. connection: at most admin.maxConnectionsPerSource open per address (429 and
 * closed) → 1. route lookup → 2. onRequest: one Host (400 for two), its name (421, DNS rebinding), then token →
 * principal (a request no route answers too: its 404 / 405 only after a valid token), scope check (401 slowed down per address on repeated failures, 429 unchecked while
 * the address is locked out; 403) and the policy version noted for the audit → 3. schema
 * validation (400 with paths) → 4. handler, talking to the gateway only through the ControlPort →
 * 5. onResponse: writes audited (who, what, when, from where, versions before/after, status).
 */
import type { ServerOptions } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { ControlPort } from '../gateway/control.ts';
import { isRepeatedField } from '../gateway/listeners/http-target.ts';
import type { AdminTokenConfig, AgentTokenConfig } from '../policy/config.ts';
import { duplicateJsonKeys } from '../policy/json-duplicate-keys.ts';
import { type FailureDelayOptions, generateAdminToken, type RequiredScope, scopeAllows, TokenAuth } from './auth.ts';
import { AdminConnections } from './connection-limit.ts';
import { answerClientError, answerNoRoute, hasEmptyParam, installErrorHandlers, sendError } from './errors.ts';
import { exceedsJsonValues } from './json-value-budget.ts';
import { RouteMethods } from './route-methods.ts';
import { absoluteForm, HostCheck, requestAuthority } from './host-check.ts';
import { OpenApiCollector } from './openapi.ts';
import { registerAgentRoutes } from './routes/agents.ts';
import { registerAlertRoutes } from './routes/alerts.ts';
import { registerFlowRoutes } from './routes/flows.ts';
import { registerPolicyRoutes } from './routes/policy.ts';
import { registerQuarantineRoutes } from './routes/quarantines.ts';
import { registerSystemRoutes } from './routes/system.ts';
import { SseStreams } from './sse.ts';
import { ValidateBudget } from './validate-budget.ts';
import type { AdminApp, RouteContext } from './types.ts';

export { generateAdminToken };

export interface AdminOptions {
  /**
   * The config's admin / agent tokens at start-up. Accepted for the composition root's
   * convenience but superseded: the live policy's `admin.tokens` and `identity.agents` are read
   * from the port on every policy version, so a PUT that revokes a token revokes it.
   */
  tokens?: readonly AdminTokenConfig[];
  agents?: readonly AgentTokenConfig[];
  /** Tokens accepted whatever the policy says (besides envToken). */
  extraTokens?: readonly AdminTokenConfig[];
  /** EGRESSGATE_ADMIN_TOKEN: admin scope, always accepted (audited as `env`). */
  envToken?: string;
  /** The token `serve` generated because none was configured: admin scope, always accepted (audited as `generated`). */
  generatedToken?: string;
  logger?: boolean;
  /** SSE heartbeat period (default 15 s). */
  heartbeatMs?: number;
  /** Slow-down of repeated 401s from one address. */
  failureDelay?: FailureDelayOptions;
  /** Trust X-Forwarded-For from these (fastify `trustProxy`); default: none, the socket address counts. */
  trustProxy?: boolean | string | string[];
  /**
   * `limits.headerTimeoutMs` as it is now: a connection whose request head is not complete by then
   * (one that sends nothing included) gets 408 and is closed, as on the proxy listeners. Absent:
   * node's own (60 s, checked every 30 s).
   */
  headerTimeoutMs?: () => number;
}

/**
 * node:http's header timeout for the admin listener, checked often enough that a small one is
 * honoured (as the proxy listener does). The whole-request timeout stays off: a policy upload may be slow.
 */
function headerTimeoutOptions(ms: number): ServerOptions {
  return { headersTimeout: ms, requestTimeout: 0, connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(ms / 4))) };
}

/**
 * How long an idle keep-alive connection stays open after its last answer: node's own default.
 * fastify's is 72 s, so an idle client held its place (admin.maxConnectionsPerSource) and a socket
 * that long; a dashboard or an agent that polls more rarely than this reconnects. An SSE stream is
 * an answer under way, not idle: this does not cut it.
 */
export const ADMIN_KEEP_ALIVE_TIMEOUT_MS = 5_000;

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const YAML_TYPES = ['text/yaml', 'application/yaml', 'application/x-yaml', 'text/x-yaml'];

/** Build the admin API on a ControlPort (no listen). */
export async function buildAdmin(port: ControlPort, opts: AdminOptions = {}): Promise<FastifyInstance> {
  const app: AdminApp = Fastify({
    logger: opts.logger ?? false,
    trustProxy: opts.trustProxy ?? false,
    keepAliveTimeout: ADMIN_KEEP_ALIVE_TIMEOUT_MS,
    // A closed schema refuses what it does not know (fastify's default strips it silently: a
    // mistyped `usr` in an evaluate body was dropped and the dry run answered for nobody).
    ajv: { customOptions: { removeAdditional: false } },
    ...(opts.headerTimeoutMs ? { http: headerTimeoutOptions(opts.headerTimeoutMs()) } : {}),
    // What the router refuses before any route (a bad percent-escape, a too long path segment) is
    // answered like a request no route has: the Host check, then a token, then the error, in the
    // API's shape. fastify's own answered anyone, in its shape.
    // fastify runs no hooks for these replies: the onSend headers are set here.
    frameworkErrors: (err, request, reply) => {
      setAnswerHeaders(reply, true);
      void gate(request, reply, undefined).then((passed) => {
        if (passed) sendError(reply, err.statusCode === 414 ? 414 : 400, err.statusCode === 414 ? 'uri-too-long' : 'bad-request', err.message);
      });
    },
    clientErrorHandler: answerClientError,
    // An absolute-form target is answered by its path, as the router already routed it: the
    // no-store rule, a 405's Allow and the audit's path read `request.url` as a path.
    rewriteUrl: (req) => {
      const url = req.url ?? '/';
      return absoluteForm(url)?.path ?? url;
    },
  }).withTypeProvider<TypeBoxTypeProvider>();
  const headerTimeoutMs = opts.headerTimeoutMs;
  if (headerTimeoutMs) {
    // A reload may change it: each new connection gets the one in force (node reads it per check).
    app.server.prependListener('connection', () => {
      app.server.headersTimeout = headerTimeoutMs();
    });
  }
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));

  const auth = new TokenAuth({
    tokens: [...(opts.extraTokens ?? [])],
    envToken: opts.envToken,
    generatedToken: opts.generatedToken,
    credentials: () => port.credentials(),
    failureDelay: opts.failureDelay,
    lockout: () => {
      const a = port.adminSettings();
      return { maxFailuresPerMinute: a.maxAuthFailuresPerSource, lockoutMs: a.authLockoutSec * 1000 };
    },
  });
  // A read token's policy validations: one at a time, at most a fifth of the event loop (validate-budget.ts).
  const validateBudget = new ValidateBudget();
  const ctx: RouteContext = {
    port,
    heartbeatMs: opts.heartbeatMs ?? 15_000,
    keepsAdmin: (config) => {
      const issue = auth.lockoutOf(config);
      return [...(issue ? [issue] : []), ...auth.repeatsOf(config)];
    },
    repeatsOutside: (config) => auth.repeatsOf(config),
    watchToken: (header, need) => auth.watch(header, need),
    validateBudget,
  };
  const openStreams = new SseStreams(() => port.adminSettings());
  // A policy swap may revoke a token: its open alert streams end then, not at the next heartbeat.
  const unsubscribeCredentials = port.subscribeCredentials(() => openStreams.recheckAll());
  const connections = new AdminConnections(() => port.adminSettings().maxConnectionsPerSource);
  const hosts = new HostCheck(() => port.adminSettings().allowedHosts);
  let hostRefused = 0;
  port.attachAdminStats(() => ({
    authFailuresTotal: auth.stats.failuresTotal,
    authLockedOutTotal: auth.stats.lockedOutTotal,
    authLockoutsTotal: auth.stats.lockoutsTotal,
    connectionsRefusedTotal: connections.refusedTotal,
    hostRefusedTotal: hostRefused,
    validateRefusedTotal: validateBudget.refusedTotal,
    streamsRefusedPerToken: openStreams.refusedPerToken,
    streamsRefusedTotal: openStreams.refusedTotal,
    streamsActive: openStreams.size,
  }));
  // Before node:http's own connection handling: an address over its limit is never parsed.
  connections.gate(app.server);
  const openapi = new OpenApiCollector();

  app.decorateRequest('principal', null);
  app.decorateRequest('policyVersionBefore', null);
  app.decorateRequest('auditDetail', null);
  app.decorateRequest('jsonText', null);
  const routeMethods = new RouteMethods();
  app.addHook('onRoute', openapi.onRoute);
  app.addHook('onRoute', routeMethods.onRoute);
  installErrorHandlers(app, routeMethods);
  for (const type of YAML_TYPES) {
    app.addContentTypeParser(type, { parseAs: 'string' }, (_request, body, done) => done(null, body));
  }
  // fastify's own JSON parser (prototype poisoning refused as before), the text kept beside it: a
  // parsed object no longer shows a key written twice, which a policy write must refuse.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    // A route's budget of values is checked before JSON.parse, whose cost follows their number:
    // 4 MiB of `[{},{},…]` held the event loop the proxies share for hundreds of milliseconds.
    const maxValues = request.routeOptions.config.maxJsonValues;
    if (maxValues !== undefined && exceedsJsonValues(body as string, maxValues)) {
      request.auditDetail = `body refused unparsed: more than ${maxValues} JSON values`;
      done(Object.assign(new Error(`the JSON body holds more values than this route takes (at most ${maxValues} of {, [ and , outside strings)`), { statusCode: 413 }), undefined);
      return;
    }
    request.jsonText = body as string;
    parseJson(request, body as string, done);
  });

  // A JSON body with a key written twice is refused on every route (400, the key's path in details),
  // as the policy writes refuse one in their own terms: JSON.parse kept the last value, so
  // `{"mode":"enforce","mode":"monitor"}` switched to monitor where a front reading the first saw
  // enforce. Before the schema, so what it checks is what was sent. One pass over the body's text.
  app.addHook('preValidation', async (request, reply) => {
    if (request.jsonText === null || request.routeOptions.config.ownsRepeatedKeys === true) return;
    const repeated = duplicateJsonKeys(request.jsonText);
    if (repeated.length === 0) return;
    const details = repeated.map((e) => ({ path: e.path === '(root)' ? 'body' : `body.${e.path}`, message: e.message }));
    sendError(reply, 400, 'bad-request', `the JSON body writes a key twice (${details[0]?.path})`, details);
  });

  // A body is read as UTF-8, the only encoding JSON exchanged between systems may have (RFC 8259
  // §8.1; YAML is read the same way): one that says another charset is refused before it is read,
  // not decoded wrongly (latin-1 bytes read as UTF-8) or answered as malformed JSON.
  app.addHook('preParsing', async (request, reply, payload) => {
    const charset = foreignCharset(request.headers['content-type']);
    if (charset !== null && hasBody(request)) {
      sendError(reply, 415, 'unsupported-media-type', `a request body must be UTF-8 (RFC 8259 §8.1), not charset ${charset}`);
    }
    return payload;
  });

  // 2. Host name (every route, the token-free ones first of all), authentication and scope.
  // `scope` undefined: a request no route answers, which needs a valid token of any scope.
  // Resolves false when it has answered the request (421, 429, 401, 403).
  async function gate(request: FastifyRequest, reply: FastifyReply, scope: RequiredScope | undefined): Promise<boolean> {
    // Host twice is 400 (RFC 9112 §3.2), as on the proxy listeners: node keeps the first, so the
    // check below read one name while a front that goes by the last one had routed by the other.
    if (isRepeatedField(request.raw.rawHeaders, 'host')) {
      sendError(reply, 400, 'bad-request', 'more than one Host field');
      return false;
    }
    // Authorization twice likewise (a singleton field, RFC 9110 §11.6.2): node keeps the first, and a
    // front that checks the last would have passed a request on under a token this gate never saw.
    if (isRepeatedField(request.raw.rawHeaders, 'authorization')) {
      sendError(reply, 400, 'bad-request', 'more than one Authorization field');
      return false;
    }
    // An absolute-form target names the authority; Host is then ignored (RFC 9112 §3.2.2).
    if (!hosts.accepts(requestAuthority(request.originalUrl, request.headers.host), request.socket.localAddress)) {
      hostRefused++;
      sendError(reply, 421, 'misdirected-request', 'this admin API does not answer to that Host name (admin.allowedHosts)');
      return false;
    }
    if (scope === 'none') return true;
    const lockedSec = auth.lockedOutFor(request.ip);
    if (lockedSec > 0) {
      // No token is compared while the address is locked out, a good one neither.
      reply.header('retry-after', String(lockedSec));
      sendError(reply, 429, 'too-many-requests', 'too many bad tokens from this address; try again later (admin.maxAuthFailuresPerSource)');
      return false;
    }
    const header = request.headers.authorization;
    const principal = auth.authenticate(header);
    if (!principal) {
      const delayMs = auth.recordFailure(request.ip, header !== undefined);
      if (delayMs > 0) await sleep(delayMs);
      reply.header('www-authenticate', header ? 'Bearer realm="egressgate", error="invalid_token"' : 'Bearer realm="egressgate"');
      sendError(reply, 401, 'unauthorized', header ? 'invalid token' : 'a Bearer token is required');
      return false;
    }
    auth.recordSuccess(request.ip);
    request.principal = principal;
    if (WRITE_METHODS.has(request.method)) request.policyVersionBefore = port.getPolicy().version;
    if (scope !== undefined && !scopeAllows(principal.scope, scope)) {
      reply.header('www-authenticate', `Bearer realm="egressgate", error="insufficient_scope", scope="${scope}"`);
      sendError(reply, 403, 'forbidden', `token ${principal.name} has scope ${principal.scope}; this route needs ${scope}`);
      return false;
    }
    return true;
  }
  app.addHook('onRequest', async (request, reply) => {
    // A request no route answers (then 404 or 405 with Allow) needs a valid token too, of any
    // scope: without one it is 401 like every other, so an anonymous client learns neither which
    // paths exist nor which methods they answer (docs/spec-notes.md).
    // A route matched with an empty parameter (`/v1/flows/`) is a path no route has, answered so.
    const emptyParam = !request.is404 && hasEmptyParam(request);
    const noRoute = request.is404 || emptyParam;
    const scope = noRoute ? undefined : (request.routeOptions.config.scope ?? 'none');
    if ((await gate(request, reply, scope)) && emptyParam) answerNoRoute(request, reply, routeMethods);
  });

  // API answers carry policy and flow data, and an error is no content to keep: never cached by a
  // browser or a proxy on the way.
  app.addHook('onSend', async (request, reply) => {
    setAnswerHeaders(reply, reply.statusCode >= 400 || request.url.startsWith('/v1/') || request.url.startsWith('/metrics'));
  });

  // 5. audit every write
  app.addHook('onResponse', async (request, reply) => {
    const config = request.routeOptions.config;
    if (!WRITE_METHODS.has(request.method) || config.scope === undefined) return;
    const mode = config.audit ?? 'always';
    if (mode === 'never' && reply.statusCode < 400) return;
    if (mode === 'refused' && reply.statusCode < 400) return;
    port.audit({
      time: new Date().toISOString(),
      actor: request.principal?.name ?? null,
      scope: request.principal?.scope ?? null,
      method: request.method,
      route: request.routeOptions.url ?? request.url,
      path: request.url.split('?')[0] ?? request.url,
      sourceIp: request.ip,
      beforeVersion: request.policyVersionBefore,
      afterVersion: port.getPolicy().version,
      status: reply.statusCode,
      detail: request.auditDetail,
    });
  });

  app.addHook('preClose', async () => {
    // Live SSE streams would keep the server from closing.
    unsubscribeCredentials();
    openStreams.endAll();
  });

  registerSystemRoutes(app, ctx, openapi);
  registerPolicyRoutes(app, ctx);
  registerFlowRoutes(app, ctx);
  registerAlertRoutes(app, ctx, openStreams);
  registerQuarantineRoutes(app, ctx);
  registerAgentRoutes(app, ctx);
  await app.ready();
  return app as unknown as FastifyInstance;
}

/**
 * The charset a Content-Type names when it is not UTF-8 (`utf-8`, or `us-ascii`, a subset of it),
 * lower case and unquoted; null when it names none or UTF-8. Read only when the field mentions one.
 */
export function foreignCharset(contentType: string | undefined): string | null {
  if (contentType === undefined || !/charset/i.test(contentType)) return null;
  for (const param of contentType.split(';').slice(1)) {
    const eq = param.indexOf('=');
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'charset') continue;
    const value = param.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').toLowerCase();
    return value === 'utf-8' || value === 'us-ascii' ? null : value;
  }
  return null;
}

/** Whether a request carries a body (framed by a length above 0, or chunked). */
function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * The headers of every admin answer: `nosniff` (a JSON or text body is never read as HTML), and
 * `cache-control: no-store` where `isNoStore`. Set by the onSend hook, and for the router's refusals
 * (frameworkErrors), which fastify answers without running hooks. node's parser refusals
 * (answerClientError), the connection limit's 429 and the alert stream write the same on their own.
 */
function setAnswerHeaders(reply: FastifyReply, isNoStore: boolean): void {
  if (isNoStore) reply.header('cache-control', 'no-store');
  reply.header('x-content-type-options', 'nosniff');
}
