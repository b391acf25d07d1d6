/**
 * The test zone DNS server's AAAA data (test/helpers/zone-dns.ts ipv6Bytes): every text form of an
 * IPv6 address encodes to its 16 bytes. Regression: a dotted IPv4 tail was read as one hex group,
 * so `::ffff:127.0.0.5` was answered as `::ffff:127` (`…ffff0127`).
 */
import { describe, expect, it } from 'vitest';
import { ipv6Bytes } from '../../helpers/zone-dns.ts';

describe('zone DNS: ipv6Bytes', () => {
  it.each([
    ['::1', '00000000000000000000000000000001'],
    ['::', '00000000000000000000000000000000'],
    ['2001:db8::1:2', '20010db8000000000000000000010002'],
    ['fe80::', 'fe800000000000000000000000000000'],
    ['2001:db8:0:0:0:0:0:1', '20010db8000000000000000000000001'],
    ['::ffff:127.0.0.5', '00000000000000000000ffff7f000005'],
    ['64:ff9b::192.0.2.33', '0064ff9b0000000000000000c0000221'],
    ['::127.0.0.1', '0000000000000000000000007f000001'],
    ['1:2:3:4:5:6:10.0.0.1', '0001000200030004000500060a000001'],
  ])('%s', (ip, hex) => {
    expect(ipv6Bytes(ip).toString('hex')).toBe(hex);
  });

  it('agrees with the address WHATWG URL parsing gives the same text', () => {
    for (const ip of ['::ffff:127.0.0.5', '64:ff9b::7f00:5', '2001:db8::a:b:c:d', '::ffff:255.255.255.255']) {
      const canonical = new URL(`http://[${ip}]/`).hostname.slice(1, -1);
      expect(ipv6Bytes(ip).toString('hex'), ip).toBe(ipv6Bytes(canonical).toString('hex'));
    }
  });
});
