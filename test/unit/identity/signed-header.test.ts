import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signIdentityToken, verifyIdentityToken } from '../../../gateway/identity/signed-header.ts';

const SECRET = 's3cret';
const NOW = 1_800_000_000_000;
const NOW_SEC = NOW / 1000;

function raw(payload: unknown, secret = SECRET): string {
  // Builds tokens with arbitrary payloads, signed correctly, to reach the payload checks.
  const p = Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)).toString('base64url');
  return `${p}.${createHmac('sha256', secret).update(p).digest('base64url')}`;
}

describe('signed identity tokens', () => {
  const good = signIdentityToken({ user: 'alice', host: 'pod-1', exp: NOW_SEC + 60 }, SECRET);
  const table: Array<[string, string, string | { user: string | null; host: string | null }]> = [
    ['valid user+host', good, { user: 'alice', host: 'pod-1' }],
    ['valid user only', signIdentityToken({ user: 'alice', exp: NOW_SEC + 1 }, SECRET), { user: 'alice', host: null }],
    ['valid at exactly maxAge', signIdentityToken({ host: 'h', exp: NOW_SEC + 300 }, SECRET), { user: null, host: 'h' }],
    ['expired (exp == now)', signIdentityToken({ user: 'alice', exp: NOW_SEC }, SECRET), 'expired'],
    ['expired long ago', signIdentityToken({ user: 'alice', exp: 1 }, SECRET), 'expired'],
    ['too long-lived', signIdentityToken({ user: 'alice', exp: NOW_SEC + 301 }, SECRET), 'too-long-lived'],
    ['wrong secret', signIdentityToken({ user: 'alice', exp: NOW_SEC + 60 }, 'other'), 'bad-signature'],
    ['tampered payload', `${Buffer.from(JSON.stringify({ user: 'root', exp: NOW_SEC + 60 })).toString('base64url')}.${good.split('.')[1]}`, 'bad-signature'],
    ['truncated signature', good.slice(0, -4), 'bad-signature'],
    ['no dot', good.replace('.', ''), 'malformed'],
    ['two dots', `${good}.x`, 'malformed'],
    ['empty payload', `.${good.split('.')[1]}`, 'malformed'],
    ['padding chars', `${good}=`, 'malformed'],
    ['too long', `${'a'.repeat(5000)}.b`, 'malformed'],
    ['payload not JSON', raw('not json'), 'malformed'],
    ['payload an array', raw([1, 2]), 'malformed'],
    ['no user and no host', raw({ exp: NOW_SEC + 60 }), 'malformed'],
    ['exp missing', raw({ user: 'alice' }), 'malformed'],
    ['exp a string', raw({ user: 'alice', exp: String(NOW_SEC + 60) }), 'malformed'],
    ['user not a string', raw({ user: 7, exp: NOW_SEC + 60 }), 'malformed'],
    ['user with spaces', raw({ user: 'a b', exp: NOW_SEC + 60 }), 'malformed'],
  ];
  for (const [name, token, want] of table) {
    it(name, () => {
      const v = verifyIdentityToken(token, SECRET, NOW, 300);
      if (typeof want === 'string') expect(v).toEqual({ ok: false, reason: want });
      else expect(v).toMatchObject({ ok: true, ...want });
    });
  }

  it('accepts a Buffer secret equal to the string secret', () => {
    expect(verifyIdentityToken(good, Buffer.from(SECRET), NOW, 300).ok).toBe(true);
  });
});
