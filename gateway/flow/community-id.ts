/**
 * Community ID v1 (https://github.com/corelight/community-id-spec): a flow hash shared with Zeek and
 * Suricata so egressgate records join their logs. sha1(seed ‖ saddr ‖ daddr ‖ proto ‖ 0 ‖ sport ‖ dport),
 * endpoints ordered so both directions hash alike, base64, prefixed "1:".
 */
import { hash } from 'node:crypto';
import { isIPv6 } from 'node:net';

const PROTO_TCP = 6;
const PROTO_UDP = 17;

/** Dotted-decimal IPv4 into out[at..at+4]; false unless exactly four canonical decimal octets 0–255. */
function writeIpv4(ip: string, out: Buffer, at: number): boolean {
  let octet = 0;
  let digits = 0;
  let part = 0;
  for (let i = 0; i <= ip.length; i++) {
    const c = i < ip.length ? ip.charCodeAt(i) : 0x2e;
    if (c === 0x2e) {
      if (digits === 0 || part > 3) return false;
      out[at + part++] = octet;
      octet = 0;
      digits = 0;
    } else if (c >= 0x30 && c <= 0x39 && digits < 3 && (digits === 0 || octet !== 0)) {
      octet = octet * 10 + (c - 0x30);
      if (octet > 255) return false;
      digits++;
    } else return false;
  }
  return part === 4;
}

/** An IPv6 literal (with "::" and an embedded IPv4 tail) into out[at..at+16]. */
function writeIpv6(ip: string, out: Buffer, at: number): boolean {
  if (!isIPv6(ip)) return false;
  let text = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1]) {
    const b = v4[1].split('.').map(Number);
    text = text.slice(0, -v4[1].length) + `${(((b[0] ?? 0) << 8) | (b[1] ?? 0)).toString(16)}:${(((b[2] ?? 0) << 8) | (b[3] ?? 0)).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  for (let i = 0; i < 8; i++) out.writeUInt16BE(Number.parseInt(groups[i] ?? '0', 16) || 0, at + i * 2);
  return true;
}

/** Address bytes into out at `at`: 4 (IPv4), 16 (IPv6) or 0 (not an IP literal). */
function writeIp(ip: string, out: Buffer, at: number): number {
  if (writeIpv4(ip, out, at)) return 4;
  return writeIpv6(ip, out, at) ? 16 : 0;
}

// Scratch space, reused by every call (the hash is computed before communityId returns):
// the two addresses, then the hashed message seed ‖ saddr ‖ daddr ‖ proto ‖ 0 ‖ sport ‖ dport.
const addr = Buffer.alloc(32);
const message = Buffer.alloc(2 + 32 + 2 + 4);

/** Community ID v1 string for a TCP or UDP flow, or null if an address is not an IP literal. */
export function communityId(
  proto: 'tcp' | 'udp',
  srcIp: string,
  srcPort: number,
  dstIp: string,
  dstPort: number,
  seed = 0,
): string | null {
  const n = writeIp(srcIp, addr, 0);
  if (n === 0 || writeIp(dstIp, addr, 16) !== n) return null;
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
