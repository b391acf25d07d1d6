import { describe, expect, it } from 'vitest';
import { DEFAULT_SCRYPT_PARAMS, hashPassword, parsePasswordHash, verifyPassword } from '../../../gateway/identity/password-hash.ts';

const FAST = { N: 1024, r: 8, p: 1 };

describe('password hashes', () => {
  it('default parameters produce scrypt$16384$8$1$salt$hash and verify', async () => {
    const h = await hashPassword('correct horse');
    expect(h).toMatch(/^scrypt\$16384\$8\$1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
    expect(DEFAULT_SCRYPT_PARAMS).toEqual({ N: 16384, r: 8, p: 1 });
    expect(await verifyPassword('correct horse', h)).toBe(true);
    expect(await verifyPassword('correct horsE', h)).toBe(false);
  });

  it('salts: the same password hashes differently each time, both verify', async () => {
    const [a, b] = await Promise.all([hashPassword('pw', FAST), hashPassword('pw', FAST)]);
    expect(a).not.toBe(b);
    expect(await verifyPassword('pw', a)).toBe(true);
    expect(await verifyPassword('pw', b)).toBe(true);
    expect(await verifyPassword('', a)).toBe(false);
  });

  it('non-ASCII passwords round-trip', async () => {
    const h = await hashPassword('pässwörd-密码', FAST);
    expect(await verifyPassword('pässwörd-密码', h)).toBe(true);
    expect(await verifyPassword('passwort-密码', h)).toBe(false);
  });

  it('refuses bad parameters when hashing', async () => {
    await expect(hashPassword('pw', { N: 1000, r: 8, p: 1 })).rejects.toThrow(/power of two/);
  });

  it('accepts padded base64 too', async () => {
    const h = await hashPassword('pw', FAST);
    const parts = h.split('$');
    const padded = [...parts.slice(0, 4), `${parts[4]}==`, `${parts[5]}=`].join('$');
    expect(await verifyPassword('pw', padded)).toBe(true);
  });

  const salt = Buffer.alloc(16, 1).toString('base64');
  const hash = Buffer.alloc(32, 2).toString('base64');
  const bad: Array<[string, string, RegExp]> = [
    ['empty', '', /scrypt\$N\$r\$p/],
    ['bcrypt', '$2b$10$abcdefghijklmnopqrstuv', /scrypt\$N\$r\$p/],
    ['too few parts', `scrypt$16384$8$1$${salt}`, /scrypt\$N\$r\$p/],
    ['too many parts', `scrypt$16384$8$1$${salt}$${hash}$x`, /scrypt\$N\$r\$p/],
    ['upper-case prefix', `SCRYPT$16384$8$1$${salt}$${hash}`, /scrypt\$N\$r\$p/],
    ['N not a power of two', `scrypt$10000$8$1$${salt}$${hash}`, /power of two/],
    ['N with leading zero', `scrypt$016384$8$1$${salt}$${hash}`, /power of two/],
    ['N in hex', `scrypt$0x4000$8$1$${salt}$${hash}`, /power of two/],
    ['r zero', `scrypt$16384$0$1$${salt}$${hash}`, /r must/],
    ['p too big', `scrypt$16384$8$17$${salt}$${hash}`, /p must/],
    ['memory bomb', `scrypt$1048576$16$1$${salt}$${hash}`, /256 MiB/],
    ['salt not base64', `scrypt$16384$8$1$not*base64$${hash}`, /salt/],
    ['salt too short', `scrypt$16384$8$1$AAAA$${hash}`, /salt/],
    ['hash too short', `scrypt$16384$8$1$${salt}$AAAAAAAA`, /hash/],
    ['non-canonical base64', `scrypt$16384$8$1$${salt}$${hash.slice(0, -2)}B=`, /hash/],
    ['base64url alphabet', `scrypt$16384$8$1$${salt.replace(/.$/, '-')}$${hash}`, /salt/],
  ];
  for (const [name, text, err] of bad) {
    it(`rejects ${name}`, async () => {
      const p = parsePasswordHash(text);
      expect('error' in p && p.error).toMatch(err);
      expect(await verifyPassword('anything', text)).toBe(false);
    });
  }

  it('parses a valid hash into its parts', () => {
    const p = parsePasswordHash(`scrypt$16384$8$1$${salt}$${hash}`);
    expect(p).toMatchObject({ N: 16384, r: 8, p: 1 });
    expect('salt' in p && p.salt.length).toBe(16);
  });
});
