/**
 * Host inventory (`identity.hosts`): source address → host name and roles, most specific CIDR wins.
 * Compiled once per snapshot into a prefix-indexed CidrMap, so a lookup is one hash probe per
 * prefix length in use — no CIDR parsing per connection.
 */
import type { HostConfig } from '../../policy/config.ts';
import { CidrMap, type ParsedIp, parseCidr } from '../../policy/cidr.ts';

export interface InventoryHost {
  readonly name: string;
  readonly cidr: string;
  readonly roles: readonly string[];
}

/** The compiled `identity.hosts` of one snapshot. */
export class HostInventory {
  private readonly map = new CidrMap<InventoryHost>();
  /** Every configured host name (client certificates and headers may name one). */
  readonly names: ReadonlySet<string>;

  constructor(hosts: readonly HostConfig[]) {
    const names = new Set<string>();
    for (const h of hosts) {
      names.add(h.name);
      const c = parseCidr(h.cidr);
      // Invalid CIDRs are refused by load-config; skipping here keeps a bad test fixture harmless.
      if (!('error' in c)) this.map.add(c, Object.freeze({ name: h.name, cidr: c.text, roles: Object.freeze([...h.roles]) }));
    }
    this.names = names;
  }

  /**
   * The host whose CIDR contains `ip` with the longest prefix (first one listed on a tie), or null.
   * IPv4 rules match IPv4-mapped IPv6 addresses too.
   */
  lookup(ip: ParsedIp): InventoryHost | null {
    let found: InventoryHost | null = null;
    this.map.forEachMatch(ip, (h) => {
      found = h;
      return true;
    });
    return found;
  }
}
