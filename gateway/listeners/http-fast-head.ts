/**
 * The request heads the absolute-URI fast path (http-fast-path.ts) takes itself: `GET` or `HEAD`
 * of an `http://` absolute-form target over HTTP/1.1, with no body and nothing that changes how a
 * connection goes on. Pure: bytes in, a parsed head or null out. Null means "not ours": the bytes
 * go to node:http unread, which parses, refuses or serves them as it always did. So this parser
 * accepts a strict subset of what node's strict parser accepts, read the same way:
 *  - request line `GET|HEAD SP http://<target> SP HTTP/1.1 CRLF`, target bytes RFC 3986 only;
 *  - header lines as scanHeaderLines (http-head-bytes.ts) reads them: token names, printable values,
 *    CRLF ends, no name twice;
 *  - a Host, if any, of valid syntax (isValidHostField: node:http refuses any other, RFC 9112 §3.2);
 *  - no Content-Length or Transfer-Encoding (a request without them has no body, RFC 9112 §6.3),
 *    no Expect (100-continue is node:http's `checkContinue` path), no Upgrade, and no
 *    `Connection: upgrade`;
 *  - `Proxy-Connection` read as llhttp reads it: as `Connection` (its `close` makes the request the
 *    connection's last, its `upgrade` sends the head to node:http);
 *  - the whole head within `maxHeaderBytes`.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { CLASS, IN_URI, scanHeaderLines } from './http-head-bytes.ts';
import { isValidHostField } from './http-target.ts';

export interface FastRequestHead {
  readonly method: 'GET' | 'HEAD';
  /** The absolute-form target as sent. */
  readonly url: string;
  /** Lower-case names, each once. */
  readonly headers: IncomingHttpHeaders;
  /** Names as written and values, flat `[name, value, …]` like IncomingMessage.rawHeaders. */
  readonly rawHeaders: string[];
  /** The client asked to close the connection after this response (`Connection: close`). */
  readonly isLast: boolean;
  /** Offset just past the head's blank line. */
  readonly end: number;
}

const GET = Buffer.from('GET http://', 'latin1');
const HEAD = Buffer.from('HEAD http://', 'latin1');
const VERSION_CRLF = Buffer.from(' HTTP/1.1\r\n', 'latin1');
const REFUSED: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding', 'expect', 'upgrade']);

/** Parse a complete GET or HEAD head at the start of `buf`, or null (the head is node:http's). */
export function parseFastRequestHead(buf: Buffer, maxHeaderBytes: number): FastRequestHead | null {
  let method: 'GET' | 'HEAD';
  let i: number;
  if (buf.length > GET.length && buf.compare(GET, 0, GET.length, 0, GET.length) === 0) {
    method = 'GET';
    i = 4;
  } else if (buf.length > HEAD.length && buf.compare(HEAD, 0, HEAD.length, 0, HEAD.length) === 0) {
    method = 'HEAD';
    i = 5;
  } else return null;
  const blank = buf.indexOf('\r\n\r\n', 0, 'latin1');
  if (blank < 0 || blank + 4 > maxHeaderBytes) return null;
  const targetStart = i;
  while (i < blank && ((CLASS[buf[i] as number] as number) & IN_URI) !== 0) i++;
  if (i + VERSION_CRLF.length > blank + 2) return null;
  if (buf.compare(VERSION_CRLF, 0, VERSION_CRLF.length, i, i + VERSION_CRLF.length) !== 0) return null;
  const url = buf.toString('latin1', targetStart, i);
  const headers: IncomingHttpHeaders = {};
  const rawHeaders: string[] = [];
  if (!scanHeaderLines(buf, i + VERSION_CRLF.length, blank + 2, REFUSED, headers, rawHeaders)) return null;
  if (headers.host !== undefined && !isValidHostField(headers.host)) return null;
  const connection = connectionOptions(headers.connection);
  if (connection === null) return null;
  // llhttp takes Proxy-Connection for Connection (its `close` ends the connection on node:http).
  const proxyConnection = connectionOptions(headers['proxy-connection'] as string | undefined);
  if (proxyConnection === null) return null;
  return { method, url, headers, rawHeaders, isLast: connection || proxyConnection, end: blank + 4 };
}

/** A Connection field's options: true with `close`, null with `upgrade` (node:http's), else false. */
function connectionOptions(value: string | undefined): boolean | null {
  if (value === undefined) return false;
  let isClose = false;
  for (const token of value.split(',')) {
    const option = token.trim().toLowerCase();
    if (option === 'upgrade') return null;
    if (option === 'close') isClose = true;
  }
  return isClose;
}
