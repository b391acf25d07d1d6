/**
 * An HTTP request whose Basic credentials are checked across a reload (a slow scrypt `passwordHash`):
 * it is held to the running policy's per-identity limits, as a new connection's request is. The
 * reload is issued while the gateway derives the hash (its scrypt run counted, N = 2^16: ~200 ms
 * alone). Before, admission read the limits from the policy running when the request came, before
 * the check: with `limits.maxFlowsPerIdentity` reloaded from 2 to 1 and alice's one tunnel open,
 * her CONNECT was answered 200 and tunnelled (2 live flows under a limit of 1), while the next
 * connection's got 429. The SOCKS5 counterpart is socks5-reload-slow-login.test.ts. Real gateway,
 * real HTTP listener (CONNECT and the absolute-URI fast path).
 *
 * A reload during the check that removes alice or changes her password refuses the request 407, as
 * a new connection's is (and as a SOCKS5 login's next request is: login-standing.ts). Before, it was
 * admitted as alice (200, tunnelled, the running policy's default roles) on the old password. A
 * signed token whose check waits in the failure throttle across a reload that rotates the secret is
 * refused 407 the same way (before: 200, verified with the replaced secret).
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { hashPassword } from '../../gateway/identity/password-hash.ts';
import { signIdentityToken } from '../../gateway/identity/signed-header.ts';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';
import { reloadEdited } from './reload-harness.ts';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

const AUTH = `Proxy-Authorization: Basic ${Buffer.from('alice:pw-alice-0123').toString('base64')}\r\n`;

/** A reload (as PUT /v1/policy and SIGHUP make) of the running config with `maxFlowsPerIdentity`. */
function reloadWithLimit(gw: TestGateway, maxFlowsPerIdentity: number): void {
  reloadEdited<{ limits: { maxFlowsPerIdentity: number } }>(gw, (c) => {
    c.limits.maxFlowsPerIdentity = maxFlowsPerIdentity;
  });
}

async function scryptRuns(gw: TestGateway): Promise<number> {
  const m = /^gw_identity_scrypt_runs_total (\d+)$/m.exec((await adminGet(gw, '/metrics')).text);
  return Number(m?.[1] ?? Number.NaN);
}

