/**
 * Request lines node's parser (llhttp) takes but that are not HTTP/1.x requests. llhttp reads an
 * RTSP or ICE request line (`GET http://o/ RTSP/1.0`, `SOURCE /m ICE/1.0`) in HTTP mode and reports
 * it as version 1.0: IncomingMessage has no protocol, so node:http served it as HTTP/1.0. RFC 9112
 * §2.3 and §3: an HTTP request line ends in `HTTP/` DIGIT `.` DIGIT; any other protocol name is no
 * HTTP request at all, answered 400 (not 505: 505 is for an HTTP version the gateway does not
 * support, `HTTP/2.0`, http-target.ts httpVersionFault).
 *
 * The same look at a connection's first line answers, as soon as that line is whole, what node's
 * parser would hold until limits.headerTimeoutMs: an HTTP/0.9 line (`GET /`, no version: llhttp
 * then waits for header lines an HTTP/0.9 client never sends) is 400, a line naming `HTTP/2.0` (the
 * HTTP/2 preface `PRI * HTTP/2.0` included) is 505 as such lines are on node:http's path.
 *
 * Judged where the gateway sees a request's bytes: those the CONNECT front or the fast path hand to
 * node:http (a connection's first request, or the one the fast path did not serve: the first line
 * when it is whole in them), and, for a request node:http announces as HTTP/1.0, the packet its
 * parser was reading when it announced it (parser.getCurrentBuffer()), which holds the request line
 * unless the head was split after it.
 */
import type { IncomingMessage } from 'node:http';

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTTP_SLASH = Buffer.from('HTTP/', 'latin1');
const HTTP_2 = Buffer.from('HTTP/2.0', 'latin1');

/** Bytes that start a request: the fault of its first line when that line is whole in them, or null. */
export function requestLineFault(buf: Buffer): string | null {
  let start = 0;
  // llhttp skips empty lines before a request line.
  while (start < buf.length && (buf[start] === CR || buf[start] === LF)) start++;
  const end = buf.indexOf(LF, start);
  if (end < 0) return null;
  return lineFault(buf, start, end);
}

/**
 * The fault of the request line node:http announced `req` for (HTTP/1.0 only: what llhttp reports
 * for RTSP/1.0 and ICE/1.0), read from the packet its parser holds. Must be called while node:http
 * announces the request (its 'request' event): the parser holds that packet only then. Null when
 * the line is HTTP, or not in that packet (a head split after its request line: served as before).
 */
export function announcedLineFault(req: IncomingMessage): string | null {
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor !== 0) return null;
  const parser = (req.socket as { parser?: { getCurrentBuffer?: () => unknown } | null }).parser;
  const buf = parser?.getCurrentBuffer?.();
  if (!Buffer.isBuffer(buf)) return null;
  // Every line in the packet that starts with this method and target: one of them is this request's
  // (header lines cannot start so: a name is a token and a colon). Any that is not HTTP refuses it.
  const prefix = Buffer.from(`${req.method ?? ''} ${req.url ?? ''} `, 'latin1');
  for (let at = buf.indexOf(prefix); at >= 0; at = buf.indexOf(prefix, at + 1)) {
    if (at > 0 && buf[at - 1] !== LF) continue;
    const end = buf.indexOf(LF, at);
    if (end < 0) continue;
    const fault = lineFault(buf, at, end);
    if (fault !== null) return fault;
  }
  return null;
}

/**
 * The line from `start` to its LF at `end`: `http/0.9` for a method and target with no version
 * (400, as node:http's path answers a whole HTTP/0.9 head), `http-version-not-supported` for
 * `HTTP/2.0` (505, as http-target.ts httpVersionFault; the HTTP/2 preface `PRI * HTTP/2.0` too),
 * `not-http` when its last word is not `HTTP/…`, else null.
 */
function lineFault(buf: Buffer, start: number, end: number): string | null {
  const last = buf[end - 1] === CR ? end - 1 : end;
  const firstSpace = buf.indexOf(SP, start);
  // One word: not this check's (node's parser refuses it or waits).
  if (firstSpace <= start || firstSpace >= last - 1) return null;
  const lastSpace = buf.lastIndexOf(SP, last - 1);
  if (lastSpace === firstSpace) return 'http/0.9';
  const version = lastSpace + 1;
  if (last - version < HTTP_SLASH.length || buf.compare(HTTP_SLASH, 0, HTTP_SLASH.length, version, version + HTTP_SLASH.length) !== 0) return 'not-http';
  return last - version === HTTP_2.length && buf.compare(HTTP_2, 0, HTTP_2.length, version, last) === 0 ? 'http-version-not-supported' : null;
}
