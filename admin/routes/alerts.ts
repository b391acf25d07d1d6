/**
 * Alert routes: list with filters, and the live Server-Sent Events stream.
 */
import { isValidSince } from '../../gateway/alerts/alert-store.ts';
import { sendError } from '../errors.ts';
import { AlertList, AlertQuery, AuthErrors, ErrorBody, StreamQuery } from '../schemas.ts';
import { answerStreamHead, parseLastEventId, type SseStreams, streamAlerts } from '../sse.ts';
import type { AdminApp, RouteContext } from '../types.ts';

/** Register the alert routes; `open` collects live SSE responses so the app can end them on close. */
export function registerAlertRoutes(app: AdminApp, { port, heartbeatMs, watchToken }: RouteContext, open: SseStreams): void {
  app.get(
    '/v1/alerts',
    {
      config: { scope: 'read' },
      schema: {
        summary: 'Alerts, oldest first: after `since` (event id or ISO time) the first `limit`, else the newest `limit`',
        querystring: AlertQuery,
        response: { 200: AlertList, 400: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => {
      const { since } = request.query;
      if (since !== undefined && !isValidSince(since)) {
        return sendError(reply, 400, 'bad-request', 'since must be an event id or an ISO 8601 time', [
          { path: 'querystring.since', message: 'must be an event id or an ISO 8601 time' },
        ]);
      }
      reply.send(port.listAlerts(request.query));
    },
  );

  app.get(
    '/v1/alerts/stream',
    {
      config: { scope: 'read' },
      schema: {
        summary: 'Server-Sent Events: `event: alert` with `id:` (resume with Last-Event-ID); comment heartbeats',
        querystring: StreamQuery,
        response: { 200: { type: 'string', description: 'text/event-stream: id/event/data frames and heartbeat comments' }, ...AuthErrors },
      },
    },
    (request, reply) => {
      // A HEAD opens no stream: it takes no place in the limits below.
      if (request.method === 'HEAD') return answerStreamHead(reply);
      // Counted per token (its name and where it came from), not per address: one token, one budget.
      const principal = request.principal;
      const token = principal ? `${principal.origin}:${principal.name}` : '';
      const over = open.refusal(token);
      if (over !== null) {
        reply.header('retry-after', '5');
        return sendError(
          reply,
          429,
          'too-many-requests',
          over === 'token' ? 'too many alert streams open with this token (admin.maxStreamsPerToken)' : 'too many alert streams open (admin.maxStreams)',
        );
      }
      const lastEventId = parseLastEventId(request.headers['last-event-id']) ?? request.query.lastEventId ?? null;
      const isAuthorized = watchToken(request.headers.authorization, 'read');
      streamAlerts(port, request, reply, { heartbeatMs, detector: request.query.detector, lastEventId, open, token, isAuthorized });
    },
  );
}
