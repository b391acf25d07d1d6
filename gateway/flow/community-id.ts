/**
 * Community ID v1 (https://github.com/corelight/community-id-spec): a flow hash shared with Zeek and
 * Suricata so egressgate records join their logs. sha1(seed ‖ saddr ‖ daddr ‖ proto ‖ 0 ‖ sport ‖ dport),
 * endpoints ordered so both directions hash alike, base64, prefixed "1:".
 */
import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';

const PROTO_TCP = 6;
const PROTO_UDP = 17;

function ipBytes(ip: string): Buffer | null {
  if (isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  if (!isIPv6(ip)) return null;
  // Expand "::" and embedded IPv4 into 8 groups.
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
  const out = Buffer.alloc(16);
  for (let i = 0; i < groups.length; i++) out.writeUInt16BE(Number.parseInt(groups[i] ?? '0', 16) || 0, i * 2);
  return out;
}

/** Community ID v1 string for a TCP or UDP flow, or null if an address is not an IP literal. */
export function communityId(
  proto: 'tcp' | 'udp',
  srcIp: string,
  srcPort: number,
  dstIp: string,
  dstPort: number,
  seed = 0,
): string | null {
  let s = ipBytes(srcIp);
  let d = ipBytes(dstIp);
  if (!s || !d || s.length !== d.length) return null;
  let sp = srcPort;
  let dp = dstPort;
  const cmp = Buffer.compare(s, d);
  if (cmp > 0 || (cmp === 0 && sp > dp)) {
    [s, d] = [d, s];
    [sp, dp] = [dp, sp];
  }
  const buf = Buffer.alloc(2 + s.length * 2 + 2 + 4);
  let o = buf.writeUInt16BE(seed, 0);
  o += s.copy(buf, o);
  o += d.copy(buf, o);
  o = buf.writeUInt8(proto === 'tcp' ? PROTO_TCP : PROTO_UDP, o);
  o = buf.writeUInt8(0, o);
  o = buf.writeUInt16BE(sp, o);
  buf.writeUInt16BE(dp, o);
  return `1:${createHash('sha1').update(buf).digest('base64')}`;
}
