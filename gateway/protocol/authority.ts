/**
 * Parse and normalise a destination authority ("host:port") the way the policy sees it:
 * lower-case, IDNA names as punycode (url.domainToASCII), trailing dot removed, IPv4 in its
 * canonical dotted form (so "0x7f.1" and "2130706433" are seen as 127.0.0.1, not as names), IPv6
 * without brackets in its RFC 5952 form (an IPv4-mapped address with its dotted tail,
 * `::ffff:127.0.0.3`: policy/address.ts, withMappedTail). Anything ambiguous is refused rather than guessed:
 * a host the policy matched must be the host that is dialled.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { formatAuthority, withMappedTail } from '../../policy/address.ts';
import { HOST_LABEL, hostToAscii, NOT_IN_NAME } from '../../policy/host-pattern.ts';

export interface Authority {
  /** Lower-case punycode name, dotted IPv4, or RFC 5952 IPv6 without brackets. */
  readonly host: string;
  readonly port: number;
  readonly isIp: boolean;
}

/** Longest DNS name (RFC 1035 §2.3.4, without the trailing dot). */
const MAX_NAME_LENGTH = 253;
const PORT = /^[0-9]{1,5}$/;

/**
 * Normalise a host (no port): returns the canonical form or null when it is not a usable
 * destination. IPv6 may be given with or without brackets; zone ids are refused.
 */
export function normaliseHost(input: string): { host: string; isIp: boolean } | null {
  if (input.length === 0 || input.length > MAX_NAME_LENGTH + 3) return null;
  // Fast paths for the common shapes (they cost a few µs per flow otherwise): a canonical dotted
  // IPv4 literal, and a plain lower-case ASCII name that domainToASCII would hand back unchanged.
  if (isIPv4(input)) return { host: input, isIp: true };
  if (isPlainName(input)) return { host: input, isIp: false };
  let text = input;
  if (text.startsWith('[')) {
    if (!text.endsWith(']')) return null;
    text = text.slice(1, -1);
    if (!isIPv6(text)) return null;
  }
  if (text.includes(':') && isIPv6(text)) {
    // The WHATWG serialiser gives the compressed lower-case form (an IPv4-mapped address in hex,
    // rewritten with its dotted tail: the form a SOCKS5 ATYP 0x04 request and DNS give, one spelling
    // per address in the records); zone ids ("%eth0") fail isIPv6 or URL.
    try {
      const serialised = new URL(`http://[${text}]/`).hostname;
      return { host: withMappedTail(serialised.slice(1, -1)), isIp: true };
    } catch {
      return null;
    }
  }
  if (NOT_IN_NAME.test(text)) return null;
  const ascii = hostToAscii(text);
  if (ascii === '') return null;
  // domainToASCII turns every IPv4 spelling (hex, octal, short, integer) into dotted decimal.
  if (isIPv4(ascii)) return { host: ascii, isIp: true };
  const name = ascii.endsWith('.') ? ascii.slice(0, -1) : ascii;
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) return null;
  for (const label of name.split('.')) if (!HOST_LABEL.test(label)) return null;
  // A name whose last label is all digits would be read as an IPv4 number by some resolvers.
  const last = name.slice(name.lastIndexOf('.') + 1);
  if (/^[0-9]+$/.test(last)) return null;
  return { host: name, isIp: false };
}

/**
 * A name already in its normal form: labels of [a-z0-9_-] that pass HOST_LABEL, no trailing dot, no
 * punycode (hostToAscii validates "xn--" labels), and a last label that starts with a letter —
 * so no resolver or URL parser could read it as an IPv4 number ("0x7f.1", "1.2.3.4.5").
 */
function isPlainName(text: string): boolean {
  if (text.length > MAX_NAME_LENGTH) return false;
  let labelStart = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 0x2e;
    if (c === 0x2e /* . */) {
      if (i === labelStart) return false;
      if (i - labelStart >= 4 && text.startsWith('xn--', labelStart)) return false;
      if (!HOST_LABEL.test(text.slice(labelStart, i))) return false;
      labelStart = i + 1;
    } else if (!((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f)) {
      return false;
    }
  }
  const last = text.charCodeAt(text.lastIndexOf('.') + 1);
  return last >= 0x61 && last <= 0x7a;
}

/** Parse a port: decimal digits only, 1–65535. */
export function parsePort(text: string): number | null {
  if (!PORT.test(text)) return null;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : null;
}

/**
 * Parse "host:port" (CONNECT target, Host header). With `defaultPort` null the port is required
 * (CONNECT); otherwise a missing or empty port ("host:", RFC 3986 §3.2.3, RFC 9110 §4.2.3) takes the
 * default. Returns null for anything malformed.
 */
export function parseAuthority(text: string, defaultPort: number | null = null): Authority | null {
  let hostPart: string;
  let portPart: string | null = null;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0) return null;
    hostPart = text.slice(0, close + 1);
    const rest = text.slice(close + 1);
    if (rest.length > 0) {
      if (!rest.startsWith(':')) return null;
      portPart = rest.slice(1);
    }
  } else {
    const colon = text.lastIndexOf(':');
    if (colon >= 0) {
      // A bare IPv6 literal without brackets is ambiguous with a port: refuse it.
      if (text.indexOf(':') !== colon) return null;
      hostPart = text.slice(0, colon);
      portPart = text.slice(colon + 1);
    } else {
      hostPart = text;
    }
  }
  let port: number | null;
  if (portPart === null || (portPart === '' && defaultPort !== null)) port = defaultPort;
  else port = parsePort(portPart);
  if (port === null) return null;
  const host = normaliseHost(hostPart);
  if (!host) return null;
  return { host: host.host, port, isIp: host.isIp };
}

/** "host:port" with brackets around IPv6, for logs, Host headers and upstream CONNECT lines (policy/address.ts). */
export { formatAuthority };
