/**
 * A gateway's name in `Via` (RFC 9110 §7.6.3) and the loop check on it. The received-by is a
 * pseudonym, never our address: `egressgate-` and 12 hex digits drawn when the gateway starts
 * (newViaName, once per startGateway), so each gateway (each replica of a deployment, each of two
 * gateways in one process) has a name no other has, and a loop is a message that already carries
 * ITS name, not any egressgate's: two egressgates chained through `upstream` see each other's
 * entries and pass them on. Comments in Via may be removed by any recipient (§7.6.3), so the name
 * is the received-by itself, not a comment. One object per gateway, held by its context, read only.
 */
import { randomBytes } from 'node:crypto';

export interface ViaName {
  /** The received-by of our Via entries (`egressgate-3f9a0c1d2e4b`). */
  readonly pseudonym: string;
  /** Our entry for a message received as HTTP/1.1. */
  readonly value: string;
  /** Our entry for a message received as HTTP/1.0: the received-protocol is the version as received. */
  readonly value10: string;
}

/** A name no other gateway has (48 random bits, drawn at start). */
export function newViaName(): ViaName {
  const pseudonym = `egressgate-${randomBytes(6).toString('hex')}`;
  return { pseudonym, value: `1.1 ${pseudonym}`, value10: `1.0 ${pseudonym}` };
}

/**
 * True when a request's Via (node joins repeated fields with ", ") has an entry received by `name`:
 * the request went through this gateway and came back (a loop of proxies). Entries are
 * `received-protocol RWS received-by [RWS comment]`. Most requests carry no Via: undefined costs one
 * comparison, and one without our name one search.
 */
export function viaNamesUs(via: string | string[] | undefined, name: ViaName): boolean {
  if (via === undefined) return false;
  const text = typeof via === 'string' ? via : via.join(',');
  if (!text.toLowerCase().includes(name.pseudonym)) return false;
  for (const entry of text.split(',')) {
    const fields = entry.trim().split(/[ \t]+/);
    if (fields[1]?.toLowerCase() === name.pseudonym) return true;
  }
  return false;
}

/**
 * The Via entry for a message received as HTTP/`major`.`minor` (the received-protocol is that
 * message's version, not ours). One of two strings made at start.
 */
export function viaFor(name: ViaName, major: number, minor: number): string {
  return major === 1 && minor === 0 ? name.value10 : name.value;
}

/**
 * The Via a CONNECT to an http parent carries for a request that arrived with `received` (its Via
 * field(s), or undefined): the received entries and ours after them, so a parent that is this
 * gateway again (directly or round a ring of gateways) finds its own name and refuses the loop.
 * Without a received Via (most requests, every SOCKS5 flow), our entry as it is: no string built.
 */
export function viaOnward(received: string | string[] | undefined, ours: string): string {
  if (received === undefined) return ours;
  const text = typeof received === 'string' ? received : received.join(', ');
  return text.trim() === '' ? ours : `${text}, ${ours}`;
}
