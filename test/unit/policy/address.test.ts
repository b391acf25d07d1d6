import { describe, expect, it } from 'vitest';
import { canonicalIPv6, classifyAddress, effectiveIPv4, parseIPv6 } from '../../../policy/address.ts';

describe('classifyAddress', () => {
  const table: Array<[string, string | null]> = [
    // IPv4 ranges
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['172.32.0.1', null],
    ['192.168.1.1', 'private'],
    ['169.254.169.254', 'metadata'],
    ['169.254.170.2', 'metadata'],
    ['169.254.1.1', 'link-local'],
    ['100.64.0.1', 'cgnat'],
    ['100.127.255.255', 'cgnat'],
    ['100.128.0.1', null],
    ['100.100.100.200', 'metadata'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['240.0.0.1', 'reserved'],
    ['255.255.255.255', 'broadcast'],
    ['198.18.0.1', 'reserved'],
    ['8.8.8.8', null],
    ['93.184.216.34', null],
    // documentation ranges are deliberately public (SPEC examples allow 203.0.113.0/24)
    ['203.0.113.5', null],
    ['192.0.2.1', null],
    // IPv6 ranges
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['fc00::1', 'ula'],
    ['fd12:3456::1', 'ula'],
    ['fd00:ec2::254', 'metadata'],
    ['fd00:ec2::255', 'ula'],
    ['ff02::1', 'multicast'],
    ['fec0::1', 'private'],
    ['100::1', 'reserved'],
    ['2606:4700:4700::1111', null],
    ['2001:4860:4860::8888', null],
    ['2001:db8::1', null],
    // IPv4 embedded in IPv6: unwrapped first
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:169.254.169.254', 'metadata'],
    ['::ffff:8.8.8.8', null],
    ['::10.0.0.1', 'private'],
    ['64:ff9b::a9fe:a9fe', 'metadata'],
    ['64:ff9b::10.0.0.1', 'private'],
    ['64:ff9b::808:808', null],
    ['64:ff9b:1:7f00:0:100::', 'loopback'],
    // local-use NAT64 at any RFC 6052 length (/48 … /96): every layout is classified, fail closed
    ['64:ff9b:1::a9fe:a9fe', 'metadata'], // /96
    ['64:ff9b:1:0:a:a00:100::', 'private'], // /64: 10.10.0.1
    ['64:ff9b:1:808:8:808::', null], // /48: 8.8.8.8, and no layout reads a private address
    ['2002:a00:1::', 'private'],
    ['2002:7f00:1::1', 'loopback'],
    ['2002:808:808::1', null],
    // Teredo: client IPv4 = last 32 bits XOR 0xffffffff; 80ff:fefe -> 127.0.1.1, 3fff:fdd2 -> 192.0.2.45
    ['2001:0:4136:e378:8000:63bf:80ff:fefe', 'loopback'],
    ['2001::f5ff:fffe', 'private'],
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', null],
    // not an IP: fail closed
    ['example.com', 'reserved'],
    ['', 'reserved'],
  ];
  it.each(table)('%s -> %s', (ip, want) => {
    expect(classifyAddress(ip)).toBe(want);
  });
});

describe('effectiveIPv4 / parseIPv6', () => {
  it('unwraps embeddings to dotted-quad', () => {
    expect(effectiveIPv4('1.2.3.4')).toBe('1.2.3.4');
    expect(effectiveIPv4('::ffff:1.2.3.4')).toBe('1.2.3.4');
    expect(effectiveIPv4('64:ff9b::102:304')).toBe('1.2.3.4');
    expect(effectiveIPv4('2002:102:304::')).toBe('1.2.3.4');
    expect(effectiveIPv4('2606:4700::1')).toBeNull();
  });
  it('parses compressed and full forms alike', () => {
    expect(parseIPv6('::1')).toEqual(parseIPv6('0:0:0:0:0:0:0:1'));
    expect(parseIPv6('[fe80::1]')).toEqual(parseIPv6('fe80:0::1'));
    expect(parseIPv6('1.2.3.4')).toBeNull();
    expect(parseIPv6('1::2::3')).toBeNull();
  });
});

describe('canonicalIPv6: the one text of an IPv6 address in records and policy keys', () => {
  const table: Array<[string, string]> = [
    ['::ffff:127.0.0.3', '::ffff:127.0.0.3'],
    ['::ffff:7f00:3', '::ffff:127.0.0.3'],
    ['0:0:0:0:0:FFFF:7F00:3', '::ffff:127.0.0.3'],
    ['::ffff:0:0', '::ffff:0.0.0.0'],
    ['::ffff:ffff:ffff', '::ffff:255.255.255.255'],
    // Not IPv4-mapped: hex tails.
    ['::127.0.0.3', '::7f00:3'],
    ['::ffff:0:7f00:3', '::ffff:0:7f00:3'],
    ['::ffff', '::ffff'],
    ['::ffff:1', '::ffff:1'],
    ['1::ffff:7f00:3', '1::ffff:7f00:3'],
    ['2001:DB8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['::1', '::1'],
    ['not-an-ip', 'not-an-ip'],
  ];
  for (const [input, want] of table) it(`${input} -> ${want}`, () => expect(canonicalIPv6(input)).toBe(want));
});
