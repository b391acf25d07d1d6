/**
 * The admin API (SPEC §6): fastify 5 with TypeBox schemas on every route. `buildAdmin` builds the
 * instance and never listens (main.ts does, on 127.0.0.1:9180 by default; tests use inject()).
 *
 * Request path: 1. route lookup → 2. onRequest: token → principal, scope check (401 slowed down per
 * address on repeated failures; 403) and the policy version noted for the audit → 3. schema
 * validation (400 with paths) → 4. handler, talking to the gateway only through the ControlPort →
 * 5. onResponse: writes audited (who, what, when, from where, versions before/after, status).
 */
import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance } from 'fastify';
import type { ControlPort } from '../gateway/control.ts';
import type { AdminTokenConfig, AgentTokenConfig } from '../policy/config.ts';
import { type FailureDelayOptions, generateAdminToken, scopeAllows, TokenAuth } from './auth.ts';
import { installErrorHandlers, sendError } from './errors.ts';
import { OpenApiCollector } from './openapi.ts';
import { registerAgentRoutes } from './routes/agents.ts';
import { registerAlertRoutes } from './routes/alerts.ts';
import { registerFlowRoutes } from './routes/flows.ts';
import { registerPolicyRoutes } from './routes/policy.ts';
import { registerSystemRoutes } from './routes/system.ts';
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
  /** EGRESSGATE_ADMIN_TOKEN or a generated token: admin scope, always accepted. */
  envToken?: string;
  logger?: boolean;
  /** SSE heartbeat period (default 15 s). */
  heartbeatMs?: number;
  /** Slow-down of repeated 401s from one address. */
  failureDelay?: FailureDelayOptions;
  /** Trust X-Forwarded-For from these (fastify `trustProxy`); default: none, the socket address counts. */
  trustProxy?: boolean | string | string[];
}

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const YAML_TYPES = ['text/yaml', 'application/yaml', 'application/x-yaml', 'text/x-yaml'];

/** Build the admin API on a ControlPort (no listen). */
export async function buildAdmin(port: ControlPort, opts: AdminOptions = {}): Promise<FastifyInstance> {
  const app: AdminApp = Fastify({
    logger: opts.logger ?? false,
    trustProxy: opts.trustProxy ?? false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));

  const auth = new TokenAuth({
    tokens: [...(opts.extraTokens ?? [])],
    envToken: opts.envToken,
    credentials: () => port.credentials(),
    failureDelay: opts.failureDelay,
  });
  const ctx: RouteContext = { port, heartbeatMs: opts.heartbeatMs ?? 15_000 };
  const openStreams = new Set<ServerResponse>();
  const openapi = new OpenApiCollector();

  app.decorateRequest('principal', null);
  app.decorateRequest('policyVersionBefore', null);
  app.decorateRequest('auditDetail', null);
  app.addHook('onRoute', openapi.onRoute);
  installErrorHandlers(app);
  for (const type of YAML_TYPES) {
    app.addContentTypeParser(type, { parseAs: 'string' }, (_request, body, done) => done(null, body));
  }

  // 2. authentication and scope
  app.addHook('onRequest', async (request, reply) => {
    const scope = request.routeOptions.config.scope;
    if (scope === undefined || scope === 'none') return;
    const header = request.headers.authorization;
    const principal = auth.authenticate(header);
    if (!principal) {
      const delayMs = auth.recordFailure(request.ip);
      if (delayMs > 0) await sleep(delayMs);
      reply.header('www-authenticate', header ? 'Bearer realm="egressgate", error="invalid_token"' : 'Bearer realm="egressgate"');
      return sendError(reply, 401, 'unauthorized', header ? 'invalid token' : 'a Bearer token is required');
    }
    auth.recordSuccess(request.ip);
    request.principal = principal;
    if (WRITE_METHODS.has(request.method)) request.policyVersionBefore = port.getPolicy().version;
    if (!scopeAllows(principal.scope, scope)) {
      reply.header('www-authenticate', `Bearer realm="egressgate", error="insufficient_scope", scope="${scope}"`);
      return sendError(reply, 403, 'forbidden', `token ${principal.name} has scope ${principal.scope}; this route needs ${scope}`);
    }
  });

  // API answers carry policy and flow data: never cached by a browser or a proxy on the way.
  app.addHook('onSend', async (request, reply) => {
    if (request.url.startsWith('/v1/') || request.url.startsWith('/metrics')) reply.header('cache-control', 'no-store');
    reply.header('x-content-type-options', 'nosniff');
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
    for (const res of [...openStreams]) res.end();
  });

  registerSystemRoutes(app, ctx, openapi);
  registerPolicyRoutes(app, ctx);
  registerFlowRoutes(app, ctx);
  registerAlertRoutes(app, ctx, openStreams);
  registerAgentRoutes(app, ctx);
  await app.ready();
  return app as unknown as FastifyInstance;
}
