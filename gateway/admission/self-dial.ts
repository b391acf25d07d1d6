/**
 * Admission's step 6: the gateway never dials itself (its listeners, a live SOCKS5 UDP association's
 * relay socket), however the address is spelled; and which addresses are this machine's own.
 */
import { networkInterfaces } from 'node:os';
import { effectiveIPv4, unmapIPv4 } from '../../policy/address.ts';
import type { Decision, Mode, Protocol } from '../../policy/types.ts';
import type { GatewayContext } from '../context.ts';
import { formatAuthority } from '../protocol/authority.ts';
import { fixed } from './refusals.ts';

/** How long a listing of this machine's interface addresses is used (DHCP and hot-plug change them). */
const LOCAL_ADDRESSES_MS = 60_000;
let localAddresses: Set<string> | null = null;
let localListedAt = Number.NEGATIVE_INFINITY;
let isListingWarned = false;

/**
 * This machine's own addresses, listed again after LOCAL_ADDRESSES_MS; null when they cannot be
 * listed (os.networkInterfaces() needs a netlink socket, which a sandbox may forbid): the callers
 * then take every address for a local one, so the self-dial guard fails closed.
 */
function localSet(): Set<string> | null {
  const now = Date.now();
  // A clock stepped back makes the listing stale too (its age negative), not fresh until the clock
  // catches up with it.
  const age = now - localListedAt;
  if (age >= 0 && age < LOCAL_ADDRESSES_MS) return localAddresses;
  localListedAt = now;
  const set = new Set(['127.0.0.1', '::1', '0.0.0.0', '::']);
  try {
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) set.add(a.address);
    localAddresses = set;
  } catch (err) {
    localAddresses = null;
    if (!isListingWarned) {
      isListingWarned = true;
      process.emitWarning(
        `cannot list this machine's network addresses (${(err as Error).message}): every address on a port the gateway listens on with a wildcard listener is taken for the gateway's own and refused. Allow netlink sockets (systemd: RestrictAddressFamilies=… AF_NETLINK).`,
        { code: 'EGRESSGATE_NO_INTERFACES' },
      );
    }
  }
  return localAddresses;
}

/**
 * The address a dial to `ip` reaches, in the form listener addresses are written: an IPv4 address
 * carried in IPv6 (IPv4-mapped in any spelling, `::ffff:7f00:1` as much as `::ffff:127.0.0.1`; NAT64,
 * 6to4, Teredo, IPv4-compatible) as that IPv4 address, and the unspecified address as loopback
 * (Linux dials 0.0.0.0 as 127.0.0.1 and :: as ::1).
 */
function dialledForm(ip: string): string {
  const v4 = ip.includes(':') ? (effectiveIPv4(ip) ?? ip) : ip;
  if (v4 === '0.0.0.0') return '127.0.0.1';
  if (v4 === '::') return '::1';
  return v4;
}

/** Is this address one of this machine's own (loopback or an interface), in any spelling? */
export function isLocalAddress(ip: string): boolean {
  const bare = dialledForm(ip);
  if (bare.startsWith('127.')) return true;
  const local = localSet();
  return local === null || local.has(bare);
}

/**
 * The gateway's own listeners as self-dial reads them, rebuilt when the set of listeners changes:
 * their ports, and their addresses with an IPv4-mapped one as its IPv4 address (`[::ffff:127.0.0.1]:p`
 * as `127.0.0.1:p`, the mapped wildcard `[::ffff:0.0.0.0]:p` as `0.0.0.0:p`): a listener bound there
 * takes IPv4 connections, and a destination is compared in its dialled form (plain IPv4).
 */
