/**
 * Byte-level scanning of HTTP/1.1 request heads for the fast paths in front of node:http
 * (http-connect-front.ts for CONNECT, http-fast-head.ts for absolute-URI GET and HEAD). One
 * table says which bytes may appear where; anything outside it makes the fast path give the head to
 * node:http unread, so these scanners only ever accept a strict subset of what node accepts.
 */
import type { IncomingHttpHeaders } from 'node:http';

/** Byte may appear in a CONNECT target (authority-form: host or [v6] literal, ':' and port). */
export const IN_TARGET = 1;
/** Byte may appear in a field name (RFC 9110 §5.1: a token). */
export const IN_TOKEN = 2;
/** Byte may appear in an absolute-form target (RFC 3986 unreserved, reserved except '#', and '%'). */
export const IN_URI = 4;

export const CLASS = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-~_') CLASS[c.charCodeAt(0)] = IN_TARGET | IN_TOKEN | IN_URI;
for (const c of ':[]') CLASS[c.charCodeAt(0)] = IN_TARGET | IN_URI;
for (const c of "!$%&'*+") CLASS[c.charCodeAt(0)] = IN_TOKEN | IN_URI;
for (const c of '#^`|') CLASS[c.charCodeAt(0)] = IN_TOKEN;
for (const c of '/?@(),;=') CLASS[c.charCodeAt(0)] = IN_URI;

const SP = 0x20;
const HTAB = 0x09;
const CR = 0x0d;
const LF = 0x0a;
const COLON = 0x3a;

/**
 * Scan the header lines of a head from `start` to `last` (the index of the blank line's CRLF):
 * each line `token ":" OWS value OWS CRLF` with a printable-ASCII value. Names go into `headers`
 * lower-cased, values without their OWS; with `raw`, name (as written) and value are also appended
 * there. Returns false — the head belongs to node:http — for any other byte, obs-fold, a bare CR or
 * LF, a name seen twice, or a name in `refused`.
 */
export function scanHeaderLines(
  buf: Buffer,
  start: number,
  last: number,
  refused: ReadonlySet<string>,
  headers: IncomingHttpHeaders,
  raw: string[] | null,
): boolean {
  let i = start;
  while (i < last) {
    const nameStart = i;
    while (((CLASS[buf[i] as number] as number) & IN_TOKEN) !== 0) i++;
    // An empty name, a space before the colon, obs-fold (a line starting with SP or HTAB), bare LF...
    if (i === nameStart || buf[i] !== COLON) return false;
    const nameEnd = i++;
    while (buf[i] === SP || buf[i] === HTAB) i++;
    const valueStart = i;
    let valueEnd = i;
    for (;;) {
      const c = buf[i] as number;
      if (c === CR) break;
      // Printable ASCII and HTAB only: control bytes, bare LF and obs-text go to node:http.
      if ((c < SP && c !== HTAB) || c > 0x7e) return false;
      i++;
      if (c !== SP && c !== HTAB) valueEnd = i;
    }
    // A CR must end the line: a bare CR goes to node:http. (The scan cannot pass the blank line: a CR is there.)
    if (buf[i + 1] !== LF) return false;
    i += 2;
    const name = buf.toString('latin1', nameStart, nameEnd);
    const key = name.toLowerCase();
    if (key in headers || refused.has(key)) return false;
    const value = buf.toString('latin1', valueStart, valueEnd);
    headers[key] = value;
    if (raw !== null) raw.push(name, value);
  }
  return true;
}
