/**
 * Ambiguous and malformed proxy credentials, on every HTTP path: the absolute-URI fast path
 * (one-packet GET), node:http (a head split over packets), CONNECT, an Upgrade request (an origin
 * that declines it), and the HTTPS listener (absolute-URI and CONNECT).
 *  - `Proxy-Authorization` twice: 400 `bad-request` with flowId null, before admission (as a
 *    duplicate Content-Length), no flow record, the origin never dialled. Before, the first field was
 *    the one checked: valid then wrong went through as alice (200), wrong then valid got 407.
 *  - the user identity header twice from a source trusted for it: the same 400. Before, the joined
 *    value was ignored and the request went on without the user (403 here). From an untrusted source
 *    the fields stay ignored (the request goes on anonymous) and never reach the origin.
 *  - the signed token header (`identity.headers.signed`) twice, from any source (a token is believed
 *    from anywhere): the same 400. Before, node:http joined the two, the joined value was a bad
 *    token, and the request got 407 `auth-required` with a record and a failure counted.
 *  - `Basic<TAB><token>`, `Basic` with no token: malformed credentials, 407 and an `auth-required`
 *    record. Before, both were read as no credentials at all (403 `not-allowlisted`). `basic` and
 *    several spaces before the token are credentials like any (200 as alice).
 * The origin never sees `Proxy-Authorization` or the identity header.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signIdentityToken } from '../../gateway/identity/signed-header.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { createTestPki, hasOpenssl, type TestPki } from '../helpers/tls.ts';

const canRun = hasOpenssl();
let pki: TestPki | null = null;
let origin: Server;
let originPort = 0;
/** Connections the origin accepted, and every byte it read. */
let accepts = 0;
let originRead = '';
const sockets = new Set<Socket>();

