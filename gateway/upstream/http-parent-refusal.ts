/**
 * What an http parent's refusal of CONNECT (its final answer, not 2xx) means for the client (SPEC
 * §4), as socks5-parent.ts's parentReplyCode does for a socks5 parent's reply: the parent's word on
 * the destination keeps its meaning, anything else is the parent's own failure (`upstream-proxy`).
 *
 * HTTP has no field for why a CONNECT failed, so a status alone says it only for 504 (the parent
 * waited on the destination). Squid, the usual parent, says more: its error page for a connect to
 * the destination that failed is `503` with `X-Squid-Error: ERR_CONNECT_FAIL <errno>`, the errno
 * of its connect(2). Read as a 503 alone, a closed port behind squid was `upstream-proxy`: the
 * client's 502 blamed the parent, and `an0081.scan`, which does not count the parent's own failures,
 * never saw a failed attempt (27 CONNECTs to closed ports through squid 5.7: no alert; direct or
 * through a socks5 parent: blocked and quarantined). The errno numbers are Linux's (a squid on
 * another system names none of them and its refusals stay `upstream-proxy`).
 */
import type { GatewayErrorCode } from '../errors.ts';

/** Squid's errno for a failed connect to the destination: refused, no route, timed out. */
const SQUID_ERRNO: Readonly<Record<string, GatewayErrorCode>> = {
  '111': 'EGW_DIAL_REFUSED', // ECONNREFUSED
  '113': 'EGW_DIAL_UNREACHABLE', // EHOSTUNREACH
  '101': 'EGW_DIAL_UNREACHABLE', // ENETUNREACH
  '110': 'EGW_DIAL_TIMEOUT', // ETIMEDOUT
};

/** The field in a head (status line and fields, CRLF-ended lines): squid's error and its errno. */
const SQUID_CONNECT_FAIL = /\r\nX-Squid-Error:[ \t]*(ERR_CONNECT_FAIL[ \t]+(\d{1,4}))[ \t]*\r\n/i;

export interface HttpParentRefusal {
  code: GatewayErrorCode;
  /** What the parent said beyond its status line (`ERR_CONNECT_FAIL 111`), for the log; '' if nothing. */
  detail: string;
}

/**
 * The code of a refusal with `status` whose head is `head` (from its status line to the CRLF that
 * ends its last field). Runs once per refused dial, never on a tunnel.
 */
export function httpParentRefusal(status: number, head: string): HttpParentRefusal {
  if (status === 504) return { code: 'EGW_DIAL_TIMEOUT', detail: '' };
  if (status !== 503) return { code: 'EGW_UPSTREAM_PROXY', detail: '' };
  const squid = SQUID_CONNECT_FAIL.exec(head);
  const code = squid === null ? undefined : SQUID_ERRNO[squid[2] as string];
  return code === undefined ? { code: 'EGW_UPSTREAM_PROXY', detail: squid?.[1] ?? '' } : { code, detail: squid?.[1] ?? '' };
}

/** The most of a parent's status line a log line quotes: a reason phrase is a few words. */
const MAX_SHOWN_STATUS_LINE = 128;

/**
 * A refusal's status line as its log line quotes it: printable ASCII as it came, any other byte
 * (control bytes, HTAB, obs-text) as `\xNN`, and past MAX_SHOWN_STATUS_LINE bytes cut, with how long
 * it was. The reason phrase is the parent's to fill (RFC 9112 §4): before, it went into the log as
 * it came, up to the 16 KiB the answer may take. Runs once per refused dial, never on a tunnel.
 */
export function shownStatusLine(line: string): string {
  const cut = line.length > MAX_SHOWN_STATUS_LINE ? line.slice(0, MAX_SHOWN_STATUS_LINE) : line;
  const shown = cut.replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return cut === line ? shown : `${shown}… (${line.length} bytes)`;
}
