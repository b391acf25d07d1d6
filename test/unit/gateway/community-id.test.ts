import { describe, expect, it } from 'vitest';
import { communityId } from '../../../gateway/flow/community-id.ts';

// Vectors from the Community ID spec's baseline (corelight/community-id-spec, seed 0).
describe('communityId', () => {
  it.each([
    ['tcp', '128.232.110.120', 34855, '66.35.250.204', 80, '1:LQU9qZlK+B5F3KDmev6m5PMibrg='],
    ['tcp', '66.35.250.204', 80, '128.232.110.120', 34855, '1:LQU9qZlK+B5F3KDmev6m5PMibrg='],
    ['udp', '192.168.1.52', 54585, '8.8.8.8', 53, '1:d/FP5EW3wiY1vCndhwleRRKHowQ='],
  ] as const)('%s %s:%d -> %s:%d', (proto, sip, sp, dip, dp, want) => {
    expect(communityId(proto, sip, sp, dip, dp)).toBe(want);
  });

  it('hashes IPv6 flows the same in both directions and differently from others', () => {
    const a = communityId('tcp', '::1', 40000, '2001:db8::1', 443);
    expect(a).toMatch(/^1:[A-Za-z0-9+/]{27}=$/);
    expect(communityId('tcp', '2001:db8::1', 443, '::1', 40000)).toBe(a);
    expect(communityId('tcp', '::1', 40001, '2001:db8::1', 443)).not.toBe(a);
  });

  it('gives null for non-IP addresses and mixed families', () => {
    expect(communityId('tcp', 'example.com', 1, '1.2.3.4', 2)).toBeNull();
    expect(communityId('tcp', '::1', 1, '1.2.3.4', 2)).toBeNull();
  });
});
