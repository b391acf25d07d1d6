/**
 * Policy and mode routes: GET/PUT /v1/policy (version + ETag, If-Match), validate, evaluate,
 * history, rollback, GET/PUT /v1/mode.
 */
import type { ConfigIssue, PolicyView, WriteOutcome } from '../../gateway/control.ts';
import { isNoPolicyText } from '../../policy/empty-policy.ts';
import { duplicateJsonKeys } from '../../policy/json-duplicate-keys.ts';
import { sendError } from '../errors.ts';
import { redactConfig } from '../redact.ts';
import {
  AuthErrors,
  ErrorBody,
  EvaluateBody,
  EvaluateResult,
  HistoryList,
  ModeBody,
  ModeViewSchema,
  PolicyInput,
  PolicyViewSchema,
  ValidateResult,
  VersionParams,
} from '../schemas.ts';
import type { AdminApp, RouteContext } from '../types.ts';
import type { ValidateRefusal, ValidateTurn } from '../validate-budget.ts';
import type { FastifyReply, FastifyRequest } from 'fastify';

/** ETag of a policy version (strong; one version = one exact document). */
export function policyEtag(version: number): string {
  return `"${version}"`;
}

/** An If-Match header read (RFC 9110 §13.1.1): `*`, the strong entity-tags it lists, or no valid field value. */
export type IfMatch = { kind: 'any' } | { kind: 'tags'; strong: string[] } | { kind: 'invalid' };

/**
 * Parse an If-Match field value: `*`, or a list of entity-tags (`"7"`, `W/"7"`, `"a,b"`). If-Match
 * uses the strong comparison (RFC 9110 §8.8.3.2): a weak tag never matches, so only the strong
 * ones are kept, as written (`"07"` is not `"7"`). `*` with tags, an unquoted `7`, or nothing at
 * all is no If-Match value (RFC 9110 §13.1.1 grammar): 'invalid'.
 */
export function parseIfMatch(header: string): IfMatch {
  if (header.trim() === '*') return { kind: 'any' };
  const strong: string[] = [];
  let tags = 0;
  let i = 0;
  while (i < header.length) {
    const c = header[i];
    if (c === ' ' || c === '\t' || c === ',') {
      i++;
      continue;
    }
    const weak = header.startsWith('W/"', i);
    const open = weak ? i + 2 : i;
    if (header[open] !== '"') return { kind: 'invalid' };
    const close = header.indexOf('"', open + 1);
    if (close < 0) return { kind: 'invalid' };
    const tag = header.slice(open, close + 1);
    // etagc: %x21 / %x23-7E / obs-text (no space, no control, no DQUOTE)
    if (!/^"[\x21\x23-\x7e\x80-\xff]*"$/.test(tag)) return { kind: 'invalid' };
    i = close + 1;
    if (i < header.length && !/[ \t,]/.test(header[i] ?? '')) return { kind: 'invalid' };
    tags++;
    if (!weak) strong.push(tag);
  }
  return tags === 0 ? { kind: 'invalid' } : { kind: 'tags', strong };
}

function sendPolicy(request: FastifyRequest, reply: FastifyReply, policy: PolicyView): void {
  const config = redactConfig(policy.config, request.principal?.scope ?? 'read');
  reply.header('etag', policyEtag(policy.version)).send({ ...policy, config });
}

function sendWrite(request: FastifyRequest, reply: FastifyReply, res: WriteOutcome): void {
  if (res.ok) {
    request.auditDetail = `version ${res.previousVersion} -> ${res.policy.version}`;
    sendPolicy(request, reply, res.policy);
    return;
  }
  switch (res.code) {
    case 'invalid':
      request.auditDetail = `invalid: ${res.errors.length} error(s)`;
      sendError(reply, 400, 'invalid-policy', 'the policy is invalid; the running policy is unchanged', res.errors);
      return;
    case 'version-mismatch':
      sendError(reply, 412, 'precondition-failed', `If-Match does not name the current version (${res.currentVersion})`, {
        currentVersion: res.currentVersion,
      });
      return;
    case 'unknown-version':
      sendError(reply, 404, 'not-found', res.message);
      return;
  }
}

const policyErrors = { ...AuthErrors, 400: ErrorBody, 412: ErrorBody } as const;

