/**
 * Flow routes: list with filters and paging, one flow, kill a live flow (closeReason "admin").
 */
import { sendError } from '../errors.ts';
import { AuthErrors, ErrorBody, FlowList, FlowQuery, FlowRecordSchema, IdParams, KillResult } from '../schemas.ts';
import type { AdminApp, RouteContext } from '../types.ts';

/** Register the flow routes. */
export function registerFlowRoutes(app: AdminApp, { port }: RouteContext): void {
  app.get(
    '/v1/flows',
    {
      config: { scope: 'read' },
      schema: {
        summary: 'Flows, newest first (live ones before closed ones); filters; paging with `next` (as `after`), or `offset`',
        querystring: FlowQuery,
        response: { 200: FlowList, 400: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => {
      const page = port.listFlows(request.query);
      if (!page.ok) return sendError(reply, 400, 'bad-request', page.message, [{ path: 'querystring.after', message: page.message }]);
      reply.send({ flows: page.flows, count: page.flows.length, next: page.next });
    },
  );

  app.get(
    '/v1/flows/:id',
    {
      config: { scope: 'read' },
      schema: { summary: 'One flow, live or recently closed', params: IdParams, response: { 200: FlowRecordSchema, 404: ErrorBody, ...AuthErrors } },
    },
    (request, reply) => {
      const flow = port.getFlow(request.params.id);
      if (!flow) return sendError(reply, 404, 'not-found', `no flow ${request.params.id}`);
      reply.send(flow);
    },
  );

  app.delete(
    '/v1/flows/:id',
    {
      config: { scope: 'admin', audit: 'always' },
      schema: {
        summary: 'Kill a live flow now: both sides are reset, the record says closeReason "admin"',
        params: IdParams,
        response: { 200: KillResult, 404: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => {
      const id = request.params.id;
      request.auditDetail = `flow ${id}`;
      if (!port.killFlow(id)) {
        const known = port.getFlow(id);
        return sendError(reply, 404, 'not-found', known ? `flow ${id} is not live (${known.closeReason ?? 'closed'})` : `no live flow ${id}`);
      }
      reply.send({ killed: true, flow: port.getFlow(id) });
    },
  );
}
