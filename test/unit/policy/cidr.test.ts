import { BlockList } from 'node:net';
import { describe, expect, it } from 'vitest';
import { CidrMap, parseCidr, parseIp } from '../../../policy/cidr.ts';

describe('parseCidr', () => {
  it.each([
    ['10.0.0.0/8', 4, 8],
    ['10.1.2.3/8', 4, 8],
    ['1.2.3.4', 4, 32],
    ['0.0.0.0/0', 4, 0],
    ['2001:db8::/32', 6, 32],
    ['::1', 6, 128],
  ])('%s is family %i prefix %i', (text, family, prefix) => {
    const c = parseCidr(text);
    expect('error' in c).toBe(false);
    if (!('error' in c)) {
      expect(c.family).toBe(family);
      expect(c.prefix).toBe(prefix);
    }
  });
  it.each(['10.0.0.0/33', '10.0.0/8', 'ten/8', '::/129', '10.0.0.0/x', 'fe80::1%eth0/64', '', '300.1.1.1/8'])('%s is an error', (text) => {
    expect('error' in parseCidr(text)).toBe(true);
  });
});

describe('CidrMap agrees with node:net BlockList', () => {
  const cidrs = ['10.0.0.0/8', '10.1.0.0/16', '192.168.1.0/24', '203.0.113.7/32', '2001:db8::/32', 'fd00::/8', '2001:db8:1::/48', '0.0.0.0/1'];
  const probes = [
    '10.0.0.1', '10.1.2.3', '11.0.0.1', '192.168.1.200', '192.168.2.1', '203.0.113.7', '203.0.113.8', '127.0.0.1', '200.1.1.1',
    '2001:db8::1', '2001:db9::1', 'fd12::1', 'fe80::1', '2001:db8:1::5', '::ffff:10.9.9.9', '::ffff:192.168.1.5', '::ffff:200.0.0.1',
  ];
  const bl = new BlockList();
  const map = new CidrMap<string>();
  for (const c of cidrs) {
    const p = parseCidr(c);
    if ('error' in p) throw new Error(p.error);
    map.add(p, c);
    bl.addSubnet(c.split('/')[0]!, Number(c.split('/')[1]), p.family === 4 ? 'ipv4' : 'ipv6');
  }
  it.each(probes)('%s', (ip) => {
    const parsed = parseIp(ip)!;
    const family = ip.includes(':') ? 'ipv6' : 'ipv4';
    expect(map.longestPrefix(parsed) >= 0).toBe(bl.check(ip, family));
  });
  // Regression: a rule written in IPv4-mapped form was an IPv6 rule, and IPv4 destinations (what a
  // dial to a mapped address reaches) never met it: deny.cidrs ["::ffff:198.51.100.0/120"] denied nothing.
  it.each([
    ['::ffff:198.51.100.0/120', '198.51.100.5', true],
    ['::ffff:198.51.100.0/120', '::ffff:198.51.100.5', true],
    ['::ffff:198.51.100.0/120', '198.51.101.5', false],
    ['::ffff:c633:6400/120', '198.51.100.200', true],
    ['::ffff:0:0/96', '8.8.8.8', true],
  ])('mapped-form rule %s against %s: %s, as BlockList', (cidr, ip, hit) => {
    const p = parseCidr(cidr);
    if ('error' in p) throw new Error(p.error);
    const m = new CidrMap<string>();
    m.add(p, cidr);
    expect(m.longestPrefix(parseIp(ip)!) >= 0).toBe(hit);
    const b = new BlockList();
    b.addSubnet(cidr.split('/')[0]!, Number(cidr.split('/')[1]), 'ipv6');
    expect(b.check(ip, ip.includes(':') ? 'ipv6' : 'ipv4')).toBe(hit);
  });

  it('reports the longest prefix first', () => {
    const hits: string[] = [];
    map.forEachMatch(parseIp('10.1.2.3')!, (v) => {
      hits.push(v);
      return false;
    });
    expect(hits).toEqual(['10.1.0.0/16', '10.0.0.0/8', '0.0.0.0/1']);
  });
});
