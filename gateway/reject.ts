/**
 * The only place that turns a GatewayError code or a Decision into what the client sees:
 * an HTTP status (+ headers, JSON body per SPEC §4) or a SOCKS5 reply byte (RFC 1928 §6).
 */
import type { Decision, GatewayRefusalReason, ReasonCode } from '../policy/types.ts';
import type { GatewayErrorCode } from './errors.ts';

export const SOCKS_REP = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;

export interface RejectMapping {
  readonly status: number;
  readonly socks: number;
  /** The `error` field of the JSON body. */
  readonly error: string;
  /** The `reason` field: a stable code. */
  readonly reason: string;
}

const ERROR_MAP: Record<GatewayErrorCode, RejectMapping> = {
  EGW_BAD_REQUEST: { status: 400, socks: SOCKS_REP.generalFailure, error: 'bad request', reason: 'bad-request' },
  EGW_TRANSFER_CODING: { status: 501, socks: SOCKS_REP.generalFailure, error: 'transfer coding not implemented', reason: 'transfer-coding-not-implemented' },
  EGW_HTTP_VERSION: { status: 505, socks: SOCKS_REP.generalFailure, error: 'http version not supported', reason: 'http-version-not-supported' },
  EGW_EXPECTATION_FAILED: { status: 417, socks: SOCKS_REP.generalFailure, error: 'expectation failed', reason: 'expectation-failed' },
  EGW_HEADERS_TOO_LARGE: { status: 431, socks: SOCKS_REP.generalFailure, error: 'request header fields too large', reason: 'headers-too-large' },
  EGW_HEADER_TIMEOUT: { status: 408, socks: SOCKS_REP.generalFailure, error: 'request timeout', reason: 'header-timeout' },
  EGW_SOCKS_PROTOCOL: { status: 400, socks: SOCKS_REP.generalFailure, error: 'bad request', reason: 'socks-protocol' },
  EGW_SOCKS_COMMAND: { status: 400, socks: SOCKS_REP.commandNotSupported, error: 'command not supported', reason: 'command-not-supported' },
  EGW_SOCKS_ADDRESS_TYPE: { status: 400, socks: SOCKS_REP.addressTypeNotSupported, error: 'address type not supported', reason: 'address-type-not-supported' },
  EGW_AUTH_REQUIRED: { status: 407, socks: SOCKS_REP.notAllowed, error: 'proxy authentication required', reason: 'auth-required' },
  EGW_DNS_FAILED: { status: 502, socks: SOCKS_REP.hostUnreachable, error: 'destination unreachable', reason: 'dns-failed' },
  EGW_DIAL_REFUSED: { status: 502, socks: SOCKS_REP.connectionRefused, error: 'destination unreachable', reason: 'connection-refused' },
  EGW_DIAL_UNREACHABLE: { status: 502, socks: SOCKS_REP.hostUnreachable, error: 'destination unreachable', reason: 'unreachable' },
  EGW_DIAL_TIMEOUT: { status: 504, socks: SOCKS_REP.ttlExpired, error: 'upstream timeout', reason: 'connect-timeout' },
  EGW_OUT_OF_DESCRIPTORS: { status: 503, socks: SOCKS_REP.generalFailure, error: 'gateway out of file descriptors', reason: 'out-of-descriptors' },
  EGW_OUT_OF_SOCKETS: { status: 503, socks: SOCKS_REP.generalFailure, error: 'gateway out of sockets', reason: 'out-of-sockets' },
  EGW_OUT_OF_RELAY_PORTS: { status: 503, socks: SOCKS_REP.generalFailure, error: 'gateway out of UDP relay ports', reason: 'out-of-relay-ports' },
  EGW_UPSTREAM_PROXY: { status: 502, socks: SOCKS_REP.generalFailure, error: 'upstream proxy failed', reason: 'upstream-proxy' },
  // A timeout (SPEC §4: 504, SOCKS 0x06 as for the destination's), but the parent's own: its reason
  // keeps it out of the scan detector's failed attempts, as every `upstream-proxy` failure.
  EGW_UPSTREAM_PROXY_TIMEOUT: { status: 504, socks: SOCKS_REP.ttlExpired, error: 'upstream proxy timeout', reason: 'upstream-proxy' },
  EGW_UPSTREAM_RESET: { status: 502, socks: SOCKS_REP.generalFailure, error: 'upstream reset', reason: 'upstream-reset' },
  EGW_UPSTREAM_BAD_RESPONSE: { status: 502, socks: SOCKS_REP.generalFailure, error: 'bad response from upstream', reason: 'upstream-bad-response' },
  EGW_SELF_DIAL: { status: 403, socks: SOCKS_REP.notAllowed, error: 'egress denied', reason: 'deny-range' },
  EGW_VIA_LOOP: { status: 508, socks: SOCKS_REP.generalFailure, error: 'loop detected', reason: 'via-loop' },
  EGW_FLOW_LIMIT: { status: 429, socks: SOCKS_REP.notAllowed, error: 'too many flows', reason: 'rate-limit' },
  EGW_SOURCE_CONNECTIONS: { status: 429, socks: SOCKS_REP.notAllowed, error: 'too many connections from this address', reason: 'rate-limit' },
  EGW_SHUTTING_DOWN: { status: 503, socks: SOCKS_REP.generalFailure, error: 'shutting down', reason: 'shutting-down' },
  EGW_FLOW_LOG_UNAVAILABLE: { status: 503, socks: SOCKS_REP.generalFailure, error: 'flow log unavailable', reason: 'flow-log-unavailable' },
  EGW_CONFIG_INVALID: { status: 500, socks: SOCKS_REP.generalFailure, error: 'configuration invalid', reason: 'config-invalid' },
};

