/**
 * Client addresses as the identity code keys them: zone id dropped, IPv4-mapped IPv6
 * (`::ffff:10.1.2.3`, what a dual-stack listener reports for IPv4 clients) unwrapped to `10.1.2.3`,
 * so host inventory, trusted sources and the auth throttle see one form per client.
 */
import { isIPv6 } from 'node:net';
import { type ParsedIp, parseIp } from '../../policy/cidr.ts';
import { formatIPv4 } from '../../policy/address.ts';

export interface ClientAddress {
  /** Canonical text: dotted quad for IPv4 (mapped included), otherwise the IPv6 text without zone. */
  readonly text: string;
  /** Parsed form for CIDR lookups, or null when `clientIp` is not an IP literal. */
  readonly parsed: ParsedIp | null;
}

/** Normalises a socket's remoteAddress for identity lookups. */
export function clientAddress(clientIp: string): ClientAddress {
  const zone = clientIp.indexOf('%');
  const ip = zone === -1 ? clientIp : clientIp.slice(0, zone);
  const parsed = parseIp(ip);
  if (parsed === null) return { text: ip, parsed: null };
  // An IPv4 value written with a colon can only be IPv4-mapped IPv6 (no IPv6 regex for plain IPv4).
  if (parsed.v4 !== null && ip.includes(':') && isIPv6(ip)) return { text: formatIPv4(parsed.v4), parsed: { v4: parsed.v4, v6: null } };
  return { text: ip.toLowerCase(), parsed };
}
