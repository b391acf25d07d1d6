/**
 * Request-target parsing and the smuggling guard for the HTTP listener. Pure functions over what
 * node's parser handed us; no sockets.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { isIPv6 } from 'node:net';
import type { GatewayErrorCode } from '../errors.ts';
import { formatAuthority, parseAuthority } from '../protocol/authority.ts';
import { isSafeContentLength } from './http-headers.ts';

export type AbsoluteTarget =
  | { ok: true; host: string; port: number; isIp: boolean; path: string }
  | { ok: false; reason: 'not-absolute-uri' | 'https-scheme-unsupported' | 'bad-authority' };

/**
 * Split an absolute `http://authority/path?query` target. The path is kept exactly as the client
 * wrote it (no dot-segment or percent re-encoding: the origin must see what the client sent); only
 * a fragment, which never belongs on the wire, is dropped. Userinfo in the authority is refused.
 */
export function parseAbsoluteTarget(url: string): AbsoluteTarget {
  const scheme = url.slice(0, 8).toLowerCase();
  if (scheme.startsWith('https://')) return { ok: false, reason: 'https-scheme-unsupported' };
  if (!scheme.startsWith('http://')) return { ok: false, reason: 'not-absolute-uri' };
  const rest = url.slice(7);
  let end = rest.length;
  for (let i = 0; i < rest.length; i++) {
    const c = rest.charCodeAt(i);
    if (c === 0x2f /* / */ || c === 0x3f /* ? */ || c === 0x23 /* # */) {
      end = i;
      break;
    }
  }
  const authority = parseAuthority(rest.slice(0, end), 80);
  if (!authority) return { ok: false, reason: 'bad-authority' };
  let path = rest.slice(end);
  const hash = path.indexOf('#');
  if (hash >= 0) path = path.slice(0, hash);
  if (path.length === 0) path = '/';
  else if (path.charCodeAt(0) === 0x3f) path = `/${path}`;
  return { ok: true, host: authority.host, port: authority.port, isIp: authority.isIp, path };
}

/**
 * Request shapes whose body length, or whose Host, two parsers could disagree on (RFC 9112 §6.1,
 * §6.3, §3.2). node's strict parser refuses the length shapes already; this second check makes sure
 * no future parser leniency turns into an ambiguous forward. It also refuses what node lets through:
 * a Content-Length that is no safe integer (past 2^53 − 1 undici reads it as a float and forwards it
 * rounded: 9007199254740993 went on as 9007199254740992), and Host twice or with an invalid value
 * (RFC 9112 §3.2: 400; node keeps the first Host), a request line naming HTTP/2.0, which node's
 * parser reads as if it were HTTP/1 (httpVersionFault), and an HTTP/1.0 request with a
 * Transfer-Encoding (RFC 9112 §6.1: its framing is faulty; node's parser reads it as chunked and keeps
 * the connection, so the bytes after the body were served as the next request). Returns the shape's name or null;
 * shapeRefusalCode gives its status. One pass over the names, lower-casing only those of the two lengths looked for.
 */
export function smugglingShape(req: Pick<IncomingMessage, 'httpVersionMajor' | 'headers' | 'rawHeaders'> & { readonly httpVersionMinor?: number }): string | null {
  if (req.httpVersionMajor !== 1) return httpVersionFault(req.httpVersionMajor);
  const te = req.headers['transfer-encoding'];
  const raw = req.rawHeaders;
  let contentLengths = 0;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 14) {
      if (name.toLowerCase() === 'content-length') contentLengths++;
    } else if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
  }
  if (te !== undefined && contentLengths > 0) return 'content-length-with-transfer-encoding';
  if (te !== undefined && req.httpVersionMinor === 0) return 'transfer-encoding-in-http/1.0';
  if (contentLengths > 1) return 'duplicate-content-length';
  if (contentLengths === 1 && !isSafeContentLength(req.headers['content-length'] ?? '')) return 'content-length-not-safe-integer';
  if (te !== undefined && te.trim().toLowerCase() !== 'chunked') return isOtherCodingThenChunked(te) ? 'transfer-coding-not-implemented' : 'transfer-encoding-not-chunked';
  if (hosts > 1) return 'duplicate-host';
  if (hosts === 1 && !isValidHostField(req.headers.host ?? '')) return 'invalid-host';
  return null;
}

/**
 * The fault of a request line whose version is not HTTP/1.x, by its major version (node's parser
 * takes 0.9, 1.0, 1.1 and 2.0): HTTP/0.9 (400), or `HTTP/2.0` (505, RFC 9110 §15.6.6: this message
 * syntax is HTTP/1's; HTTP/2 has its own framing, RFC 9113 §3). Null for HTTP/1.
 */
export function httpVersionFault(major: number): string | null {
  if (major === 1) return null;
  return major < 1 ? 'http/0.9' : 'http-version-not-supported';
}

/**
 * The Host field's fault (RFC 9112 §3.2: 400 for Host twice or an invalid value), or null; for the
 * requests smugglingShape does not see (CONNECT). `raw` is absent on the CONNECT front's heads,
 * which never repeat a name. No Host at all is no fault here (the target names the authority).
 */
