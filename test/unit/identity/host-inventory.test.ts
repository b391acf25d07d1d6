import { describe, expect, it } from 'vitest';
import { clientAddress } from '../../../gateway/identity/client-address.ts';
import { HostInventory } from '../../../gateway/identity/host-inventory.ts';

describe('clientAddress', () => {
  const table: Array<[string, string, boolean]> = [
    ['10.1.2.3', '10.1.2.3', true],
    ['::ffff:10.1.2.3', '10.1.2.3', true],
    ['::FFFF:10.1.2.3', '10.1.2.3', true],
    ['2001:DB8::1', '2001:db8::1', true],
    ['fe80::1%eth0', 'fe80::1', true],
    ['not-an-ip', 'not-an-ip', false],
    ['', '', false],
  ];
  for (const [input, text, isIp] of table) {
    it(`${JSON.stringify(input)} → ${text}`, () => {
      const a = clientAddress(input);
      expect(a.text).toBe(text);
      expect(a.parsed !== null).toBe(isIp);
    });
  }
});

describe('HostInventory', () => {
  const inv = new HostInventory([
    { cidr: '0.0.0.0/0', name: 'anywhere-v4', roles: [] },
    { cidr: '10.0.0.0/8', name: 'corp', roles: ['corp'] },
    { cidr: '10.1.0.0/16', name: 'first', roles: ['a'] },
    { cidr: '10.1.0.0/16', name: 'second', roles: ['b'] },
    { cidr: '10.1.2.0/24', name: 'rack', roles: ['r'] },
    { cidr: '::ffff:192.168.0.0/112', name: 'mapped-rule', roles: [] },
    { cidr: '2001:db8::/32', name: 'v6', roles: [] },
    { cidr: 'bogus', name: 'ignored', roles: [] },
  ]);
  const at = (ip: string) => {
    const a = clientAddress(ip);
    return a.parsed === null ? null : (inv.lookup(a.parsed)?.name ?? null);
  };
  const table: Array<[string, string | null]> = [
    ['10.1.2.3', 'rack'],
    ['10.1.3.3', 'first'], // same CIDR twice: the first listed wins
    ['10.200.0.1', 'corp'],
    ['8.8.8.8', 'anywhere-v4'],
    ['::ffff:10.1.2.3', 'rack'],
    ['2001:db8:ffff::1', 'v6'],
    ['2001:db9::1', null],
    ['::1', null],
  ];
  for (const [ip, want] of table) it(`${ip} → ${want}`, () => expect(at(ip)).toBe(want));

  it('knows every configured name, even with a bad CIDR', () => {
    expect([...inv.names].sort()).toContain('ignored');
    expect(inv.names.has('rack')).toBe(true);
  });
});