/**
 * Why a policy body is no policy, or null. A body that is empty, only comments, or JSON `null`
 * (which the schema's string branch takes as "") parses to nothing, and nothing is the built-in
 * defaults: a PUT of it replaced every role, user and token, and the API answered 401 to everyone.
 * A config file may be empty (`serve` on the defaults); an API write must say what it means (`{}`).
 */
function emptyPolicy(body: unknown): ConfigIssue | null {
  if (typeof body !== 'string' || !isNoPolicyText(body)) return null;
  return { path: '(root)', message: 'the policy is empty (no body, only comments, or null); a write replaces the whole policy: send it, or {} for the built-in defaults' };
}

/**
 * The keys a JSON policy body writes twice (policy/json-duplicate-keys.ts), as errors with their
 * paths. fastify's parser kept each one's last value: a repeated role ran on its second definition
 * alone, where the same document as YAML (and `serve --config`, SIGHUP) is refused.
 */
function repeatedKeys(request: FastifyRequest): ConfigIssue[] {
  return request.jsonText === null || typeof request.body !== 'object' || request.body === null ? [] : duplicateJsonKeys(request.jsonText);
}

/** Whether a validation is budgeted: a read token's; an admin's is the operator's own, as PUT is. */
function budgeted(request: FastifyRequest): boolean {
  return request.principal?.scope !== 'admin';
}

/** 429 for a validation with no place in the queue (SPEC §6 error body, Retry-After). */
function refuseValidate(reply: FastifyReply, refused: ValidateRefusal): void {
  reply.header('retry-after', String(refused.retryAfterSec));
  sendError(reply, 429, 'too-many-requests', 'too many policy validations under way; try again later (one at a time, at most a fifth of the event loop)');
}

