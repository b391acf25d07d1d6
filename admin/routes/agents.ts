/**
 * Agent routes: report ingestion (agent scope; sources checked, refusals audited) and the list of
 * agents with their last-seen time.
 */
import { MAX_JSON_VALUES_PER_BATCH } from '../../agent/report.ts';
import { sendError } from '../errors.ts';
import { AgentList, AuthErrors, ErrorBody, IngestResult, ReportBody } from '../schemas.ts';
import type { AdminApp, RouteContext } from '../types.ts';

/** Register the agent routes. */
export function registerAgentRoutes(app: AdminApp, { port }: RouteContext): void {
  app.post(
    '/v1/agents/reports',
    {
      // Accepted reports are telemetry (counted per agent in GET /v1/agents), not operator
      // writes: only refusals go to the audit trail, or it would drown in agent chatter.
      // At most MAX_REPORTS_PER_BATCH reports: a body with more values than those can hold is
      // refused before it is parsed (admin/json-value-budget.ts), not after.
      config: { scope: 'agent', audit: 'refused', maxJsonValues: MAX_JSON_VALUES_PER_BATCH },
      bodyLimit: 4 * 1024 * 1024,
      schema: {
        summary: 'Process attributions from an endpoint agent (SPEC §7)',
        body: ReportBody,
        response: { 200: IngestResult, 400: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => {
      const principal = request.principal;
      const agent = principal?.name ?? 'unknown';
      // Whose sources bind the reporter is its kind's, not its name's (an admin.tokens entry may be
      // named as an identity.agents one).
      const reporter = principal?.scope === 'admin' ? 'admin' : principal?.origin === 'agent' ? 'agent' : 'token';
      const res = port.ingestReports(request.body, agent, request.ip, reporter);
      if (res.ok) {
        reply.send({ accepted: res.accepted, attributed: res.attributed, pending: res.pending, shed: res.shed, ignored: res.ignored, udpRelayPorts: res.udpRelayPorts });
        return;
      }
      if (res.code === 'invalid') {
        request.auditDetail = `invalid report: ${res.errors.length} error(s)`;
        return sendError(reply, 400, 'bad-request', 'invalid agent report', res.errors);
      }
      const ips = [...new Set(res.refused.map((r) => r.localIp))].slice(0, 10);
      const bound = res.boundTo === 'sources' ? 'outside its sources' : `not its own address ${request.ip}`;
      request.auditDetail = `refused: ${agent} reported for ${ips.join(', ')} ${bound}`;
      return sendError(reply, 403, 'forbidden', `agent ${agent} may not report for ${ips.join(', ')}`, { refused: res.refused.slice(0, 100) });
    },
  );

  app.get(
    '/v1/agents',
    {
      config: { scope: 'read' },
      schema: { summary: 'Agents: configured ones and any that reported, with last-seen time and counts', response: { 200: AgentList, ...AuthErrors } },
    },
    (_request, reply) => {
      reply.send({ agents: port.listAgents() });
    },
  );
}
