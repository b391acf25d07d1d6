/**
 * A path with a trailing slash is no route's, whether or not a route with a parameter would match
 * it with an empty value: `/v1/flows/` is 404 `not-found` like `/v1/alerts/` (the project has no
 * ignoreTrailingSlash), through the real admin listener. Before, `GET /v1/flows/` was 400 with a
 * `params.id` validation error, `GET /v1/quarantines/` 405 `Allow: DELETE`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
});

async function call(method: string, path: string, token: string | null): Promise<{ status: number; allow: string | null; body: Record<string, unknown> }> {
  const res = await fetch(`${gw.adminUrl}${path}`, { method, headers: token === null ? {} : { authorization: `Bearer ${token}` } });
  return { status: res.status, allow: res.headers.get('allow'), body: (await res.json()) as Record<string, unknown> };
}

describe('admin API: a trailing slash after a collection', () => {
  it('is 404 no route, for every method, like the collections without a parameter route', async () => {
    const cases: Array<[string, string]> = [
      ['GET', '/v1/flows/'],
      ['DELETE', '/v1/flows/'],
      ['PUT', '/v1/flows/'],
      ['GET', '/v1/quarantines/'],
      ['DELETE', '/v1/quarantines/'],
      ['POST', '/v1/policy/rollback/'],
      ['GET', '/v1/alerts/'],
      ['GET', '/v1/policy/'],
    ];
    for (const [method, path] of cases) {
      const r = await call(method, path, gw.adminToken);
      expect({ method, path, status: r.status, allow: r.allow, body: r.body }).toEqual({
        method,
        path,
        status: 404,
        allow: null,
        body: { error: 'not-found', message: `no route ${method} ${path}` },
      });
    }
  });

  it('needs a token first, as any path no route has', async () => {
    const r = await call('GET', '/v1/flows/', null);
    expect(r.status).toBe(401);
  });

  it('leaves the routes with a parameter as they were', async () => {
    expect((await call('GET', '/v1/flows/nope', gw.adminToken)).body).toEqual({ error: 'not-found', message: 'no flow nope' });
    const r = await call('PUT', '/v1/flows/nope', gw.adminToken);
    expect([r.status, r.allow]).toEqual([405, 'DELETE, GET, HEAD']);
    expect((await call('GET', '/v1/flows', gw.adminToken)).status).toBe(200);
  });
});
