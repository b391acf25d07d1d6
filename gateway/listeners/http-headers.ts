/**
 * Header rewriting for the absolute-URI path and Upgrade requests (RFC 9110 §7.6.1, RFC 9112 §3.2.2).
 * Pure: raw header lists in, raw header lists out (flat `[name, value, name, value, …]`, the form
 * node's `rawHeaders`, `res.writeHead(status, array)` and undici's `headers` all accept), so case and
 * repeated fields (Set-Cookie) survive and nothing is re-parsed.
 */
import { STATUS_CODES } from 'node:http';

/** Characters a status text or field may hold on the way out (as node:http's checkInvalidHeaderChar). */
export const INVALID_FIELD_CHAR = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * The reason phrase to send the client: the origin's, unless it is empty or holds a character no
 * field may carry (a control byte, or a non-Latin-1 character such as the U+FFFD undici decodes
 * obs-text to), then the standard one for the status. The phrase means nothing (RFC 9112 §4), but
 * node:http throws on such a phrase and the fast path would have sent it raw.
 */
export function relayedStatusText(statusCode: number, statusText: string): string {
  return statusText !== '' && !INVALID_FIELD_CHAR.test(statusText) ? statusText : (STATUS_CODES[statusCode] ?? '');
}

export { viaFor, viaNamesUs } from '../via.ts';

/**
 * Always removed in both directions: the hop-by-hop fields of RFC 9110 §7.6.1 plus the proxy's own
 * credentials and challenges. `Host` is rebuilt from the request target (RFC 9112 §3.2.2), and
 * `Expect` is answered by the gateway itself (100 Continue once admission let the request through),
 * so neither is passed on.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
]);

/** Connection tokens that are options, not header names; nothing to strip for them. */
const CONNECTION_OPTIONS = new Set(['close', 'keep-alive', 'upgrade']);

/**
 * The header names listed in every Connection field (RFC 9110 §7.6.1: "Connection: x-foo" makes
 * x-foo hop-by-hop). Returns null in the common case of none, so no Set is allocated per request.
 */
export function connectionNamedHeaders(raw: readonly string[]): Set<string> | null {
  let named: Set<string> | null = null;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() !== 'connection') continue;
    for (const token of (raw[i + 1] as string).split(',')) {
      const name = token.trim().toLowerCase();
      if (name.length === 0 || CONNECTION_OPTIONS.has(name)) continue;
      named ??= new Set();
      named.add(name);
    }
  }
  return named;
}

/**
 * True when field `lower` (a lower-case name) is one of `stripped` (lower-case, dashes for
 * underscores: normaliseStrippedName), in any spelling with underscores for dashes too: a
 * CGI-style origin reads `X_Egress_User` and `X-Egress-User` as one variable (HTTP_X_EGRESS_USER),
 * so an underscore spelling is the same field to it. A name without `_` costs one scan, no string.
 */
export function isStrippedName(stripped: ReadonlySet<string>, lower: string): boolean {
  return stripped.has(lower) || (lower.includes('_') && stripped.has(lower.replaceAll('_', '-')));
}

/** A stripped header name as isStrippedName looks it up: lower-case, dashes for underscores. */
export function normaliseStrippedName(name: string): string {
  return name.toLowerCase().replaceAll('_', '-');
}

export interface RequestHeaderOptions {
  /** The request target's authority: the only Host the origin sees. */
  readonly host: string;
  /** Identity header names (normaliseStrippedName) that must never leave the gateway, in any underscore spelling. */
  readonly stripped: ReadonlySet<string>;
  /** An Upgrade request keeps its Upgrade field and gets `Connection: Upgrade` back. */
  readonly upgrade?: string | null;
  /** The Max-Forwards value to send instead of the received one (TRACE, OPTIONS: http-max-forwards.ts). */
  readonly maxForwards?: number | null;
  /** Our Via entry (viaFor: the request's version as received). */
  readonly via: string;
}

/** Headers to send to the origin for a forwarded request. */
export function forwardRequestHeaders(raw: readonly string[], opts: RequestHeaderOptions): string[] {
  const named = connectionNamedHeaders(raw);
  const out: string[] = ['host', opts.host];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === 'host' || lower === 'expect') continue;
    if (isStrippedName(opts.stripped, lower) || named?.has(lower)) continue;
    if (opts.maxForwards != null && lower === 'max-forwards') continue;
    out.push(name, raw[i + 1] as string);
  }
  if (opts.maxForwards != null) out.push('max-forwards', String(opts.maxForwards));
  if (opts.upgrade) out.push('connection', 'Upgrade', 'upgrade', opts.upgrade);
  out.push('via', opts.via);
  return out;
}

