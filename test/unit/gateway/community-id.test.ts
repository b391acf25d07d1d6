import { describe, expect, it } from 'vitest';
import { communityId } from '../../../gateway/flow/community-id.ts';

// Vectors from the Community ID spec's baseline (corelight/community-id-spec, seed 0).
describe('communityId', () => {
  it.each([
    ['tcp', '128.232.110.120', 34855, '66.35.250.204', 80, '1:LQU9qZlK+B5F3KDmev6m5PMibrg='],
    ['tcp', '66.35.250.204', 80, '128.232.110.120', 34855, '1:LQU9qZlK+B5F3KDmev6m5PMibrg='],
    ['udp', '192.168.1.52', 54585, '8.8.8.8', 53, '1:d/FP5EW3wiY1vCndhwleRRKHowQ='],
    ['tcp', '2001:470:e5bf:dead:4957:2174:e82c:4887', 63943, '2607:f8b0:400c:c03::1a', 25, '1:/qFaeAR+gFe1KYjMzVDsMv+wgU4='],
    ['tcp', '2607:f8b0:400c:c03::1a', 25, '2001:470:e5bf:dead:4957:2174:e82c:4887', 63943, '1:/qFaeAR+gFe1KYjMzVDsMv+wgU4='],
  ] as const)('%s %s:%d -> %s:%d', (proto, sip, sp, dip, dp, want) => {
    expect(communityId(proto, sip, sp, dip, dp)).toBe(want);
  });

  it('hashes IPv6 flows the same in both directions and differently from others', () => {
    const a = communityId('tcp', '::1', 40000, '2001:db8::1', 443);
    expect(a).toMatch(/^1:[A-Za-z0-9+/]{27}=$/);
    expect(communityId('tcp', '2001:db8::1', 443, '::1', 40000)).toBe(a);
    expect(communityId('tcp', '::1', 40001, '2001:db8::1', 443)).not.toBe(a);
  });

  it('hashes an IPv4-mapped address facing an IPv4 one as its IPv4 address (the baseline vectors)', () => {
    for (const mapped of ['::ffff:66.35.250.204', '::ffff:4223:facc', '0:0:0:0:0:FFFF:4223:FACC']) {
      expect(communityId('tcp', '128.232.110.120', 34855, mapped, 80)).toBe('1:LQU9qZlK+B5F3KDmev6m5PMibrg=');
      expect(communityId('tcp', mapped, 80, '128.232.110.120', 34855)).toBe('1:LQU9qZlK+B5F3KDmev6m5PMibrg=');
    }
    expect(communityId('udp', '192.168.1.52', 54585, '::ffff:8.8.8.8', 53)).toBe('1:d/FP5EW3wiY1vCndhwleRRKHowQ=');
    expect(communityId('udp', '::ffff:192.168.1.52', 54585, '8.8.8.8', 53)).toBe('1:d/FP5EW3wiY1vCndhwleRRKHowQ=');
  });

  it('hashes two IPv4-mapped addresses as their IPv4 pair, and a mapped one facing IPv6 as two families', () => {
    expect(communityId('tcp', '::ffff:128.232.110.120', 34855, '::ffff:66.35.250.204', 80)).toBe('1:LQU9qZlK+B5F3KDmev6m5PMibrg=');
    // An IPv6 client to a mapped address: IPv6 on one side, IPv4 on the other, as to the dotted address.
    expect(communityId('tcp', '::1', 40000, '::ffff:66.35.250.204', 80)).toBeNull();
    expect(communityId('tcp', '::ffff:66.35.250.204', 80, '::1', 40000)).toBeNull();
    expect(communityId('tcp', '::1', 40000, '66.35.250.204', 80)).toBeNull();
  });

  it('gives null for non-IP addresses and mixed families', () => {
    expect(communityId('tcp', 'example.com', 1, '1.2.3.4', 2)).toBeNull();
    expect(communityId('tcp', '::1', 1, '1.2.3.4', 2)).toBeNull();
    expect(communityId('tcp', '1.2.3.4', 2, '2001:db8::1', 443)).toBeNull();
    // Other IPv6 forms that carry an IPv4 address are IPv6 on the wire: NAT64, IPv4-compatible, IPv4-translated.
    expect(communityId('tcp', '1.2.3.4', 2, '64:ff9b::4223:facc', 80)).toBeNull();
    expect(communityId('tcp', '1.2.3.4', 2, '::66.35.250.204', 80)).toBeNull();
    expect(communityId('tcp', '1.2.3.4', 2, '::ffff:0:4223:facc', 80)).toBeNull();
  });
});
