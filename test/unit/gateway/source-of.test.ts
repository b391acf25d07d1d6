import { describe, expect, it } from 'vitest';
import { sourceOf } from '../../../gateway/listeners/source-limit.ts';

// What limits.maxConnectionsPerSource (and admin.maxConnectionsPerSource) counts a client as.
describe('sourceOf', () => {
  it('is an IPv4 address itself, an IPv4-mapped one included', () => {
    expect(sourceOf('192.0.2.7')).toBe('192.0.2.7');
    expect(sourceOf('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(sourceOf('::ffff:c000:207')).toBe('192.0.2.7');
  });

  it("is an IPv6 address's /64, whatever its spelling", () => {
    expect(sourceOf('2001:db8:1:2:a:b:c:d')).toBe('2001:db8:1:2::/64');
    expect(sourceOf('2001:DB8:1:2::ffff')).toBe('2001:db8:1:2::/64');
    expect(sourceOf('2001:db8:1:3::1')).toBe('2001:db8:1:3::/64');
    expect(sourceOf('::1')).toBe('::/64');
  });

  it('is a link-local address itself (its /64 is the whole link)', () => {
    expect(sourceOf('fe80::1%eth0')).toBe('fe80::1%eth0');
    expect(sourceOf('fe80::2%eth0')).toBe('fe80::2%eth0');
  });
});
