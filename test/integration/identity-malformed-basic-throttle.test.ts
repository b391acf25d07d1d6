/**
 * Malformed proxy credentials are counted against their source only. A malformed `Basic` value
 * (`Basic !!!`, base64 with no colon), Basic `:pw` and an RFC 1929 login with an empty name all
 * reach identity resolution as the user name ''. Regression: that name went through the per-user
 * failure budget like any, so every client's malformed values counted under the one name '': after
 * 12 from 127.0.0.2, a first malformed value from 127.0.0.3 (no failure of its own yet) waited 5 s
 * in the per-user delay, and 10 at once from it waited up to 5.5 s or were shed. Now such a value
 * names no user: 407 / 0x01 at once (no scrypt decoy derivation either), counted against its source,
 * whose own throttle still slows it; one client's malformed values do not touch another's.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../gateway/identity/password-hash.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;

beforeAll(async () => {
  origin = await startOrigin();
  gw = await startTestGateway({
    identity: {
      requireAuth: true,
      // A scrypt user: every uncached check of a name ran one derivation (a decoy for unknown names).
      users: [{ name: 'alice', passwordHash: await hashPassword('alice-pw'), roles: ['any'] }],
    },
  });
}, 30_000);

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const MALFORMED = ['Basic !!!', `Basic ${b64('nocolon')}`, `Basic ${b64(':pw')}`, `Basic ${b64('alice:x')} junk`];

/** One absolute-URI GET from `localAddress` with `Proxy-Authorization: value`: its status and client port. */
async function request(localAddress: string, value: string): Promise<{ status: number; port: number }> {
  const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress });
  s.on('error', () => undefined);
  await once(s, 'connect');
  const port = s.localPort as number;
  let text = '';
  s.on('data', (b: Buffer) => {
    text += b.toString('latin1');
  });
  const closed = once(s, 'close');
  s.write(`GET http://127.0.0.1:${origin.port}/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${value}\r\nConnection: close\r\n\r\n`);
  const timer = setTimeout(() => s.destroy(), 30_000);
  await closed;
  clearTimeout(timer);
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), port };
}

/** An RFC 1929 login with an empty name from `localAddress`: the gateway's bytes until it closes. */
async function socksEmptyName(localAddress: string): Promise<string> {
  const s = connect({ host: gw.socksHost, port: gw.socksPort, localAddress });
  s.on('error', () => undefined);
  await once(s, 'connect');
  const chunks: Buffer[] = [];
  s.on('data', (b: Buffer) => chunks.push(b));
  const closed = once(s, 'close');
  s.write(Buffer.from([0x05, 0x01, 0x02, 0x01, 0x00, 0x02, 0x70, 0x77]));
  const timer = setTimeout(() => s.destroy(), 30_000);
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('hex');
}

async function metrics(): Promise<Record<string, number>> {
  const { status, text } = await adminGet(gw, '/metrics');
  expect(status).toBe(200);
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(gw_identity_[a-z_]+(?:\{[^}]*\})?) (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

describe('malformed proxy credentials and the login throttle', () => {
  it("12 malformed values from 127.0.0.2 do not slow 127.0.0.3's malformed values, nor run a derivation", async () => {
    const before = await metrics();
    const flood = await Promise.all(Array.from({ length: 12 }, (_, i) => request('127.0.0.2', MALFORMED[i % MALFORMED.length]!)));
    expect(flood.map((a) => a.status)).toEqual(Array(12).fill(407));
    const afterFlood = await metrics();
    expect(afterFlood['gw_identity_auth_failures_total{reason="bad-credentials"}']! - before['gw_identity_auth_failures_total{reason="bad-credentials"}']!).toBe(12);

    // 127.0.0.3: each malformed shape once, then 4 at once (8 failures: over its own 5 free only at the end).
    const one = [];
    for (const value of MALFORMED) one.push(await request('127.0.0.3', value));
    const mid = await metrics();
    const burst = await Promise.all(MALFORMED.map((value) => request('127.0.0.3', value)));
    expect([...one, ...burst].map((a) => a.status)).toEqual(Array(8).fill(407));
    for (const a of one) {
      const rec = await gw.waitForClosed((r) => r.client.ip === '127.0.0.3' && r.client.port === a.port, 5000);
      expect([rec.verdict, rec.reason, rec.identity.user]).toEqual(['block', 'auth-required', null]);
    }
    // Before: each of the first four waited in the per-user delay of the name '' (5 s at 12 failures).
    expect(mid['gw_identity_auth_user_throttled_total']).toBe(before['gw_identity_auth_user_throttled_total']);
    expect(mid['gw_identity_auth_throttled_total']).toBe(afterFlood['gw_identity_auth_throttled_total']);
    const after = await metrics();
    expect(after['gw_identity_auth_user_throttled_total']).toBe(before['gw_identity_auth_user_throttled_total']);
    expect(after['gw_identity_auth_user_shed_total']).toBe(before['gw_identity_auth_user_shed_total']);
    // No user name is tracked and no decoy derivation ran (the values name no user to check).
    expect(after['gw_identity_throttle_users_active']).toBe(0);
    expect(after['gw_identity_scrypt_runs_total']).toBe(before['gw_identity_scrypt_runs_total']);
    // 127.0.0.2 was slowed by its own failures (more than 5 a minute), as before.
    expect(afterFlood['gw_identity_auth_throttled_total']).toBeGreaterThan(before['gw_identity_auth_throttled_total']!);
    expect(origin.seen.length).toBe(0);
  });

  it('an RFC 1929 login with an empty name from a third address is refused at once, not behind the others', async () => {
    const before = await metrics();
    expect(await socksEmptyName('127.0.0.4')).toBe('05020101');
    const after = await metrics();
    expect(after['gw_identity_auth_user_throttled_total']).toBe(before['gw_identity_auth_user_throttled_total']);
    expect(after['gw_identity_auth_throttled_total']).toBe(before['gw_identity_auth_throttled_total']);
    expect(after['gw_identity_auth_failures_total{reason="bad-credentials"}']! - before['gw_identity_auth_failures_total{reason="bad-credentials"}']!).toBe(1);
  });

  it('a wrong password for a real name still counts against that name (control)', async () => {
    const statuses = [];
    // 11 wrong passwords for alice from 11 addresses: the per-user budget (10 free) slows the 12th.
    for (let i = 0; i < 11; i++) statuses.push((await request(`127.0.1.${i + 1}`, `Basic ${b64('alice:wrong')}`)).status);
    const before = await metrics();
    statuses.push((await request('127.0.1.99', `Basic ${b64('alice:wrong')}`)).status);
    expect(statuses).toEqual(Array(12).fill(407));
    const after = await metrics();
    expect(after['gw_identity_auth_user_throttled_total']! - before['gw_identity_auth_user_throttled_total']!).toBe(1);
  });
});
