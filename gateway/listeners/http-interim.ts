/**
 * An origin's 1xx (interim) responses on the absolute-URI paths (RFC 9110 §15.2: a proxy forwards
 * them unless it asked for them itself). The gateway answers `Expect: 100-continue` itself and never
 * sends Expect on, so an origin's 100 is one nobody asked for (undici fails it as a bad response),
 * and a 101 belongs to the Upgrade path (http-upgrade.ts): what comes here is 102, 103 Early Hints
 * and the like. Each is relayed with the final response's header rewriting (forwardResponseHeaders:
 * hop-by-hop fields, Connection-named fields and the proxy's credentials removed, our Via added),
 * never to an HTTP/1.0 client (RFC 9110 §15.2), and at most MAX_INTERIM_RELAYED per request.
 */
import { forwardResponseHeaders, INVALID_FIELD_CHAR, relayedStatusText } from './http-headers.ts';

/**
 * The 1xx responses relayed per request; later ones are dropped (their wait is still bounded:
 * OriginExchange.onInterim). Browsers act on the first 103 and a page rarely sends more than two,
 * so ten lose nothing real, and a client is never sent more than ten heads (each within undici's
 * header size limit) however many the origin sends.
 */
export const MAX_INTERIM_RELAYED = 10;

/** Whether an origin's response with `statusCode` is an interim one the relay may pass on. */
export function isRelayableInterim(statusCode: number): boolean {
  return statusCode > 101 && statusCode < 200;
}

/**
 * The interim response head to send the client (HTTP/1.1, CRLF-terminated, latin1): the origin's
 * status and fields after forwardResponseHeaders, less Content-Length (a 1xx has no content: RFC 9110
 * §8.6) and any value holding a character no field may carry (as the fast path's final head).
 */
export function interimResponseHead(statusCode: number, statusText: string, rawHeaders: readonly (Buffer | string)[], via: string): string {
  const headers = forwardResponseHeaders(rawHeaders, { via });
  let head = `HTTP/1.1 ${statusCode} ${relayedStatusText(statusCode, statusText)}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const name = headers[i] as string;
    const value = headers[i + 1] as string;
    if (INVALID_FIELD_CHAR.test(value) || (name.length === 14 && name.toLowerCase() === 'content-length')) continue;
    head += `${name}: ${value}\r\n`;
  }
  return `${head}\r\n`;
}
