/**
 * Password guessing floods through the real HTTP listener, read back through /metrics.
 * Regressions: (1) with no failure recorded yet a source's checks were not counted before scrypt
 * ran, and the scrypt queue was unbounded, so 1,000 parallel wrong logins (unknown names cost a
 * decoy derivation: no valid user needed) from one address held every other client's login behind
 * them (~40 ms → 20 s); (2) failures were counted per source address only, so guessing one
 * account from many addresses was never slowed.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../gateway/identity/password-hash.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, startOrigin } from './http-harness.ts';

/**
 * A connection from `localAddress`, connected; `send` writes one request with Basic proxy
 * credentials and resolves with the status code once the gateway closes the connection.
 */
async function client(gw: TestGateway, origin: Origin, localAddress: string): Promise<{ send(credentials: string, path: string): Promise<number> }> {
  const sock = connect({ host: '127.0.0.1', port: gw.httpPort, localAddress });
  sock.on('error', () => undefined);
  const chunks: Buffer[] = [];
  sock.on('data', (c: Buffer) => chunks.push(c));
  await once(sock, 'connect');
  return {
    async send(credentials, path) {
      const auth = Buffer.from(credentials).toString('base64');
      const closed = once(sock, 'close');
      sock.write(`GET http://127.0.0.1:${origin.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nProxy-Authorization: Basic ${auth}\r\nConnection: close\r\n\r\n`);
      const timer = setTimeout(() => sock.destroy(), 30_000);
      await closed;
      clearTimeout(timer);
      return Number(/^HTTP\/1\.1 (\d{3})/.exec(Buffer.concat(chunks).toString('latin1'))?.[1] ?? 0);
    },
  };
}

async function login(gw: TestGateway, origin: Origin, localAddress: string, credentials: string, path: string): Promise<number> {
  return (await client(gw, origin, localAddress)).send(credentials, path);
}

async function metrics(gw: TestGateway): Promise<Record<string, number>> {
  const { status, text } = await adminGet(gw, '/metrics');
  expect(status).toBe(200);
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(gw_identity_[a-z_]+(?:\{[^}]*\})?) (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

describe('password guessing floods (per-source share, bounded scrypt queue, per-user budget)', () => {
  let gw: TestGateway;
  let origin: Origin;

  beforeAll(async () => {
    origin = await startOrigin();
    // Production scrypt cost: the flood must cost what it costs for real.
    const aliceHash = await hashPassword('alice-pw');
    gw = await startTestGateway({
      identity: {
        requireAuth: true,
        users: [
          { name: 'alice', passwordHash: aliceHash, roles: ['any'] },
          { name: 'bob', password: 'bob-pw', roles: ['any'] },
        ],
      },
    });
  }, 30_000);

  afterAll(async () => {
    await gw?.stop();
    await origin?.close();
  });

  it('100 parallel wrong logins from one address: its share runs, the rest is shed at once with 407, and another client logs in', async () => {
    const before = await metrics(gw);
    const FLOOD = 100;
    // Connected first, then all requests written in one go, as a flooding client would.
    const clients = await Promise.all(Array.from({ length: FLOOD }, () => client(gw, origin, '127.0.0.66')));
    const flood = clients.map((c, i) => c.send(`nosuchuser${i}:x${i}`, `/flood-${i}`));
    const legit = await login(gw, origin, '127.0.0.1', 'alice:alice-pw', '/legit');
    const answers = await Promise.all(flood);
    expect(legit).toBe(200);
    expect(answers.every((s) => s === 407)).toBe(true);
    const after = await metrics(gw);
    const delta = (name: string): number => (after[name] ?? 0) - (before[name] ?? 0);
    // Every check either ran scrypt or was shed unchecked. At most 16 of the flood's run at once
    // (its per-source share; a slot freed while requests still arrive admits another), so most of
    // it is shed; before, all 100 ran, and alice's login waited behind every one of them.
    const runs = delta('gw_identity_scrypt_runs_total');
    const shed = delta('gw_identity_auth_shed_total');
    expect(runs + shed).toBe(FLOOD + 1);
    expect(shed).toBeGreaterThanOrEqual(FLOOD / 2);
    expect(after['gw_identity_scrypt_waiting']).toBe(0);
    expect(origin.seen.some((s) => s.url.startsWith('/flood-'))).toBe(false);
  }, 60_000);

  it('guessing one user from many addresses is slowed by the per-user budget, counted in /metrics', async () => {
    const before = await metrics(gw);
    // One wrong guess for bob from each of 12 addresses: no address is over its own budget.
    for (let i = 1; i <= 12; i++) expect(await login(gw, origin, `127.0.1.${i}`, `bob:guess-${i}`, `/guess-${i}`)).toBe(407);
    const after = await metrics(gw);
    const delta = (name: string): number => (after[name] ?? 0) - (before[name] ?? 0);
    // The first 10 failures are free; the 11th and 12th guesses waited.
    expect(delta('gw_identity_auth_user_throttled_total')).toBe(2);
    expect(delta('gw_identity_auth_throttled_total')).toBe(0);
    expect(after['gw_identity_throttle_users_active']).toBeGreaterThanOrEqual(1);
  }, 60_000);
});
