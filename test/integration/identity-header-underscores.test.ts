/**
 * The underscore spellings of the identity headers (`X_Egress_User`, `X-Egress_Host`,
 * `Proxy_Authorization`, the signed token's): a CGI-style origin reads `X_Egress_User` and
 * `X-Egress-User` as the same variable (HTTP_X_EGRESS_USER), so they never reach the destination,
 * on either absolute-URI path or on Upgrade, and are never taken as identity.
 */
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawExchange } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let port: number;
const seen = new Map<string, IncomingHttpHeaders>();
/** The trusted front: identity headers from it name users. */
const TRUSTED = '127.0.0.2';

const SPOOFS = ['X_Egress_User: mallory', 'x-egress_host: mallorys-box', 'X_EGRESS_TOKEN: forged', `Proxy_Authorization: Basic ${Buffer.from('alice:secret').toString('base64')}`];

beforeAll(async () => {
  origin = createServer((req, res) => {
    seen.set(req.url ?? '', req.headers);
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  origin.on('upgrade', (req, socket) => {
    seen.set(req.url ?? '', req.headers);
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway({
    identity: { headers: { trustedSources: [`${TRUSTED}/32`], user: 'x-egress-user', host: 'x-egress-host', signed: { header: 'x-egress-token', secret: 's'.repeat(32), maxAgeSec: 300 } } },
  });
});

afterAll(async () => {
  await gw?.stop();
  await new Promise((r) => origin.close(r));
});

/** Identity-looking fields the origin received: any spelling of the identity headers and Proxy-Authorization. */
function identityFields(headers: IncomingHttpHeaders | undefined): string[] {
  return Object.keys(headers ?? {}).filter((name) => /^(x[-_]egress[-_](user|host|token)|proxy[-_]authorization)$/.test(name));
}

describe('underscore spellings of the identity headers', () => {
  // Regression: only the configured spellings were stripped; X_Egress_User: mallory reached the
  // origin, where a CGI-style application reads it as X-Egress-User.
  const requests: Array<[string, (path: string) => string]> = [
    ['absolute-URI GET (fast path)', (path) => `GET http://127.0.0.1:${port}${path} HTTP/1.1\r\nHost: x\r\n${SPOOFS.join('\r\n')}\r\nConnection: close\r\n\r\n`],
    ['absolute-URI POST (node:http)', (path) => `POST http://127.0.0.1:${port}${path} HTTP/1.1\r\nHost: x\r\n${SPOOFS.join('\r\n')}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`],
    ['Upgrade', (path) => `GET http://127.0.0.1:${port}${path} HTTP/1.1\r\nHost: x\r\n${SPOOFS.join('\r\n')}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`],
  ];
  for (const [i, [what, head]] of requests.entries()) {
    it(`${what}: none reaches the origin, other underscore fields do`, async () => {
      const path = `/spoof-${i}`;
      const { response } = await rawExchange(gw.httpPort, head(path).replace('Host: x\r\n', 'Host: x\r\nX_Request_Id: r-1\r\n'));
      expect(response).toMatch(/^HTTP\/1\.1 (200|403) /);
      expect(seen.has(path)).toBe(true);
      expect(identityFields(seen.get(path))).toEqual([]);
      // An unrelated field with underscores is the client's business: passed on.
      expect(seen.get(path)?.x_request_id).toBe('r-1');
      const rec = await gw.waitForClosed((f) => f.destination.port === port && f.bytesIn > 0 && f.client.ip === '127.0.0.1' && !f.identity.user);
      expect(rec.identity.user).toBeNull();
    });
  }

  it('from a trusted source, X_Egress_User names nobody (X-Egress-User does)', async () => {
    const ask = async (field: string, path: string): Promise<void> => {
      const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: TRUSTED });
      s.on('error', () => undefined);
      await once(s, 'connect');
      const closed = once(s, 'close');
      s.resume();
      s.write(`GET http://127.0.0.1:${port}${path} HTTP/1.1\r\nHost: x\r\n${field}\r\nConnection: close\r\n\r\n`);
      await closed;
    };
    await ask('X_Egress_User: bob', '/trusted-underscore');
    const underscore = await gw.waitForClosed((f) => f.client.ip === TRUSTED && f.destination.port === port);
    expect(underscore.identity.user).toBeNull();
    expect(identityFields(seen.get('/trusted-underscore'))).toEqual([]);
    await ask('X-Egress-User: bob', '/trusted-dash');
    const dash = await gw.waitForClosed((f) => f.client.ip === TRUSTED && f.identity.user === 'bob');
    expect(dash.identity.user).toBe('bob');
  });
});
