/**
 * Coded gateway failures. A deny is a Decision (policy/types.ts), never an error; these are the
 * real failures. Codes are stable: operators alert on them. `gateway/reject.ts` maps each to an
 * HTTP status and a SOCKS5 reply byte, exhaustively.
 */
import { isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { formatAuthority } from '../policy/address.ts';

export const GATEWAY_ERROR_CODES = [
  'EGW_BAD_REQUEST', // malformed request line / authority / smuggling shape
  'EGW_TRANSFER_CODING', // a request body in a transfer coding the gateway does not implement (`gzip, chunked`): 501
  'EGW_HTTP_VERSION', // a request line in HTTP/1 syntax naming another major version (`HTTP/2.0`): 505
  'EGW_EXPECTATION_FAILED', // an HTTP/1.1 request whose Expect holds a member other than 100-continue (RFC 9110 §10.1.1): 417
  'EGW_HEADERS_TOO_LARGE', // request headers over limits.maxHeaderBytes
  'EGW_HEADER_TIMEOUT', // slowloris: headers not complete within limits.headerTimeoutMs
  'EGW_SOCKS_PROTOCOL', // bad SOCKS bytes
  'EGW_SOCKS_COMMAND', // BIND or unknown command
  'EGW_SOCKS_ADDRESS_TYPE', // unknown ATYP
  'EGW_AUTH_REQUIRED', // requireAuth and no / wrong credentials
  'EGW_DNS_FAILED', // name did not resolve
  'EGW_DIAL_REFUSED', // upstream refused the connection
  'EGW_DIAL_UNREACHABLE', // network/host unreachable
  'EGW_DIAL_TIMEOUT', // upstream did not answer within limits.connectTimeoutMs
  'EGW_OUT_OF_DESCRIPTORS', // the gateway's own descriptor limit (EMFILE/ENFILE): no socket for the dial
  'EGW_OUT_OF_SOCKETS', // the gateway's own local ports or socket memory ran out (EADDRNOTAVAIL, ENOBUFS, ENOMEM): no dial
  'EGW_OUT_OF_RELAY_PORTS', // no port of limits.udpRelayPorts free for a SOCKS5 UDP relay within the bounded attempts: ASSOCIATE refused
  'EGW_UPSTREAM_PROXY', // the parent proxy refused or failed
  'EGW_UPSTREAM_PROXY_TIMEOUT', // the parent proxy did not accept the connection, or answer before it was asked for the destination, in time (504)
  'EGW_UPSTREAM_RESET', // upstream closed mid-response
  'EGW_UPSTREAM_BAD_RESPONSE', // the origin answered, but not in valid HTTP/1.1 (malformed, smuggling-shaped, too large a head)
  'EGW_SELF_DIAL', // destination is one of the gateway's own listeners
  'EGW_VIA_LOOP', // the request's Via already names this gateway: it came back round a loop of proxies (508)
  'EGW_FLOW_LIMIT', // per-identity concurrency or new-flow rate
  'EGW_SOURCE_CONNECTIONS', // limits.maxConnectionsPerSource: too many client connections open from one address
  'EGW_SHUTTING_DOWN', // draining: no new flows
  'EGW_FLOW_LOG_UNAVAILABLE', // the flow log cannot be written (flowLog.onError: refuse): no unrecorded flows
  'EGW_CONFIG_INVALID',
] as const;
export type GatewayErrorCode = (typeof GATEWAY_ERROR_CODES)[number];

export class GatewayError extends Error {
  readonly code: GatewayErrorCode;
  constructor(code: GatewayErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'GatewayError';
    this.code = code;
  }
}

/** Map a Node errno from a dial to a gateway code (done once, here). */
export function dialErrorCode(err: unknown): GatewayErrorCode {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case 'ECONNREFUSED':
      return 'EGW_DIAL_REFUSED';
    case 'ETIMEDOUT':
    case 'EGW_DIAL_TIMEOUT':
      return 'EGW_DIAL_TIMEOUT';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NODATA':
    case 'EAI_NONAME':
      return 'EGW_DNS_FAILED';
    case 'ECONNRESET':
    case 'EPIPE':
      return 'EGW_UPSTREAM_RESET';
    // The gateway could not open a socket at all: nothing was sent, the destination is not to blame.
    case 'EMFILE':
    case 'ENFILE':
      return 'EGW_OUT_OF_DESCRIPTORS';
    // No local port left for the destination's address and port (EADDRNOTAVAIL), or no kernel
    // memory for the socket: the gateway's shortage too, nothing was sent. But an IPv6 destination
    // on a host without an IPv6 address (IPv6 disabled) fails EADDRNOTAVAIL at once: unreachable.
    case 'EADDRNOTAVAIL':
      return isIPv6OfHostWithout(err) ? 'EGW_DIAL_UNREACHABLE' : 'EGW_OUT_OF_SOCKETS';
    case 'ENOBUFS':
    case 'ENOMEM':
      return 'EGW_OUT_OF_SOCKETS';
    default:
      return 'EGW_DIAL_UNREACHABLE';
  }
}

/** Whether the host had an IPv6 address at `ipv6CheckedAt` (one look at the interfaces per 10 s at most). */
let hasIPv6 = true;
let ipv6CheckedAt = Number.NEGATIVE_INFINITY;

/**
 * Whether `err` (a connect's EADDRNOTAVAIL) is for an IPv6 destination (node names it in
 * `address`) while no interface of the host has an IPv6 address (net.ipv6.conf.*.disable_ipv6, a
 * container's default): no source address for it, not a port shortage. Only on that errno; the
 * interfaces are listed as self-dial.ts lists them (os.networkInterfaces(), a netlink query).
 */
function isIPv6OfHostWithout(err: unknown): boolean {
  const address = (err as { address?: unknown } | undefined)?.address;
  if (typeof address !== 'string' || !isIPv6(address)) return false;
  const now = Date.now();
  const age = now - ipv6CheckedAt;
  if (age < 0 || age >= 10_000) {
    ipv6CheckedAt = now;
    try {
      hasIPv6 = Object.values(networkInterfaces()).some((list) => list?.some((a) => a.family === 'IPv6') === true);
    } catch {
      // Not listable (a sandbox without netlink, self-dial.ts): a port shortage, as before.
      hasIPv6 = true;
    }
  }
  return !hasIPv6;
}

/**
 * A dial that failed for want of the gateway's own resources (descriptors, local ports, socket
 * memory): the destination is not to blame, no other of its addresses is tried, and the detectors
 * see no failed connect.
 */
export function isOwnShortage(code: GatewayErrorCode | null): boolean {
  return code === 'EGW_OUT_OF_DESCRIPTORS' || code === 'EGW_OUT_OF_SOCKETS';
}

/** The errno under a GatewayError (EMFILE, ENFILE, EADDRNOTAVAIL, …), for the log; `unknown` when it has none. */
export function errnoOf(err: unknown): string {
  const cause = (err as { cause?: { code?: unknown } } | null)?.cause;
  return typeof cause?.code === 'string' ? cause.code : 'unknown';
}

/**
 * An error's message with the endpoint node writes into a failed connect's (`connect ECONNREFUSED
 * ::1:443`, from the error's `address` and `port`) in the gateway's form (`[::1]:443`), as every
 * other host and port the gateway writes; any other message as it is. Called only on a failure.
 */
export function errorText(err: Error): string {
  const { address, port } = err as { address?: unknown; port?: unknown };
  if (typeof address !== 'string' || !address.includes(':') || typeof port !== 'number') return err.message;
  return err.message.replace(`${address}:${port}`, formatAuthority(address, port));
}
