/**
 * A `Proxy-Authorization: Basic` value that is not one base64 token is refused 407, on the
 * absolute-URI fast path (one-packet GET), on node:http (a head split over packets) and on CONNECT:
 * the origin behind a role only that user has never sees a connection, and the record is
 * `auth-required` with the anonymous identity. Before, node's lenient base64 decoder read
 * `Basic <token> junk`, `Basic <token>!!` and `Basic <token>, Basic <other>` as `<token>`'s
 * credentials, and the request went through as that user (200).
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
let origin: Server;
let originPort = 0;
let accepts = 0;
const sockets = new Set<Socket>();

beforeAll(async () => {
  origin = createServer((s) => {
    accepts++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    s.on('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  gw = await startTestGateway({
    mode: 'enforce',
    identity: { users: [{ name: 'alice', password: 'pw-alice', roles: ['special'] }] },
    roles: { special: { allow: [{ cidr: '127.0.0.1/32', ports: [originPort] }] } },
    defaultRoles: [],
  });
});

afterAll(async () => {
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const VALID = b64('alice:pw-alice');

/** Writes `parts` (a number waits that many ms) and returns the status of the first answer. */
async function exchange(parts: Array<string | number>): Promise<number> {
  const s = connect(gw.httpPort, gw.httpHost);
  s.on('error', () => undefined);
  await once(s, 'connect');
  let text = '';
  s.on('data', (b: Buffer) => {
    text += b.toString('latin1');
  });
  for (const p of parts) {
    if (typeof p === 'number') await new Promise((r) => setTimeout(r, p));
    else s.write(p);
  }
  const deadline = Date.now() + 5000;
  while (!/^HTTP\/1\.1 \d{3}/.test(text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  s.destroy();
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
}

const get = (auth: string): string => `GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${auth}\r\n\r\n`;
const paths: Array<[string, (auth: string) => Array<string | number>]> = [
  ['absolute-URI fast path', (auth) => [get(auth)]],
  ['absolute-URI on node:http', (auth) => [get(auth).slice(0, 9), 30, get(auth).slice(9)]],
  ['CONNECT', (auth) => [`CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${auth}\r\n\r\n`]],
];

describe.each(paths)('%s', (_path, parts) => {
  it('valid Basic credentials reach the role (control)', async () => {
    expect(await exchange(parts(`Basic ${VALID}`))).toBe(200);
  });

  it.each([
    ['a token followed by junk', `Basic ${VALID} junk`],
    ['characters outside base64 after the token', `Basic ${VALID}!!`],
    ['two credentials joined by a comma', `Basic ${VALID}, Basic ${b64('alice:wrong')}`],
  ])('%s: 407, the origin sees nothing, the record is auth-required', async (_name, auth) => {
    const before = accepts;
    const closed = gw.closed.length;
    expect(await exchange(parts(auth))).toBe(407);
    // The refused flow's own record (the control's tunnel may close meanwhile).
    const rec = await gw.waitForClosed((r) => gw.closed.indexOf(r) >= closed && r.verdict === 'block');
    expect(rec.reason).toBe('auth-required');
    expect(rec.identity.user).toBeNull();
    expect(accepts).toBe(before);
  });
});
