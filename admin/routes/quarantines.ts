/**
 * Quarantine routes: the live quarantines (SPEC §3 `detection.quarantineSec`) and their release by
 * an operator before their time, a false positive (docs/spec-notes.md "Quarantines are listed and
 * released through the admin API").
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ControlPort } from '../../gateway/control.ts';
import { sendError } from '../errors.ts';
import { AuthErrors, ErrorBody, QuarantineKeyParams, QuarantineKeyQuery, QuarantineListSchema, ReleaseResult } from '../schemas.ts';
import type { AdminApp, RouteContext } from '../types.ts';

/** Release `key` (audited with what was released), or 404 when nothing was live under it. */
function answerRelease(port: ControlPort, key: string, request: FastifyRequest, reply: FastifyReply): void {
  const released = port.releaseQuarantine(key);
  const first = released[0];
  if (first === undefined) {
    request.auditDetail = `no quarantine ${key}`;
    sendError(reply, 404, 'not-found', `no live quarantine ${key}`);
    return;
  }
  const kinds = released.map((q) => (q.enforced ? 'enforced' : 'would-be')).join(' and ');
  request.auditDetail = `quarantine ${key} released (${kinds}; ${first.detector}, until ${first.until})`;
  reply.send({ released: true, key, quarantines: released });
}

/** Register the quarantine routes. */
export function registerQuarantineRoutes(app: AdminApp, { port }: RouteContext): void {
  app.get(
    '/v1/quarantines',
    {
      config: { scope: 'read' },
      schema: {
        summary: 'Live quarantines: identity key and parts, since, until, the detector and alert that caused each, enforced or monitor mode\'s would-be',
        response: { 200: QuarantineListSchema, ...AuthErrors },
      },
    },
    (_request, reply) => {
      reply.send(port.listQuarantines());
    },
  );

  app.delete(
    '/v1/quarantines/:key',
    {
      config: { scope: 'admin', audit: 'always' },
      schema: {
        summary: 'Release a quarantine now (the URL-encoded key as listed): the identity\'s next connection is admitted again',
        params: QuarantineKeyParams,
        response: { 200: ReleaseResult, 404: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => answerRelease(port, request.params.key, request, reply),
  );

  // The same for a key longer than the router takes in a path segment (100 characters, 414 there):
  // a long host name, user or process name.
  app.delete(
    '/v1/quarantines',
    {
      config: { scope: 'admin', audit: 'always' },
      schema: {
        summary: 'Release a quarantine now, its key as ?key= (any length; the path form takes keys up to 100 characters)',
        querystring: QuarantineKeyQuery,
        response: { 200: ReleaseResult, 400: ErrorBody, 404: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => answerRelease(port, request.query.key, request, reply),
  );
}
