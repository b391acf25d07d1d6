/**
 * What the admin listener refuses before any route, through a real serve's listener: the router's
 * refusals (a bad percent-escape in the path, a path segment past 100 characters) come after the
 * token, as for a path no route has, and every such answer, node's parser refusals too (malformed,
 * too large, too slow), is in the API's error shape. Before, fastify answered them itself: an
 * anonymous `GET /v1/flows/%zz` got 400 and `/v1/flows/<120 a>` 414 where every other path is 401,
 * in its shape (`{"error":"Bad Request","code":"FST_ERR_BAD_URL",…,"statusCode":400}`), and the
 * parser's 400 / 431 / 408 came without Date (`{"error":"Bad Request","message":"Client Error",…}`).
 * Every one carries `cache-control: no-store` and `x-content-type-options: nosniff`, as the routes'
 * answers do: the router's 400 / 414 (and the 401 before them) lacked both, fastify running no onSend
 * hook for them.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;

beforeAll(async () => {
  // No lockout: the test sends no token on purpose; a short head timeout for the 408.
  gw = await startTestGateway({ admin: { maxAuthFailuresPerSource: 0 }, limits: { headerTimeoutMs: 1_000 } });
});

afterAll(async () => {
  await gw?.stop();
});

const LONG_ID = 'a'.repeat(120);

async function get(path: string, token: string | null): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(`${gw.adminUrl}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

/** Raw bytes to the admin listener; everything it answers until it closes (at most 10 s). */
async function raw(text: string): Promise<string> {
  const [host, port] = [gw.adminUrl.replace(/^http:\/\//, '').split(':')[0], Number(gw.adminUrl.split(':').at(-1))];
  const c = connect(port, host);
  c.on('error', () => {});
  await once(c, 'connect');
  c.write(text);
  let out = '';
  c.on('data', (b: Buffer) => {
    out += b.toString('latin1');
  });
  await Promise.race([once(c, 'close'), new Promise((r) => setTimeout(r, 10_000))]);
  c.destroy();
  return out;
}

function expectSafetyHeaders(headers: Headers, what: string): void {
  expect(headers.get('cache-control'), what).toBe('no-store');
  expect(headers.get('x-content-type-options'), what).toBe('nosniff');
}

describe('admin listener: answers before any route', () => {
  it('a path the router refuses needs a token first (401), then is 400 / 414 in the API shape', async () => {
    for (const path of ['/v1/flows/%zz', `/v1/flows/${LONG_ID}`]) {
      const anon = await get(path, null);
      expect(anon.status, path).toBe(401);
      expect(anon.headers.get('www-authenticate')).toMatch(/^Bearer realm="egressgate"/);
      expect(anon.body).toEqual({ error: 'unauthorized', message: 'a Bearer token is required' });
      expect((await get(path, 'not-a-token')).status, path).toBe(401);
      expectSafetyHeaders(anon.headers, `anonymous ${path}`);
    }
    const bad = await get('/v1/flows/%zz', gw.adminToken);
    expect(bad.status).toBe(400);
    expect(Object.keys(bad.body).sort()).toEqual(['error', 'message']);
    expect(bad.body['error']).toBe('bad-request');
    expectSafetyHeaders(bad.headers, 'bad escape');
    const long = await get(`/v1/flows/${LONG_ID}`, gw.adminToken);
    expect(long.status).toBe(414);
    expect(Object.keys(long.body).sort()).toEqual(['error', 'message']);
    expect(long.body['error']).toBe('uri-too-long');
    expectSafetyHeaders(long.headers, 'long segment');
    // A path outside /v1/ that no route has: an error is never cached either.
    const none = await get('/nope', gw.adminToken);
    expect(none.status).toBe(404);
    expectSafetyHeaders(none.headers, '/nope');
  });

  it("node's parser refusals are in the API shape, with Date, and close the connection", async () => {
    const cases: Array<[string, number, string]> = [
      ['GARBAGE\r\n\r\n', 400, 'bad-request'],
      [`GET /v1/policy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`, 431, 'header-too-large'],
      // Half a head: limits.headerTimeoutMs (1 s here) ends it.
      ['GET /v1/policy HTTP/1.1\r\nHost: 127.0.0.1\r\n', 408, 'request-timeout'],
    ];
    for (const [request, status, error] of cases) {
      const answer = await raw(request);
      const [head = '', body = ''] = answer.split('\r\n\r\n');
      expect(head, error).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      expect(head).toMatch(/\r\ndate: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT(\r\n|$)/i);
      expect(head).toMatch(/\r\ncontent-type: application\/json/i);
      expect(head).toMatch(/\r\ncache-control: no-store\r\n/i);
      expect(head).toMatch(/\r\nx-content-type-options: nosniff\r\n/i);
      const parsed = JSON.parse(body) as Record<string, unknown>;
      expect(Object.keys(parsed).sort()).toEqual(['error', 'message']);
      expect(parsed['error']).toBe(error);
    }
  });
});