/**
 * Headers to send to the client for an origin's response (undici gives raw Buffers). Framing
 * (Content-Length or chunked) is left to node's server, which re-frames for this client, unless
 * `keepFraming` says the body is relayed byte for byte. `via`: our Via entry for the response's
 * version as received (viaFor; on the absolute-URI paths, read from undici's parser: OriginExchange.responseVia).
 * `upgrade` (a 101): its Upgrade fields are kept, and its Connection fields are replaced by our own
 * `connection: Upgrade` (RFC 9110 §7.6.1: an intermediary removes a received Connection or replaces
 * it with its own options; §7.8: a sender of Upgrade sends the `upgrade` option).
 */
export function forwardResponseHeaders(raw: readonly (Buffer | string)[], opts: { upgrade?: boolean; keepFraming?: boolean; via: string }): string[] {
  const strings: string[] = new Array(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const v = raw[i] as Buffer | string;
    strings[i] = typeof v === 'string' ? v : v.toString('latin1');
  }
  const named = connectionNamedHeaders(strings);
  const out: string[] = [];
  for (let i = 0; i + 1 < strings.length; i += 2) {
    const name = strings[i] as string;
    const lower = name.toLowerCase();
    // A relayed raw body keeps its own framing; an upgrade keeps the field that names its protocol.
    if ((opts.upgrade && lower === 'upgrade') || (opts.keepFraming && lower === 'transfer-encoding')) {
      out.push(name, strings[i + 1] as string);
      continue;
    }
    if (HOP_BY_HOP.has(lower) || named?.has(lower)) continue;
    out.push(name, strings[i + 1] as string);
  }
  if (opts.upgrade) out.push('connection', 'Upgrade');
  out.push('via', opts.via);
  return out;
}

/**
 * Remove every Content-Length field from `headers` (flat, as forwardResponseHeaders gives), in place:
 * for a 204, which must not carry one (RFC 9110 §8.6). Only that rare status pays for the scan.
 */
export function dropContentLength(headers: string[]): void {
  let kept = 0;
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const name = headers[i] as string;
    if (name.length === 14 && name.toLowerCase() === 'content-length') continue;
    headers[kept] = name;
    headers[kept + 1] = headers[i + 1] as string;
    kept += 2;
  }
  headers.length = kept;
}

/** Tells the version a response was received in, asked only of a response with Transfer-Encoding. */
export interface ReceivedVersion {
  /** The response's status line said HTTP/1.0 (false when it cannot be told). */
  isReceivedInHttp10(): boolean;
}

/**
 * Why a response's framing fields (undici gives raw Buffers) cannot be relayed, or null when they can.
 * `transfer-encoding-in-http/1.0`: a Transfer-Encoding field in a response `version` says was
 * received in HTTP/1.0, whose framing RFC 9112 §6.1 says to treat as faulty (and its connection closed).
 * `transfer-coding-not-implemented`: a Transfer-Encoding naming anything but none, or a single
 * `chunked` last (undici removes it; `identity` means no coding). The relay re-frames the body for
 * the client and drops the field (hop-by-hop), so any other coding (`gzip, chunked`; `chunked, gzip`,
 * read until close) would reach the client as coded bytes it is never told of.
 * `content-length-not-safe-integer`: a Content-Length past 2^53 − 1 (llhttp takes up to 2^64 − 1),
 * which undici and the relay read as a float: the body could not be counted to its end exactly, and
 * the length would reach the client as the origin sent it, ending the body where the relay does not.
 * Only fields named `transfer-encoding` or `content-length` are read: one length comparison per
 * header on the common path, and a string only for a length of more than 15 digits.
 */
export function unrelayableFraming(
  raw: readonly (Buffer | string)[],
  version: ReceivedVersion | null = null,
): 'transfer-encoding-in-http/1.0' | 'transfer-coding-not-implemented' | 'content-length-not-safe-integer' | null {
  let isChunked = false;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as Buffer | string;
    if (name.length === 14) {
      const value = raw[i + 1] as Buffer | string;
      if (value.length > 15 && name.toString('latin1').toLowerCase() === 'content-length' && !isSafeContentLength(value.toString('latin1').trim())) {
        return 'content-length-not-safe-integer';
      }
      continue;
    }
    if (name.length !== 17 || name.toString('latin1').toLowerCase() !== 'transfer-encoding') continue;
    if (version?.isReceivedInHttp10()) return 'transfer-encoding-in-http/1.0';
    for (const token of (raw[i + 1] as Buffer | string).toString('latin1').split(',')) {
      const coding = token.trim().toLowerCase();
      if (coding === '') continue;
      if (isChunked || (coding !== 'chunked' && coding !== 'identity')) return 'transfer-coding-not-implemented';
      if (coding === 'chunked') isChunked = true;
    }
  }
  return null;
}