/** A TCP destination that answers a GET with 200 and is silent otherwise; `accepted()` counts its connections. */
async function silentDestination(): Promise<{ port: number; accepted: () => number }> {
  let accepted = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.once('data', (d: Buffer) => {
      if (d.toString('latin1').startsWith('GET ')) s.write('HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as { port: number }).port, accepted: () => accepted };
}

async function client(gw: TestGateway): Promise<Socket> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  cleanups.push(() => s.destroy());
  return s;
}

describe('an HTTP login whose password check spans a reload', () => {
  it.each([
    ['CONNECT', (port: number) => `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${AUTH}\r\n`],
    ['an absolute-URI GET', (port: number) => `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${AUTH}\r\n`],
  ])('%s is held to the running policy’s maxFlowsPerIdentity: 429, one rate-limit record, nothing dialled', async (_kind, request) => {
    const passwordHash = await hashPassword('pw-alice-0123', { N: 65_536, r: 8, p: 1 });
    const gw = await startTestGateway({
      mode: 'enforce',
      limits: { maxFlowsPerIdentity: 2 },
      identity: { requireAuth: true, users: [{ name: 'alice', passwordHash, roles: ['any'] }] },
    });
    cleanups.push(() => gw.stop());
    const dest = await silentDestination();
    // Alice's one live flow: a tunnel.
    const held = await client(gw);
    held.write(`CONNECT 127.0.0.1:${dest.port} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n${AUTH}\r\n`);
    expect((await readUntil(held, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    // A new policy object with the same limit: the next login is checked afresh (the credential
    // cache is per policy), so its scrypt derivation runs.
    reloadWithLimit(gw, 2);

    const runs = await scryptRuns(gw);
    const s = await client(gw);
    const answer = readUntil(s, '\r\n\r\n');
    s.write(request(dest.port));
    // The reload lands while the hash is being derived.
    await until('the login’s scrypt run', async () => (await scryptRuns(gw)) > runs);
    reloadWithLimit(gw, 1);
    const text = (await answer).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 429 /);
    expect(text).toMatch(/\r\nretry-after: 1\r\n/i);
    const record = await gw.waitForClosed((r) => r.reason === 'rate-limit');
    expect(record).toMatchObject({ verdict: 'block', enforced: true, closeReason: 'rate-limit', identity: { user: 'alice' } });
    expect(gw.flows.activeCount).toBe(1);
    expect(dest.accepted()).toBe(1);
  });
});

describe('an HTTP login whose user is removed or re-passworded during its password check', () => {
  const EDITS: Array<[string, (users: Array<{ name: string; password?: string; passwordHash?: string }>) => void]> = [
    ['removed', (users) => users.splice(0, users.length, { name: 'bob', password: 'pw-bob-0123456', roles: ['any'] } as (typeof users)[number])],
    ['re-passworded', (users) => {
      delete users[0]!.passwordHash;
      users[0]!.password = 'pw-alice-other';
    }],
  ];
  it.each(
    EDITS.flatMap(([edit, f]) => [
      [edit, 'CONNECT', f, (port: number) => `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${AUTH}\r\n`],
      [edit, 'an absolute-URI GET', f, (port: number) => `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${AUTH}\r\n`],
      [
        edit,
        'an Upgrade',
        f,
        (port: number) => `GET http://127.0.0.1:${port}/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${AUTH}\r\n`,
      ],
    ] as const),
  )('alice %s: %s is answered 407 auth-required, nothing dialled', async (_edit, _kind, edit, request) => {
    const passwordHash = await hashPassword('pw-alice-0123', { N: 65_536, r: 8, p: 1 });
    const gw = await startTestGateway({
      mode: 'enforce',
      identity: { requireAuth: true, users: [{ name: 'alice', passwordHash, roles: ['any'] }] },
    });
    cleanups.push(() => gw.stop());
    const dest = await silentDestination();
    const runs = await scryptRuns(gw);
    const s = await client(gw);
    const answer = readUntil(s, '\r\n\r\n');
    s.write(request(dest.port));
    // The reload lands while the hash is being derived.
    await until('the login’s scrypt run', async () => (await scryptRuns(gw)) > runs);
    reloadEdited<{ identity: { users: Array<{ name: string; password?: string; passwordHash?: string }> } }>(gw, (c) => edit(c.identity.users));
    const text = (await answer).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 407 /);
    expect(text).toMatch(/\r\nproxy-authenticate: Basic /i);
    const record = await gw.waitForClosed((r) => r.reason === 'auth-required');
    expect(record).toMatchObject({ verdict: 'block', enforced: true, closeReason: 'auth-required', identity: { user: null } });
    expect(gw.closed).toHaveLength(1);
    expect(dest.accepted()).toBe(0);
  });
});

describe('a signed identity token whose check spans a reload', () => {
  const OLD = 'token-secret-old-0123456789';
  type Edit = (c: { identity: { headers: { signed: { secret: string } } }; limits: { maxFlowsPerIdentity: number } }) => void;
  const rotate: Edit = (c) => {
    c.identity.headers.signed.secret = 'token-secret-new-0123456789';
  };
  const other: Edit = (c) => {
    c.limits.maxFlowsPerIdentity = 100;
  };
  const connect = (port: number, token: string): string => `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Egress-Token: ${token}\r\n\r\n`;
  const get = (port: number, token: string): string => `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Egress-Token: ${token}\r\n\r\n`;
  it.each([
    ['rotates the secret', 'CONNECT', 407, connect, rotate],
    ['rotates the secret', 'an absolute-URI GET', 407, get, rotate],
    // Control: a reload that leaves the signed-header settings alone admits the token.
    ['leaves the secret', 'CONNECT', 200, connect, other],
  ] as const)('a reload that %s: %s is answered %i', async (_edit, _kind, status, request, edit) => {
    const gw = await startTestGateway({
      mode: 'enforce',
      identity: { requireAuth: true, headers: { trustedSources: [], user: 'x-egress-user', host: 'x-egress-host', signed: { header: 'x-egress-token', secret: OLD, maxAgeSec: 300 } } },
    });
    cleanups.push(() => gw.stop());
    const dest = await silentDestination();
    // Eight bad tokens from this address: its next check waits 2 s in the failure throttle (the slow part).
    for (let i = 0; i < 8; i++) {
      const s = await client(gw);
      const answer = readUntil(s, '\r\n\r\n');
      s.write(request(dest.port, 'not.a-token'));
      expect((await answer).toString('latin1')).toMatch(/^HTTP\/1\.1 407 /);
    }
    const throttled = async (): Promise<number> => Number(/^gw_identity_auth_throttled_total (\d+)$/m.exec((await adminGet(gw, '/metrics')).text)?.[1] ?? Number.NaN);
    const before = await throttled();
    const token = signIdentityToken({ user: 'sidecar', exp: Math.floor(Date.now() / 1000) + 120 }, OLD);
    const s = await client(gw);
    const answer = readUntil(s, '\r\n\r\n');
    s.write(request(dest.port, token));
    // The reload lands while the check waits.
    await until('the token check’s throttle wait', async () => (await throttled()) > before);
    reloadEdited(gw, edit);
    const text = (await answer).toString('latin1');
    expect(text).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
    if (status === 200) {
      expect(dest.accepted()).toBe(1);
      return;
    }
    const record = await gw.waitForClosed((r) => r.reason === 'auth-required' && r.reasons.some((x) => x.includes('earlier policy')));
    expect(record).toMatchObject({ verdict: 'block', enforced: true, closeReason: 'auth-required', identity: { user: null } });
    expect(gw.closed).toHaveLength(9);
    expect(dest.accepted()).toBe(0);
  });
});
