/**
 * Community ID v1 (https://github.com/corelight/community-id-spec): a flow hash shared with Zeek and
 * Suricata so egressgate records join their logs. sha1(seed ‖ saddr ‖ daddr ‖ proto ‖ 0 ‖ sport ‖ dport),
 * endpoints ordered so both directions hash alike, base64, prefixed "1:".
 */
import { hash } from 'node:crypto';
import { parseIPv4, parseIPv6 } from '../../policy/address.ts';

const PROTO_TCP = 6;
const PROTO_UDP = 17;

/** Address bytes into out at `at`: 4 (IPv4), 16 (IPv6) or 0 (not an IP literal). */
function writeIp(ip: string, out: Buffer, at: number): number {
  const v4 = parseIPv4(ip);
  if (v4 !== null) {
    out.writeUInt32BE(v4, at);
    return 4;
  }
  const v6 = parseIPv6(ip);
  if (v6 === null) return 0;
  out.set(v6, at);
  return 16;
}

// Scratch space, reused by every call (the hash is computed before communityId returns):
// the two addresses, then the hashed message seed ‖ saddr ‖ daddr ‖ proto ‖ 0 ‖ sport ‖ dport.
const addr = Buffer.alloc(32);
const message = Buffer.alloc(2 + 32 + 2 + 4);

/** Are the 16 bytes at `at` an IPv4-mapped IPv6 address (`::ffff:0:0/96`)? */
function isMapped(b: Buffer, at: number): boolean {
  for (let i = at; i < at + 10; i++) if (b[i] !== 0) return false;
  return b[at + 10] === 0xff && b[at + 11] === 0xff;
}

/**
 * Community ID v1 string for a TCP or UDP flow, or null if an address is not an IP literal or the
 * two are of two families. An IPv4-mapped address is hashed as its IPv4 address, facing an IPv4 or
 * an IPv4-mapped one: the packets of an IPv4 client and of the gateway's dial to `::ffff:a.b.c.d`
 * are IPv4 on the wire, so the pair hashes as a dotted destination's does. Any other mixed pair (an
 * IPv6 address and an IPv4 one, a mapped one included: an IPv6 client's flow to `::ffff:a.b.c.d` is
 * IPv6 on one side and IPv4 on the other, as to `a.b.c.d`) is no one packet's: the spec hashes one
 * family's pair (docs/spec-notes.md, Records).
 */
export function communityId(
  proto: 'tcp' | 'udp',
  srcIp: string,
  srcPort: number,
  dstIp: string,
  dstPort: number,
  seed = 0,
): string | null {
  let n = writeIp(srcIp, addr, 0);
  if (n === 0) return null;
  let m = writeIp(dstIp, addr, 16);
  if (m === 0) return null;
  // A mapped address is its IPv4 address (the family its packets have on the wire).
  if (n === 16 && isMapped(addr, 0)) {
    addr.copy(addr, 0, 12, 16);
    n = 4;
  }
  if (m === 16 && isMapped(addr, 16)) {
    addr.copy(addr, 16, 28, 32);
    m = 4;
  }
  if (m !== n) return null;
  // Order the endpoints so both directions hash alike: smaller address (then port) first.
  let cmp = 0;
  for (let i = 0; i < n && cmp === 0; i++) cmp = (addr[i] as number) - (addr[16 + i] as number);
  const swap = cmp > 0 || (cmp === 0 && srcPort > dstPort);
  let o = message.writeUInt16BE(seed, 0);
  o += addr.copy(message, o, swap ? 16 : 0, (swap ? 16 : 0) + n);
  o += addr.copy(message, o, swap ? 0 : 16, (swap ? 0 : 16) + n);
  o = message.writeUInt8(proto === 'tcp' ? PROTO_TCP : PROTO_UDP, o);
  o = message.writeUInt8(0, o);
  o = message.writeUInt16BE(swap ? dstPort : srcPort, o);
  o = message.writeUInt16BE(swap ? srcPort : dstPort, o);
  return `1:${hash('sha1', message.subarray(0, o), 'base64')}`;
}