/**
 * A Content-Length (digits only: node's parser and llhttp refuse anything else) whose value is a safe
 * integer, so every reader of it, undici's float included, gets the same number. Fifteen digits always
 * are; a longer run with leading zeros may be.
 */
export function isSafeContentLength(value: string): boolean {
  return value.length <= 15 || Number.isSafeInteger(Number(value));
}

/** The value of the first header `name` (lower-case) in a raw list, or null. */
export function rawHeader(raw: readonly string[], name: string): string | null {
  for (let i = 0; i + 1 < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) return raw[i + 1] as string;
  return null;
}

/**
 * Basic credentials (RFC 7617 §2): one base64 token, padding only at its end. Node's base64
 * decoder skips characters outside the alphabet and stops at the first `=`, so without this check
 * `Basic <token> junk`, `<token>!!` and two credentials joined by a comma decoded as the first.
 */
const BASIC_TOKEN = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * Whether `token` (BASIC_TOKEN's alphabet) is the RFC 4648 §4 encoding of `bytes`, its padding
 * left off or not: node's decoder also drops a last character that makes no byte (a length of
 * 4n + 1), padding where none is due or too much of it, and non-zero bits in the last
 * character (§3.5), so `<token>x`, `<token>=` or `…cHd=` for `…cHc=` decoded as the token itself.
 */
function isCanonicalBase64(token: string, bytes: Buffer): boolean {
  const canonical = bytes.toString('base64');
  if (token.length === canonical.length) return token === canonical;
  let unpadded = canonical.length;
  while (unpadded > 0 && canonical.charCodeAt(unpadded - 1) === 0x3d) unpadded--;
  return token.length === unpadded && canonical.startsWith(token);
}

/** What a malformed Basic value yields: an empty user, refused as bad credentials. */
const MALFORMED: { readonly username: string; readonly password: string } = Object.freeze({ username: '', password: '' });

/**
 * The user and password of a `Proxy-Authorization: Basic …` header, or null when absent or of
 * another scheme. The scheme (case-insensitive, RFC 9110 §11.1) ends at the first SP or HTAB; only
 * SP may follow it (`1*SP` before the token68, RFC 9110 §11.4). A malformed Basic value (`Basic`
 * then HTAB, no token, not one canonical base64 token, no colon) yields an empty user so identity resolution
 * refuses it: before, `Basic<TAB><token>` and an empty `Basic` were read as no credentials at all.
 */
export function parseProxyBasic(value: string | undefined): { username: string; password: string } | null {
  if (!value) return null;
  let end = 0;
  while (end < value.length && value.charCodeAt(end) !== 0x20 && value.charCodeAt(end) !== 0x09) end++;
  if (end !== 5 || value.slice(0, 5).toLowerCase() !== 'basic') return null;
  let start = end;
  while (value.charCodeAt(start) === 0x20) start++;
  // No SP after the scheme (HTAB, or nothing): malformed, as is a token that does not start at once.
  const token = start === end ? '' : value.slice(start).trimEnd();
  if (!BASIC_TOKEN.test(token)) return MALFORMED;
  const bytes = Buffer.from(token, 'base64');
  if (!isCanonicalBase64(token, bytes)) return MALFORMED;
  const decoded = bytes.toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return MALFORMED;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** A serialised request head for a raw upstream socket (the Upgrade path): origin-form target. */
export function serialiseRequestHead(method: string, target: string, headers: readonly string[]): string {
  let head = `${method} ${target} HTTP/1.1\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}\r\n`;
}

/** A field name (RFC 9110 §5.1: a token). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Optional whitespace around a field value (RFC 9110 §5.5: SP and HTAB only). */
const OWS = /^[ \t]+|[ \t]+$/g;

/**
 * One `name: value` line of a head we parse ourselves (the CONNECT fast path, an Upgrade response):
 * the name as written and the value without its surrounding OWS, or null for no name, a name that
 * is not a token, or an obs-fold continuation line (it starts with SP or HTAB).
 */
export function splitHeaderLine(line: string): { name: string; value: string } | null {
  const colon = line.indexOf(':');
  if (colon <= 0) return null;
  const name = line.slice(0, colon);
  if (!TOKEN.test(name)) return null;
  return { name, value: line.slice(colon + 1).replace(OWS, '') };
}
