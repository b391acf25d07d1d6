/**
 * Health, readiness, metrics, audit, PAC file, OpenAPI document and docs page.
 */
import { Type } from 'typebox';
import type { OpenApiCollector } from '../openapi.ts';
import { renderDocsHtml } from '../openapi.ts';
import { hostHeaderName, requestAuthority } from '../host-check.ts';
import { buildPac, pacProxyAddress } from '../pac.ts';
import { sendError } from '../errors.ts';
import { AuditList, AuditQuerySchema, AuthErrors, ErrorBody, Health } from '../schemas.ts';
import type { AdminApp, RouteContext } from '../types.ts';

const API_VERSION = '1';

/** Register the system routes. */
export function registerSystemRoutes(app: AdminApp, { port }: RouteContext, openapi: OpenApiCollector): void {
  app.get(
    '/healthz',
    { config: { scope: 'none' }, schema: { summary: 'Liveness: the process answers', response: { 200: Health } } },
    (_request, reply) => {
      reply.send({ status: 'ok' });
    },
  );

  app.get(
    '/readyz',
    {
      config: { scope: 'none' },
      schema: { summary: 'Readiness: listeners bound and a policy loaded (503 until then, while draining, and while new flows are refused because the flow log cannot be written)', response: { 200: Health, 503: ErrorBody } },
    },
    (_request, reply) => {
      if (!port.isReady()) return sendError(reply, 503, 'not-ready', 'listeners not bound yet, draining, or the flow log cannot be written');
      reply.send({ status: 'ready' });
    },
  );

  app.get(
    '/metrics',
    {
      config: { scope: 'read' },
      schema: { summary: 'Prometheus text exposition', response: { 200: Type.String(), ...AuthErrors } },
    },
    async (_request, reply) => {
      const registry = port.metrics();
      const text = await registry.metrics();
      reply.type(registry.contentType).send(text);
    },
  );

  app.get(
    '/v1/audit',
    {
      config: { scope: 'read' },
      schema: { summary: 'Every write to the admin API: who, what, when, from where, versions before/after', querystring: AuditQuerySchema, response: { 200: AuditList, ...AuthErrors } },
    },
    (request, reply) => {
      reply.send({ entries: port.listAudit(request.query) });
    },
  );

  app.get(
    '/proxy.pac',
    { config: { scope: 'none' }, schema: { summary: 'Proxy auto-config: everything through the HTTP listener', response: { 200: Type.String() } } },
    (request, reply) => {
      const policy = port.getPolicy();
      // The name the Host check judged (an absolute-form target's authority, else Host), never
      // another: fastify's hostname reads Host even when the target names the authority.
      const authority = requestAuthority(request.originalUrl, request.headers.host);
      const proxy = pacProxyAddress(port.proxyAddress(), (authority === undefined ? null : hostHeaderName(authority)) || null);
      reply.type('application/x-ns-proxy-autoconfig').send(buildPac(policy.config, policy.version, proxy));
    },
  );

  app.get(
    '/openapi.json',
    { config: { scope: 'read' }, schema: { summary: 'This API as an OpenAPI 3.1 document', response: { 200: Type.Unknown(), ...AuthErrors } } },
    (_request, reply) => {
      reply.send(openapi.document(API_VERSION));
    },
  );

  app.get(
    '/docs',
    { config: { scope: 'read' }, schema: { summary: 'This API, readable', response: { 200: Type.String(), ...AuthErrors } } },
    (_request, reply) => {
      reply.type('text/html; charset=utf-8').send(renderDocsHtml(openapi.document(API_VERSION)));
    },
  );
}
