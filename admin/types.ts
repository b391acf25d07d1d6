/**
 * Types shared by the admin app and its route modules, and the fastify type augmentations
 * (route `config.scope`/`config.audit`, `request.principal`).
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyBaseLogger, FastifyInstance, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify';
import type { ControlPort, PolicyCheck } from '../gateway/control.ts';
import type { Principal, RequiredScope } from './auth.ts';
import type { ValidateBudget } from './validate-budget.ts';

/** How a write is audited: every time, only when refused (status ≥ 400), or never (dry runs). */
export type AuditMode = 'always' | 'refused' | 'never';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Token scope the route requires. */
    scope?: RequiredScope;
    audit?: AuditMode;
    /**
     * The route reports a JSON body's repeated keys itself (the policy writes, as policy errors);
     * every other route's are refused before its schema by admin/app.ts.
     */
    ownsRepeatedKeys?: boolean;
    /**
     * Most JSON values a body may hold (admin/json-value-budget.ts): one with more is refused 413
     * before it is parsed, as a body over `bodyLimit` is. Unset: no bound but `bodyLimit`.
     */
    maxJsonValues?: number;
  }
  interface FastifyRequest {
    principal: Principal | null;
    /** Policy version when the request arrived (audit `beforeVersion`). */
    policyVersionBefore: number | null;
    /** One line of context for the audit entry (flow killed, mode set, why refused). */
    auditDetail: string | null;
    /** The text of an application/json body, as sent (checked for repeated keys). */
    jsonText: string | null;
  }
}

export type AdminApp = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider>;

export interface RouteContext {
  port: ControlPort;
  /** SSE heartbeat period. */
  heartbeatMs: number;
  /**
   * Refuses a policy that would leave the API without an admin token (TokenAuth.lockoutOf) or whose
   * entry repeats a token accepted outside it (TokenAuth.repeatsOf).
   */
  keepsAdmin: PolicyCheck;
  /**
   * Refuses a policy whose entry repeats a token accepted outside it (TokenAuth.repeatsOf): what
   * POST /v1/policy/validate checks besides the file's own rules, as start-up and a reload refuse it.
   */
  repeatsOutside: PolicyCheck;
  /**
   * A check that an `Authorization` header still grants `need` (TokenAuth.watch), for an answer that
   * outlives its request: an alert stream ends once its token is revoked or its scope narrowed.
   */
  watchToken: (header: string | undefined, need: RequiredScope) => () => boolean;
  /** The event-loop budget of a read token's POST /v1/policy/validate (admin/validate-budget.ts). */
  validateBudget: ValidateBudget;
}
