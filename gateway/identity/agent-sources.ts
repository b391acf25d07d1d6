/**
 * The client addresses agents speak for (`identity.agents[].sources`), one list per family. Node's
 * BlockList matches an IPv4 address against IPv6 rules too (as ::ffff:a.b.c.d): in one list, an
 * agent bound to `::/0` spoke for every IPv4 client. Read by the report check (control-port.ts: a
 * report about an address outside its agent's sources is refused) and by the detection sweep (a
 * flow from a host with an agent that no agent attributed is `unattributed`), so both take an
 * agent's sources alike.
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';

export interface AgentSources {
  readonly v4: BlockList;
  readonly v6: BlockList;
}

/** Lists for `cidrs` ("a.b.c.d/n", "v6/n" or a bare address); invalid entries are skipped (load-config refuses them). */
export function compileAgentSources(cidrs: Iterable<string>): AgentSources {
  const lists: AgentSources = { v4: new BlockList(), v6: new BlockList() };
  for (const cidr of cidrs) {
    const [addr = '', bitsText] = cidr.split('/');
    const type = isIPv4(addr) ? 'ipv4' : isIPv6(addr) ? 'ipv6' : null;
    if (!type) continue;
    const bl = type === 'ipv4' ? lists.v4 : lists.v6;
    if (bitsText === undefined) {
      bl.addAddress(addr, type);
      continue;
    }
    const bits = Number(bitsText);
    if (Number.isInteger(bits) && bits >= 0 && bits <= (type === 'ipv4' ? 32 : 128)) bl.addSubnet(addr, bits, type);
  }
  return lists;
}

/**
 * Whether `ip`, an IPv4-mapped address already plain IPv4 (normalizeIp, a flow's `client.ip`), is one
 * of the sources, checked against its own family's list only.
 */
export function isAgentSource(lists: AgentSources, ip: string): boolean {
  if (isIPv4(ip)) return lists.v4.check(ip, 'ipv4');
  if (isIPv6(ip)) return lists.v6.check(ip, 'ipv6');
  return false;
}
