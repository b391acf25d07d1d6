/**
 * `Max-Forwards` on TRACE and OPTIONS (RFC 9110 §7.6.2): an intermediary that receives one of those
 * requests with the field MUST NOT forward it when the value is 0 but answer as its final recipient,
 * and otherwise forwards it with the value decremented. Pure: header values in, values out.
 */
import { httpDate } from './http-date.ts';
import { isStrippedName } from './http-headers.ts';
import { isRepeatedField } from './http-target.ts';

/** The largest Max-Forwards value passed on: the "maximum supported value" of RFC 9110 §7.6.2. */
export const MAX_FORWARDS_LIMIT = 255;

/**
 * The Max-Forwards value of a request this gateway must honour: the received value of a TRACE or
 * OPTIONS request (capped at MAX_FORWARDS_LIMIT + 1), or null when there is none to honour (another
 * method, no field, or a value that is not 1*DIGIT, which is passed on as it came).
 */
export function maxForwardsOf(method: string | undefined, value: string | string[] | undefined): number | null {
  if (value === undefined || (method !== 'TRACE' && method !== 'OPTIONS')) return null;
  const text = (typeof value === 'string' ? value : (value[0] ?? '')).trim();
  if (!/^[0-9]+$/.test(text)) return null;
  return Math.min(Number(text), MAX_FORWARDS_LIMIT + 1);
}

/**
 * `duplicate-max-forwards` for a TRACE or OPTIONS request with more than one Max-Forwards field, else
 * null. The field is a single number (RFC 9110 §7.6.2: `1*DIGIT`, no list), and node:http keeps the
 * first of two, so `0` then `5` was answered here while a proxy in front reading the last forwarded
 * it: such a request is refused 400, as two Hosts are. Other methods pass the field on unread, so
 * theirs are not judged. Costs a scan of the names only for a TRACE or OPTIONS carrying the field.
 */
export function maxForwardsFault(method: string | undefined, value: string | string[] | undefined, raw: readonly string[]): 'duplicate-max-forwards' | null {
  if (value === undefined || (method !== 'TRACE' && method !== 'OPTIONS')) return null;
  return isRepeatedField(raw, 'max-forwards') ? 'duplicate-max-forwards' : null;
}

/**
 * The body of a TRACE answered here (RFC 9110 §9.3.8, `message/http`): the request as received,
 * request line and fields, less those likely to carry secrets: credentials for the origin and for
 * the proxy, cookies, and the identity headers the gateway strips (`stripped`: isStrippedName, so in any underscore spelling).
 */
export function traceEcho(requestLine: string, raw: readonly string[], stripped: ReadonlySet<string>): string {
  let out = `${requestLine}\r\n`;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (TRACE_SECRETS.has(lower) || isStrippedName(stripped, lower)) continue;
    out += `${name}: ${raw[i + 1] as string}\r\n`;
  }
  return `${out}\r\n`;
}

/**
 * The whole answer of a TRACE or OPTIONS answered here as its final recipient, as text for a raw
 * socket (the Upgrade path, whose connection node:http has let go): 200 and `connection: close` (a
 * request carrying Upgrade is its connection's last there), TRACE with traceEcho's `message/http`
 * body, OPTIONS with none. The answer node:http's path gives (http-proxy.ts answerAsFinalRecipient).
 */
export function finalRecipientText(method: string, requestLine: string, raw: readonly string[], stripped: ReadonlySet<string>): string {
  const head = `HTTP/1.1 200 OK\r\ndate: ${httpDate()}\r\nconnection: close\r\n`;
  if (method !== 'TRACE') return `${head}content-length: 0\r\n\r\n`;
  const body = traceEcho(requestLine, raw, stripped);
  return `${head}content-type: message/http\r\ncontent-length: ${Buffer.byteLength(body, 'latin1')}\r\n\r\n${body}`;
}

const TRACE_SECRETS: ReadonlySet<string> = new Set(['authorization', 'proxy-authorization', 'cookie']);