beforeAll(async () => {
  if (!canRun) return;
  pki = await createTestPki({});
  origin = createServer((s) => {
    accepts++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    s.on('data', (b: Buffer) => {
      originRead += b.toString('latin1');
      if (b.includes('\r\n\r\n')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
  await pki?.cleanup();
});

const SECRET = 'sidecar-secret-for-tokens';

/**
 * A gateway of its own for each path: the malformed-credential cases are failures counted against
 * the source, and more than its free failures would be delayed.
 */
function startGateway(): Promise<TestGateway> {
  const tls = pki as TestPki;
  return startTestGateway({
    mode: 'enforce',
    listen: { https: '127.0.0.1:0' },
    tls: { cert: tls.server.certPath, key: tls.server.keyPath },
    identity: {
      users: [{ name: 'alice', password: 'pw-alice', roles: ['special'] }],
      headers: { trustedSources: ['127.0.0.2/32'], user: 'x-egress-user', host: 'x-egress-host', signed: { header: 'x-egress-token', secret: SECRET, maxAgeSec: 60 } },
    },
    roles: { special: { allow: [{ cidr: '127.0.0.1/32', ports: [originPort] }] } },
    defaultRoles: [],
  });
}

/** A token naming `user`, valid for 30 s. */
const token = (user: string): string => signIdentityToken({ user, exp: Math.floor(Date.now() / 1000) + 30 }, SECRET);
const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const VALID = b64('alice:pw-alice');
const WRONG = b64('alice:wrong');

interface Answer {
  status: number;
  body: string;
  /** The client's port: its flow's record names it. */
  port: number;
  /**
   * How many records the gateway had closed before this exchange: its flow's record comes after
   * them (an earlier flow from the same client port, reused, is not this one's).
   */
  since: number;
}

/** Writes `parts` (a number waits that many ms) from `from` and reads the first answer (head and body). */
async function exchange(gw: TestGateway, parts: Array<string | number>, isTls: boolean, from: string): Promise<Answer> {
  const httpsPort = Number(gw.https?.slice(gw.https.lastIndexOf(':') + 1));
  const since = gw.closed.length;
  const s = isTls
    ? tlsConnect({ socket: connect({ host: '127.0.0.1', port: httpsPort, localAddress: from }), rejectUnauthorized: false })
    : connect({ host: gw.httpHost, port: gw.httpPort, localAddress: from });
  s.on('error', () => undefined);
  await once(s, isTls ? 'secureConnect' : 'connect');
  const port = s.localPort as number;
  let text = '';
  s.on('data', (b: Buffer) => {
    text += b.toString('latin1');
  });
  for (const p of parts) {
    if (typeof p === 'number') await new Promise((r) => setTimeout(r, p));
    else s.write(p);
  }
  const isWhole = (): boolean => {
    const end = text.indexOf('\r\n\r\n');
    if (end < 0) return false;
    const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end))?.[1];
    return text.length >= end + 4 + Number(length ?? 0);
  };
  const deadline = Date.now() + 5000;
  while (!isWhole() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  s.destroy();
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), body: text.slice(text.indexOf('\r\n\r\n') + 4), port, since };
}

const get = (fields: string[]): string => `GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: x\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n`;
const connectHead = (fields: string[]): string => `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: x\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n`;
const paths: Array<[string, boolean, (fields: string[]) => Array<string | number>]> = [
  ['absolute-URI fast path', false, (f) => [get(f)]],
  ['absolute-URI on node:http', false, (f) => [get(f).slice(0, 9), 30, get(f).slice(9)]],
  ['CONNECT', false, (f) => [connectHead(f)]],
  ['Upgrade', false, (f) => [get(['Connection: Upgrade', 'Upgrade: websocket', ...f])]],
  ['HTTPS listener absolute-URI', true, (f) => [get(f)]],
  ['HTTPS listener CONNECT', true, (f) => [connectHead(f)]],
];

/** The record of the exchange's flow (from its client port, closed after it began), waited for. */
const recordOf = (gw: TestGateway, a: Answer) => gw.waitForClosed((r) => r.client.port === a.port && gw.closed.indexOf(r) >= a.since, 5000);

/** No flow of the exchange was recorded (the refusal came before admission). */
async function expectNoRecord(gw: TestGateway, a: Answer): Promise<void> {
  await new Promise((r) => setTimeout(r, 100));
  expect(gw.closed.slice(a.since).some((r) => r.client.port === a.port)).toBe(false);
}

describe.skipIf(!canRun).each(paths)('%s', (_path, isTls, parts) => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway();
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it.each([
    ['valid then wrong', [`Proxy-Authorization: Basic ${VALID}`, `Proxy-Authorization: Basic ${WRONG}`]],
    ['wrong then valid', [`Proxy-Authorization: Basic ${WRONG}`, `Proxy-Authorization: Basic ${VALID}`]],
    ['the same valid one twice', [`Proxy-Authorization: Basic ${VALID}`, `proxy-authorization: Basic ${VALID}`]],
  ])('Proxy-Authorization twice (%s): 400 bad-request, no flow, the origin never dialled', async (_name, fields) => {
    const before = accepts;
    const a = await exchange(gw, parts(fields), isTls, '127.0.0.1');
    expect(a.status).toBe(400);
    expect(JSON.parse(a.body)).toEqual({ error: 'bad request', reason: 'bad-request', flowId: null });
    await expectNoRecord(gw, a);
    expect(accepts).toBe(before);
    expect(gw.logs.some((l) => l.why === 'duplicate-proxy-authorization')).toBe(true);
  });

  it.each([
    ['Basic<TAB><token>', `Basic\t${VALID}`],
    ['Basic with no token', 'Basic'],
    ['Basic, a space and no token', 'Basic '],
  ])('%s: 407, the record is auth-required and anonymous, the origin never dialled', async (_name, value) => {
    const before = accepts;
    const a = await exchange(gw, parts([`Proxy-Authorization: ${value}`]), isTls, '127.0.0.1');
    expect(a.status).toBe(407);
    expect(JSON.parse(a.body)).toMatchObject({ reason: 'auth-required' });
    const rec = await recordOf(gw, a);
    expect(rec.verdict).toBe('block');
    expect(rec.reason).toBe('auth-required');
    expect(rec.identity.user).toBeNull();
    expect(accepts).toBe(before);
  });

  it.each([
    ['Basic and one space (control)', `Basic ${VALID}`],
    ['lower-case basic', `basic ${VALID}`],
    ['three spaces before the token', `Basic   ${VALID}`],
  ])('%s: 200 as alice', async (_name, value) => {
    const a = await exchange(gw, parts([`Proxy-Authorization: ${value}`]), isTls, '127.0.0.1');
    expect(a.status).toBe(200);
    const rec = await recordOf(gw, a);
    expect(rec.verdict).toBe('allow');
    expect(rec.identity.user).toBe('alice');
  });

  it('the user header twice from a trusted source: 400 bad-request, no flow, the origin never dialled', async () => {
    for (const fields of [
      ['X-Egress-User: alice', 'X-Egress-User: mallory'],
      ['X-Egress-User: alice', 'x-egress-user: alice'],
    ]) {
      const before = accepts;
      const a = await exchange(gw, parts(fields), isTls, '127.0.0.2');
      expect(a.status).toBe(400);
      expect(JSON.parse(a.body)).toEqual({ error: 'bad request', reason: 'bad-request', flowId: null });
      await expectNoRecord(gw, a);
      expect(accepts).toBe(before);
    }
    expect(gw.logs.some((l) => l.why === 'duplicate-identity-header')).toBe(true);
  });

  it('the signed token header twice, from any source: 400 bad-request, no flow, the origin never dialled', async () => {
    for (const fields of [
      [`X-Egress-Token: ${token('alice')}`, `X-Egress-Token: ${token('mallory')}`],
      [`X-Egress-Token: ${token('mallory')}`, `X-Egress-Token: ${token('alice')}`],
      [`X-Egress-Token: ${token('alice')}`, `x-egress-token: ${token('alice')}`],
    ]) {
      const before = accepts;
      const a = await exchange(gw, parts(fields), isTls, '127.0.0.1');
      expect(a.status).toBe(400);
      expect(JSON.parse(a.body)).toEqual({ error: 'bad request', reason: 'bad-request', flowId: null });
      await expectNoRecord(gw, a);
      expect(accepts).toBe(before);
    }
    expect(gw.logs.some((l) => l.why === 'duplicate-signed-token')).toBe(true);
  });

  it('the signed token header once names its user (control)', async () => {
    const a = await exchange(gw, parts([`X-Egress-Token: ${token('alice')}`]), isTls, '127.0.0.1');
    expect(a.status).toBe(200);
    expect((await recordOf(gw, a)).identity.user).toBe('alice');
  });

  it('the user header once from a trusted source names the user (control)', async () => {
    const a = await exchange(gw, parts(['X-Egress-User: alice']), isTls, '127.0.0.2');
    expect(a.status).toBe(200);
    expect((await recordOf(gw, a)).identity.user).toBe('alice');
  });

  it('the user header twice from an untrusted source is ignored: the request goes on anonymous', async () => {
    const a = await exchange(gw, parts(['X-Egress-User: alice', 'X-Egress-User: alice']), isTls, '127.0.0.1');
    expect(a.status).toBe(403);
    const rec = await recordOf(gw, a);
    expect(rec.reason).toBe('not-allowlisted');
    expect(rec.identity.user).toBeNull();
  });
});

describe.skipIf(!canRun)('what the origin saw', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway();
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('the untrusted duplicate identity header is stripped on the way to an allowed origin', async () => {
    const before = originRead.length;
    const a = await exchange(gw, [get([`Proxy-Authorization: Basic ${VALID}`, 'X-Egress-User: mallory', 'X-Egress-User: eve'])], false, '127.0.0.1');
    expect(a.status).toBe(200);
    expect((await recordOf(gw, a)).identity.user).toBe('alice');
    expect(originRead.length).toBeGreaterThan(before);
  });

  it('never a Proxy-Authorization, identity or token header, on any path', () => {
    // The 200s above reached it: it read their requests, without the credentials.
    expect(originRead).toContain('GET / HTTP/1.1');
    expect(originRead.toLowerCase()).not.toContain('proxy-authorization');
    expect(originRead.toLowerCase()).not.toContain('x-egress-user');
    expect(originRead.toLowerCase()).not.toContain('x-egress-token');
  });
});