let selfListeners: { from: ReadonlySet<string>; size: number; ports: Set<number>; keys: Set<string> } | null = null;
function selfListenerSet(addresses: ReadonlySet<string>): { ports: Set<number>; keys: Set<string> } {
  if (selfListeners === null || selfListeners.from !== addresses || selfListeners.size !== addresses.size) {
    const ports = new Set<number>();
    const keys = new Set<string>();
    for (const a of addresses) {
      const colon = a.lastIndexOf(':');
      const port = Number(a.slice(colon + 1));
      ports.add(port);
      const host = a.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
      keys.add(formatAuthority(unmapIPv4(host), port));
    }
    selfListeners = { from: addresses, size: addresses.size, ports, keys };
  }
  return selfListeners;
}

/**
 * Step 6's refusal of a dial to the gateway itself (`selfKind`): block, deny-range, whatever the
 * mode, or null when `ip:port` is not the gateway's. The policy dry run (control-evaluate.ts) asks
 * the same of the running gateway, so its answer is the data plane's.
 */
export function selfDialDecision(ctx: Pick<GatewayContext, 'selfAddresses' | 'udpRelays'>, ip: string, port: number, protocol: Protocol, mode: Mode): Decision | null {
  const self = selfKind(ctx, ip, port, protocol);
  return self === null ? null : fixed('deny-range', 'policy.deny-range', mode, [`${formatAuthority(ip, port)} is ${self} of this gateway`]);
}

/**
 * Whether `ip:port` is the gateway's own, and what: one of its listeners, or (a UDP destination) the
 * relay socket of a live SOCKS5 UDP association, its own or another's. Sending there would loop
 * through the gateway, and a relay whose client on this host associated for any port would take the
 * datagram for its client's and relay it on under that client's identity. Null: not the gateway's.
 */
function selfKind(ctx: Pick<GatewayContext, 'selfAddresses' | 'udpRelays'>, ip: string, port: number, protocol: Protocol): 'a listener' | 'a UDP relay' | null {
  // The listeners are TCP: a datagram to the same port number goes to another socket, never to them.
  const listeners = selfListenerSet(ctx.selfAddresses);
  const isListenerPort = protocol !== 'socks5-udp' && listeners.ports.has(port);
  const isRelayPort = protocol === 'socks5-udp' && ctx.udpRelays.hasPort(port);
  // Most destinations are not on a port the gateway listens or relays on: no string building for those.
  if (!isListenerPort && !isRelayPort) return null;
  const bare = dialledForm(ip);
  // Relays are bound on the address their client reached (never a wildcard): that address only.
  if (isRelayPort && ctx.udpRelays.has(bare, port)) return 'a UDP relay';
  if (!isListenerPort) return null;
  const key = formatAuthority(bare, port);
  if (listeners.keys.has(key)) return 'a listener';
  // A listener on a wildcard address answers on every local address.
  return (listeners.keys.has(`0.0.0.0:${port}`) || listeners.keys.has(`[::]:${port}`)) && isLocalAddress(bare) ? 'a listener' : null;
}

/**
 * Whether a parent proxy at `ip:port` (its address, looked up or as written) is one of the gateway's
 * own TCP listeners: dialling it as a parent would loop through the gateway (SPEC §4: the gateway
 * never dials its own listeners), and a `socks5://` parent carries no Via to stop the loop
 * (gateway/upstream/dial.ts refuses it before dialling). Address spellings as for a destination.
 * Unlike a destination's check, it does not fail closed when this machine's addresses cannot be
 * listed: only loopback then counts as local for a wildcard listener, so a parent on another host
 * that listens on the same port number as the gateway (3128 and 3128) is not refused for it.
 */
export function isOwnListener(ctx: Pick<GatewayContext, 'selfAddresses'>, ip: string, port: number): boolean {
  // Most parents are on a port the gateway does not listen on: no string building for those.
  const listeners = selfListenerSet(ctx.selfAddresses);
  if (!listeners.ports.has(port)) return false;
  const bare = dialledForm(ip);
  if (listeners.keys.has(formatAuthority(bare, port))) return true;
  if (!listeners.keys.has(`0.0.0.0:${port}`) && !listeners.keys.has(`[::]:${port}`)) return false;
  return bare.startsWith('127.') || bare === '::1' || localSet()?.has(bare) === true;
}
