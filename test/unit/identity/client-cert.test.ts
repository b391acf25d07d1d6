import { describe, expect, it } from 'vitest';
import { subjectName } from '../../../gateway/identity/client-cert.ts';

describe('subjectName', () => {
  const table: Array<[string, Parameters<typeof subjectName>[0], string | null]> = [
    ['CN', { subject: { CN: 'alice' } as never, subjectaltname: 'DNS:other.example' }, 'alice'],
    ['no CN, DNS SAN', { subject: { O: 'x' } as never, subjectaltname: 'IP Address:127.0.0.1, DNS:svc.internal' }, 'svc.internal'],
    ['no CN, URI SAN', { subject: {} as never, subjectaltname: 'URI:spiffe://corp/ns/app' }, 'spiffe://corp/ns/app'],
    ['multi-valued CN refused, SAN used', { subject: { CN: ['a', 'b'] } as never, subjectaltname: 'DNS:c' }, 'c'],
    ['CN with a space refused', { subject: { CN: 'a b' } as never, subjectaltname: undefined as never }, null],
    ['nothing', { subject: {} as never, subjectaltname: undefined as never }, null],
    ['null cert', null, null],
  ];
  for (const [name, cert, want] of table) it(name, () => expect(subjectName(cert)).toBe(want));
});
