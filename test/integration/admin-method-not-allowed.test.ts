/**
 * The admin API answers a method a route does not have with 405 and `Allow` (RFC 9110 §15.5.6),
 * not 404, and either only to a valid token (without one: 401, as for any other request); and `count` in `GET /v1/flows` is the number of flows in that page (docs/spec-notes.md).
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { Agent, request } from 'undici';
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
  gw = await startTestGateway({ admin: { tokens: [{ name: 'probe-agent', token: 'agent-scope-token-for-405', scope: 'agent' }] } });
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
      // fastify routes /v1/flows/ to /v1/flows/:id (an empty id), yet no route has that path.
      ['PATCH', '/v1/flows/'],
    ] as const) {
      const got = await call(method, path);
      expect({ method, path, status: got.status, allow: got.allow }).toEqual({ method, path, status: 404, allow: null });
      expect(got.body.error).toBe('not-found');
    }
  });
});

describe('admin API: no route, no token', () => {
  // Regression: PATCH /v1/flows without a token was 405 with `Allow: GET, HEAD` where GET got 401,
  // telling an anonymous client that the route exists and what it answers.
  it('is 401 without Allow whatever the method and path; a valid token of any scope then gets 404 / 405', async () => {
    const cases: Array<[string, string, number]> = [
      ['PATCH', '/v1/flows', 405],
      ['POST', '/v1/mode', 405],
      ['GET', '/v1/policy/rollback/3', 405],
      ['DELETE', '/v1/audit', 405],
      ['PATCH', '/healthz', 405],
      ['OPTIONS', '/v1/policy', 405],
      ['GET', '/v1/nothing', 404],
      ['DELETE', '/admin/secret', 404],
    ];
    // Each anonymous request from its own loopback address: the failure delay counts per address.
    for (const [i, [method, path, authed]] of cases.entries()) {
      const dispatcher = new Agent({ localAddress: `127.0.0.${150 + i}` });
      try {
        for (const token of [undefined, 'not-a-token']) {
          const res = await request(`${gw.adminUrl}${path}`, { method: method as 'GET', dispatcher, headers: token ? { authorization: `Bearer ${token}` } : {} });
          const body = (await res.body.json()) as Record<string, unknown>;
          expect({ method, path, token, status: res.statusCode, allow: res.headers.allow }).toEqual({ method, path, token, status: 401, allow: undefined });
          expect(body.error).toBe('unauthorized');
          expect(String(res.headers['www-authenticate'])).toMatch(/^Bearer realm="egressgate"/);
        }
        const res = await request(`${gw.adminUrl}${path}`, { method: method as 'GET', dispatcher, headers: { authorization: 'Bearer agent-scope-token-for-405' } });
        await res.body.dump();
        expect({ method, path, status: res.statusCode, hasAllow: res.headers.allow !== undefined }).toEqual({ method, path, status: authed, hasAllow: authed === 405 });
      } finally {
        await dispatcher.close();
      }
    }
  });

  it('the token-free routes still answer without one', async () => {
    for (const path of ['/healthz', '/readyz', '/proxy.pac']) {
      const res = await fetch(`${gw.adminUrl}${path}`);
      await res.arrayBuffer();
      expect({ path, status: res.status }).toEqual({ path, status: 200 });
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
