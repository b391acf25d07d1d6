import { describe, expect, it } from 'vitest';
import { hashPassword } from '../../../gateway/identity/password-hash.ts';
import { validateConfig } from '../../../policy/load-config.ts';

/** The identity rules load-config applies (policy/config-schema.ts uses the identity parsers). */
describe('config validation of identity fields', () => {
  it('accepts a hash made by hash-password and a 16+ character signing secret', async () => {
    const hash = await hashPassword('pw', { N: 1024, r: 8, p: 1 });
    const r = validateConfig({
      identity: {
        users: [{ name: 'bob', passwordHash: hash, roles: [] }],
        headers: { signed: { header: 'x-egress-token', secret: 'sixteen-chars-ok' } },
      },
    });
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.config.identity.headers.signed?.maxAgeSec).toBe(300);
  });

  const bad: Array<[string, unknown, string, RegExp]> = [
    ['bcrypt hash', { users: [{ name: 'a', passwordHash: '$2b$10$abc', roles: [] }] }, 'identity.users[0].passwordHash', /scrypt\$N\$r\$p/],
    ['N not a power of two', { users: [{ name: 'a', passwordHash: 'scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA', roles: [] }] }, 'identity.users[0].passwordHash', /power of two/],
    ['memory bomb', { users: [{ name: 'a', passwordHash: 'scrypt$1048576$16$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA', roles: [] }] }, 'identity.users[0].passwordHash', /256 MiB/],
    ['short HMAC secret', { headers: { signed: { header: 'x-t', secret: 'short' } } }, 'identity.headers.signed.secret', /16 characters/],
  ];
  for (const [name, identity, path, message] of bad) {
    it(`rejects ${name} at ${path}`, () => {
      const r = validateConfig({ identity });
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.errors).toContainEqual({ path, message: expect.stringMatching(message) });
    });
  }
});