/** What a coded failure looks like to an HTTP or SOCKS5 client. */
export function mapError(code: GatewayErrorCode): RejectMapping {
  return ERROR_MAP[code];
}

/** The refusal of a dial the gateway's own shortage failed (logged per ten seconds, not per flow). */
export function isShortage(mapping: RejectMapping): boolean {
  return mapping === ERROR_MAP.EGW_OUT_OF_DESCRIPTORS || mapping === ERROR_MAP.EGW_OUT_OF_SOCKETS;
}

/** Every closeReason a coded refusal or failure gives its flow (the flow-close metric's label set, stats.ts). */
export const ERROR_REASONS: readonly string[] = [...new Set(Object.values(ERROR_MAP).map((m) => m.reason))];

const SHUTDOWN_KILL: RejectMapping = { status: 503, socks: SOCKS_REP.generalFailure, error: 'shutting down', reason: 'shutdown' };
const ADMIN_KILL: RejectMapping = { status: 403, socks: SOCKS_REP.notAllowed, error: 'flow killed', reason: 'admin' };
/** Refusals of detector and quarantine kills, per reason (a handful of fixed names). */
const killRefusals = new Map<string, RejectMapping>();

/**
 * What a flow killed before its client had an answer (while it dialled) looks like to that client:
 * the drain's end (`shutdown`) 503 / SOCKS 0x01 as a new flow refused while draining; an operator's
 * DELETE (`admin`) 403 "flow killed" / 0x02; a detector's or quarantine's kill (its name) 403 "egress
 * denied" / 0x02, as the same finding at admission. `reason` is the kill's, the record's closeReason.
 */
export function mapKill(reason: string): RejectMapping {
  if (reason === 'shutdown') return SHUTDOWN_KILL;
  if (reason === 'admin') return ADMIN_KILL;
  let mapping = killRefusals.get(reason);
  if (mapping === undefined) {
    mapping = { status: 403, socks: SOCKS_REP.notAllowed, error: 'egress denied', reason };
    if (killRefusals.size < 64) killRefusals.set(reason, mapping);
  }
  return mapping;
}

/**
 * What the gateway's own refusals before any judgement look like (recorded as decisions: policy/types.ts
 * GATEWAY_REFUSAL_REASONS): the answers of their codes.
 */
const GATEWAY_REFUSALS: Record<GatewayRefusalReason, RejectMapping> = {
  'bad-request': ERROR_MAP.EGW_BAD_REQUEST,
  'shutting-down': ERROR_MAP.EGW_SHUTTING_DOWN,
  'via-loop': ERROR_MAP.EGW_VIA_LOOP,
  'flow-log-unavailable': ERROR_MAP.EGW_FLOW_LOG_UNAVAILABLE,
  'out-of-relay-ports': ERROR_MAP.EGW_OUT_OF_RELAY_PORTS,
  'relay-error': { status: 503, socks: SOCKS_REP.generalFailure, error: 'UDP relay failed', reason: 'relay-error' },
  'out-of-descriptors': ERROR_MAP.EGW_OUT_OF_DESCRIPTORS,
};

/**
 * What a refusing decision looks like to the client (403 / SOCKS 0x02, or 429 / 407 for those reasons;
 * the gateway's own refusals their codes' answers: 503 shutting down, 508 loop detected, …).
 */
export function mapDecision(decision: Decision): RejectMapping {
  const reason: ReasonCode = decision.reason;
  switch (reason) {
    case 'rate-limit':
      return { status: 429, socks: SOCKS_REP.notAllowed, error: 'too many flows', reason };
    case 'auth-required':
      return { status: 407, socks: SOCKS_REP.notAllowed, error: 'proxy authentication required', reason };
    case 'allowed':
    case 'not-allowlisted':
    case 'deny-range':
    case 'quarantine':
      return { status: 403, socks: SOCKS_REP.notAllowed, error: 'egress denied', reason };
    case 'detector':
      return { status: 403, socks: SOCKS_REP.notAllowed, error: 'egress denied', reason: decision.detector ?? reason };
    case 'bad-request':
    case 'shutting-down':
    case 'via-loop':
    case 'flow-log-unavailable':
    case 'out-of-relay-ports':
    case 'relay-error':
    case 'out-of-descriptors':
      return GATEWAY_REFUSALS[reason];
    default: {
      const exhaustive: never = reason;
      return exhaustive;
    }
  }
}