export function hostFieldFault(headers: IncomingHttpHeaders, raw: readonly string[] | undefined): string | null {
  const host = headers.host;
  if (host === undefined) return null;
  if (raw !== undefined && isRepeatedField(raw, 'host')) return 'duplicate-host';
  return isValidHostField(host) ? null : 'invalid-host';
}

/**
 * A CONNECT that frames content (RFC 9110 §9.3.6: a CONNECT request has none): a Transfer-Encoding,
 * or a Content-Length other than 0. node's parser takes every byte after the head as the tunnel's,
 * so what the client (or a proxy in front) framed as the request's content reached the destination
 * as payload: one reader's body is the other's tunnel. Returns the fault's name or null. The CONNECT
 * front hands such heads to node:http, so only its heads carry these fields.
 */
export function connectContentFault(headers: IncomingHttpHeaders): string | null {
  if (headers['transfer-encoding'] !== undefined) return 'connect-with-transfer-encoding';
  const length = headers['content-length'];
  return length === undefined || /^0+$/.test(length) ? null : 'connect-with-content-length';
}

/**
 * An Expect field the gateway cannot meet (RFC 9110 §10.1.1): any member but `100-continue` (the
 * only expectation defined; case-insensitive; empty list elements ignored, RFC 9110 §5.6.1) in an
 * HTTP/1.1 request: `expectation-failed`, answered 417 before admission (shapeRefusalCode), on every
 * path: absolute-URI, Upgrade, CONNECT. HTTP/1.0 requests have their Expect ignored (RFC 9110
 * §10.1.1: a 100-continue there MUST be ignored; the field is HTTP/1.1's), as a CONNECT's or an
 * Upgrade's `100-continue` is (no content follows): the gateway never sends Expect on. Called after
 * the version checks (HTTP/1.x only); no minor version: the CONNECT front's heads, all HTTP/1.1.
 * Only a request that carries the field is looked at further.
 */
export function expectationFault(req: { readonly headers: IncomingHttpHeaders; readonly httpVersionMinor?: number }): string | null {
  const expect = req.headers.expect;
  if (expect === undefined || req.httpVersionMinor === 0) return null;
  for (const member of expect.split(',')) {
    const expectation = member.trim();
    if (expectation !== '' && expectation.toLowerCase() !== '100-continue') return 'expectation-failed';
  }
  return null;
}

/** `uri-host [ ":" port ]` (RFC 3986 §3.2.2, §3.2.3): an IP literal in brackets, or a reg-name; empty allowed. */
const HOST_FIELD = /^(?:\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[\w.~!$&'()*+,;=:-]+)\]|(?:[\w.~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?$/;

/**
 * A Host field value as RFC 9112 §3.2 takes it: `uri-host [ ":" port ]`, an IPv6 literal a valid
 * IPv6 address. Only the grammar: the gateway rebuilds Host from the target (hostHeaderFor), so a
 * Host naming another authority, or a name the policy would refuse, is no fault.
 */
export function isValidHostField(value: string): boolean {
  if (!HOST_FIELD.test(value)) return false;
  if (value.charCodeAt(0) !== 0x5b /* [ */) return true;
  const first = value.charCodeAt(1);
  return first === 0x76 /* v */ || first === 0x56 /* V */ || isIPv6(value.slice(1, value.indexOf(']')));
}

/**
 * True when the field `name` (lower-case) occurs more than once in a raw header list. Names of
 * another length are passed over without a lower-casing.
 */
export function isRepeatedField(raw: readonly string[], name: string): boolean {
  let isSeen = false;
  for (let i = 0; i < raw.length; i += 2) {
    const field = raw[i] as string;
    if (field.length !== name.length || field.toLowerCase() !== name) continue;
    if (isSeen) return true;
    isSeen = true;
  }
  return false;
}

/**
 * A Transfer-Encoding whose framing is clear (chunked once, last: RFC 9112 §6.3) but which applies
 * another coding first (`gzip, chunked`): a coding the gateway does not implement, so 501 (RFC 9112
 * §6.1), where chunked not last, or twice, leaves the length unknown: 400.
 */
function isOtherCodingThenChunked(te: string): boolean {
  const codings = te.split(',').map((c) => c.split(';', 1)[0]?.trim().toLowerCase() ?? '').filter((c) => c !== '');
  return codings.length > 1 && codings.at(-1) === 'chunked' && codings.indexOf('chunked') === codings.length - 1;
}

/**
 * The coded failure a smuggling shape is refused with: 501 for a transfer coding the gateway does
 * not implement, 505 for an HTTP version other than 1.x (not 0.9), 417 for an expectation it cannot
 * meet (expectationFault), 400 for every other shape.
 * Either way the connection closes after it.
 */
export function shapeRefusalCode(shape: string): GatewayErrorCode {
  if (shape === 'transfer-coding-not-implemented') return 'EGW_TRANSFER_CODING';
  if (shape === 'expectation-failed') return 'EGW_EXPECTATION_FAILED';
  return shape === 'http-version-not-supported' ? 'EGW_HTTP_VERSION' : 'EGW_BAD_REQUEST';
}

/** The Host field the origin sees (RFC 9112 §3.2.2): the target's authority, port omitted when 80. */
export function hostHeaderFor(host: string, port: number): string {
  if (port !== 80) return formatAuthority(host, port);
  return host.includes(':') ? `[${host}]` : host;
}
