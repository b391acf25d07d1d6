/**
 * The admin API's one error shape, `{error, message, details?}` (SPEC §6), and the fastify error
 * and not-found handlers that produce it for everything, validation failures included.
 */
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { httpDate } from '../gateway/listeners/http-date.ts';
import { lingerThenDestroy } from '../gateway/listeners/http-refusal.ts';
import type { RouteMethods } from './route-methods.ts';
import type { AdminApp } from './types.ts';

export type ErrorCode =
  | 'bad-request'
  | 'unauthorized'
  | 'forbidden'
  | 'not-found'
  | 'misdirected-request'
  | 'method-not-allowed'
  | 'precondition-failed'
  | 'payload-too-large'
  | 'uri-too-long'
  | 'request-timeout'
  | 'header-too-large'
  | 'unsupported-media-type'
  | 'invalid-policy'
  | 'too-many-requests'
  | 'not-ready'
  | 'internal';

export interface ErrorBody {
  error: ErrorCode;
  message: string;
  details?: unknown;
}

/** Send an error body with a status. */
export function sendError(reply: FastifyReply, status: number, error: ErrorCode, message: string, details?: unknown): void {
  const body: ErrorBody = details === undefined ? { error, message } : { error, message, details };
  reply.code(status).type('application/json; charset=utf-8').send(body);
}

function codeForStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
      return 'bad-request';
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not-found';
    case 405:
      return 'method-not-allowed';
    case 412:
      return 'precondition-failed';
    case 413:
      return 'payload-too-large';
    case 414:
      return 'uri-too-long';
    case 415:
      return 'unsupported-media-type';
    case 421:
      return 'misdirected-request';
    case 429:
      return 'too-many-requests';
    case 503:
      return 'not-ready';
    default:
      return status >= 500 ? 'internal' : 'bad-request';
  }
}

/**
 * Install the error and not-found handlers on the root instance. `routes` knows each path's methods:
 * a path that exists answered with another method is 405 with `Allow`, one that does not is 404.
 */
export function installErrorHandlers(app: AdminApp, routes: RouteMethods): void {
  app.setErrorHandler((err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    if (err.validation) {
      // Paths as `body.dest` / `querystring.limit`, like the config errors' dotted paths.
      const where = err.validationContext ?? 'request';
      const details = err.validation.map((v) => {
        const params = v.params as { missingProperty?: unknown; additionalProperty?: unknown };
        // The property named, for a missing one and for one the schema does not know.
        const named = v.keyword === 'required' ? params.missingProperty : v.keyword === 'additionalProperties' ? params.additionalProperty : undefined;
        const missing = named === undefined ? '' : String(named);
        const path = `${where}${v.instancePath.replaceAll('/', '.')}${missing ? `.${missing}` : ''}`;
        return { path, message: v.message ?? 'is invalid' };
      });
      return sendError(reply, 400, 'bad-request', err.message, details);
    }
    const status = typeof err.statusCode === 'number' && err.statusCode >= 400 ? err.statusCode : 500;
    if (status >= 500) {
      request.log.error({ err }, 'admin request failed');
      return sendError(reply, status, 'internal', 'internal error');
    }
    return sendError(reply, status, codeForStatus(status), err.message);
  });
  app.setNotFoundHandler((request, reply) => answerNoRoute(request, reply, routes));
}

/** A request no route answers: 405 with `Allow` when the path exists with other methods, else 404. */
export function answerNoRoute(request: FastifyRequest, reply: FastifyReply, routes: RouteMethods): void {
  const path = request.url.split('?')[0] as string;
  const allowed = routes.allowedFor(path);
  if (allowed !== null) {
    reply.header('allow', allowed.join(', '));
    sendError(reply, 405, 'method-not-allowed', `${request.method} is not allowed on ${path} (allowed: ${allowed.join(', ')})`);
    return;
  }
  sendError(reply, 404, 'not-found', `no route ${request.method} ${path}`);
}

/**
 * Whether the router matched a route with an empty parameter (`/v1/flows/` for `/v1/flows/:id`):
 * no route has that path. A trailing slash names no collection either (`/v1/alerts/` is 404, there
 * is no ignoreTrailingSlash), so `/v1/flows/` is 404 as well, not a 400 about `params.id`.
 */
export function hasEmptyParam(request: FastifyRequest): boolean {
  const params = request.params as Record<string, unknown> | undefined;
  if (params === undefined || params === null) return false;
  for (const key in params) if (params[key] === '') return true;
  return false;
}

/** node's parser errors: status, reason phrase, the API's code and message. */
const CLIENT_ERRORS: Record<string, readonly [number, string, ErrorCode, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'Request Timeout', 'request-timeout', 'the request head did not arrive in time (limits.headerTimeoutMs)'],
  HPE_HEADER_OVERFLOW: [431, 'Request Header Fields Too Large', 'header-too-large', 'the request head is too large'],
};
const MALFORMED = [400, 'Bad Request', 'bad-request', 'malformed request'] as const;

/**
 * The admin listener's answer to what node's parser refuses (fastify `clientErrorHandler`): a
 * malformed head, one too large, one not complete in time. In the API's error shape with `Date`
 * and `cache-control: no-store`, the connection closed once the client has read it. fastify's own
 * answered in its shape (`{"error":"Bad Request","message":"Client Error","statusCode":400}`),
 * without Date, and destroyed the socket as it wrote.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE' || socket.destroyed) return;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const [status, reason, error, message] = CLIENT_ERRORS[err.code ?? ''] ?? MALFORMED;
  const body = JSON.stringify({ error, message } satisfies ErrorBody);
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ndate: ${httpDate()}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n${body}`,
  );
  lingerThenDestroy(socket);
}
