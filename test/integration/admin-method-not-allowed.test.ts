/**
 * The admin API answers a method a route does not have with 405 and `Allow` (RFC 9110 §15.5.6),
 * not 404; and `count` in `GET /v1/flows` is the number of flows in that page (docs/spec-notes.md).
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawExchange } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;

beforeAll(async () => {
  origin = createServer((_req, res) => {
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await new Promise((r) => origin.close(r));
});

async function call(method: string, path: string): Promise<{ status: number; allow: string | null; body: Record<string, unknown> }> {
  const res = await fetch(`${gw.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${gw.adminToken}` } });
  return { status: res.status, allow: res.headers.get('allow'), body: (await res.json()) as Record<string, unknown> };
}

describe('admin API: a method the route does not answer', () => {
  // Regression: PATCH /v1/flows (or any method a real route lacks) answered 404 "no route".
  it('is 405 with Allow naming the methods it answers, in the error shape', async () => {
    const cases: Array<[string, string, string]> = [
      ['PATCH', '/v1/flows', 'GET, HEAD'],
      ['PUT', '/v1/flows/0123abcd', 'DELETE, GET, HEAD'],
      ['POST', '/v1/mode', 'GET, HEAD, PUT'],
      ['GET', '/v1/policy/rollback/3', 'POST'],
      ['DELETE', '/v1/policy?x=1', 'GET, HEAD, PUT'],
      ['PATCH', '/healthz', 'GET, HEAD'],
      // fastify routes /v1/flows/ to /v1/flows/:id (an empty id).
      ['PATCH', '/v1/flows/', 'DELETE, GET, HEAD'],
    ];
    for (const [method, path, allow] of cases) {
      const got = await call(method, path);
      expect({ method, path, status: got.status, allow: got.allow }).toEqual({ method, path, status: 405, allow });
      expect(got.body.error).toBe('method-not-allowed');
      expect(String(got.body.message)).toContain(method);
    }
  });

  it('a path no route has is still 404', async () => {
    for (const [method, path] of [
      ['GET', '/v1/nothing'],
      ['PATCH', '/v1/flows/a/b'],
    ] as const) {
      const got = await call(method, path);
      expect({ method, path, status: got.status, allow: got.allow }).toEqual({ method, path, status: 404, allow: null });
      expect(got.body.error).toBe('not-found');
    }
  });
});

describe('GET /v1/flows count', () => {
  it('is the number of flows in the page (the filter and limit applied), not the number matching', async () => {
    const port = (origin.address() as { port: number }).port;
    for (let i = 0; i < 3; i++) {
      const { response } = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${port}/${i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect(response).toMatch(/^HTTP\/1\.1 200 /);
    }
    await gw.waitForClosed(() => gw.closed.length >= 3);
    const page = JSON.parse((await adminGet(gw, '/v1/flows?state=closed&limit=2')).text) as { flows: unknown[]; count: number };
    expect(page.flows).toHaveLength(2);
    expect(page.count).toBe(2);
    const all = JSON.parse((await adminGet(gw, '/v1/flows?state=closed')).text) as { flows: unknown[]; count: number };
    expect(all.count).toBe(3);
  });
});