/** Register the policy and mode routes. */
export function registerPolicyRoutes(app: AdminApp, { port, keepsAdmin, repeatsOutside, validateBudget }: RouteContext): void {
  app.get(
    '/v1/policy',
    {
      config: { scope: 'read' },
      schema: { summary: 'The running policy with its version (also the ETag)', response: { 200: PolicyViewSchema, ...AuthErrors } },
    },
    (request, reply) => {
      sendPolicy(request, reply, port.getPolicy());
    },
  );

  app.put(
    '/v1/policy',
    {
      config: { scope: 'admin', audit: 'always', ownsRepeatedKeys: true },
      schema: {
        summary: 'Replace the policy (JSON object, or YAML/JSON text); If-Match guards against lost updates',
        body: PolicyInput,
        response: { 200: PolicyViewSchema, ...policyErrors },
      },
    },
    async (request, reply) => {
      const current = port.getPolicy().version;
      const ifMatch = request.headers['if-match'];
      let ifMatchVersion: number | null = null;
      if (typeof ifMatch === 'string') {
        const wanted = parseIfMatch(ifMatch);
        if (wanted.kind === 'invalid') {
          return sendError(reply, 400, 'bad-request', 'If-Match must be * or a list of entity-tags: the ETag of GET /v1/policy, quoted ("7")', [
            { path: 'headers.if-match', message: 'not * or a list of entity-tags ("7"; an unquoted 7 is none)' },
          ]);
        }
        // Strong comparison (RFC 9110 §13.1.1): a weak tag (W/"7") never matches.
        if (wanted.kind === 'tags' && !wanted.strong.includes(policyEtag(current))) {
          return sendWrite(request, reply, { ok: false, code: 'version-mismatch', currentVersion: current });
        }
        // Checked again inside the port, against the version at the moment of the swap.
        if (wanted.kind === 'tags') ifMatchVersion = current;
      }
      const empty = emptyPolicy(request.body);
      if (empty) return sendWrite(request, reply, { ok: false, code: 'invalid', errors: [empty] });
      const repeated = repeatedKeys(request);
      if (repeated.length > 0) return sendWrite(request, reply, { ok: false, code: 'invalid', errors: repeated });
      const author = request.principal?.name ?? 'unknown';
      return sendWrite(request, reply, await port.replacePolicy(request.body as string | object, { author, ifMatchVersion, check: keepsAdmin }));
    },
  );

  app.post(
    '/v1/policy/validate',
    {
      config: { scope: 'read', audit: 'never', ownsRepeatedKeys: true },
      schema: { summary: 'Validate a draft policy; changes nothing', body: PolicyInput, response: { 200: ValidateResult, ...AuthErrors } },
      // A read token's validation waits its turn in the budget (admin/validate-budget.ts); one with
      // no place in the queue is refused before its body is read, so it is never parsed either.
      preParsing: async (request, reply, payload) => {
        const refused = budgeted(request) ? validateBudget.wouldRefuse(request.principal?.name ?? '') : null;
        if (refused) refuseValidate(reply, refused);
        return payload;
      },
    },
    async (request, reply) => {
      let turn: ValidateTurn | null = null;
      if (budgeted(request)) {
        const entered = validateBudget.enter(request.principal?.name ?? '');
        if (!(entered instanceof Promise)) return refuseValidate(reply, entered);
        turn = await entered;
      }
      const started = performance.now();
      try {
        // A client that left while it waited costs nothing more.
        if (request.raw.socket.destroyed) return reply;
        const empty = emptyPolicy(request.body);
        const repeated = empty ? [empty] : repeatedKeys(request);
        // An entry repeating a token accepted outside the policy is refused as a PUT (admin scope) would
        // refuse it. Not for a read-scope caller: it would be a way to test guesses at the admin token
        // that no failed-login delay or lockout counts (and a read token cannot write the policy).
        const check = request.principal?.scope === 'admin' ? repeatsOutside : undefined;
        const res = repeated.length > 0 ? { ok: false as const, errors: repeated } : port.validatePolicy(request.body as string | object, check);
        reply.send(res.ok ? { valid: true, summary: res.summary, errors: [] } : { valid: false, errors: res.errors });
      } finally {
        turn?.done(performance.now() - started);
      }
    },
  );

  app.post(
    '/v1/policy/evaluate',
    {
      config: { scope: 'read', audit: 'never' },
      schema: {
        summary: 'Dry-run one connection against the running policy and its connect-time detectors; explains the matching rule',
        body: EvaluateBody,
        response: { 200: EvaluateResult, 400: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => {
      const res = port.evaluate(request.body);
      if (!res.ok) return sendError(reply, 400, 'bad-request', res.message);
      reply.send({ version: res.version, ...res.decision, identity: res.identity, destination: res.destination, protocol: res.protocol, findings: res.findings, detectors: res.detectors });
    },
  );

  app.get(
    '/v1/policy/history',
    { config: { scope: 'read' }, schema: { summary: 'Policy versions with author and time', response: { 200: HistoryList, ...AuthErrors } } },
    (_request, reply) => {
      reply.send({ current: port.getPolicy().version, versions: port.policyHistory() });
    },
  );

  app.post(
    '/v1/policy/rollback/:version',
    {
      config: { scope: 'admin', audit: 'always' },
      schema: {
        summary: 'Make an earlier version current again (recorded as a new version)',
        params: VersionParams,
        response: { 200: PolicyViewSchema, 404: ErrorBody, ...policyErrors },
      },
    },
    async (request, reply) => {
      const author = request.principal?.name ?? 'unknown';
      return sendWrite(request, reply, await port.rollbackPolicy(request.params.version, author, keepsAdmin));
    },
  );

  app.get(
    '/v1/mode',
    { config: { scope: 'read' }, schema: { summary: 'The global mode in force', response: { 200: ModeViewSchema, ...AuthErrors } } },
    (_request, reply) => {
      reply.send(port.getMode());
    },
  );

  app.put(
    '/v1/mode',
    {
      config: { scope: 'admin', audit: 'always' },
      schema: {
        summary: 'Switch monitor/enforce at run time, globally (roles with their own mode keep it)',
        body: ModeBody,
        response: { 200: ModeViewSchema, 400: ErrorBody, ...AuthErrors },
      },
    },
    (request, reply) => {
      const before = port.getMode().mode;
      const view = port.setMode(request.body.mode, request.principal?.name ?? 'unknown');
      request.auditDetail = `mode ${before} -> ${view.mode}${request.body.mode === null ? ' (config)' : ''}`;
      reply.send(view);
    },
  );
}
