/**
 * What the admin API does with a request body it cannot take as written, through the real listener:
 * - a field the route's schema does not know is a 400 naming it. fastify's default dropped it
 *   silently: `POST /v1/policy/evaluate {"dest": …, "usr": "alice"}` (a typo of `user`) answered
 *   200 for an anonymous client (would-block) where alice is allowed, and `PUT /v1/mode` took
 *   `{"mode": "enforce", "force": true}`.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
let origin: Server;
let originPort = 0;

beforeAll(async () => {
  origin = createServer((_req, res) => res.end('hello'));
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  gw = await startTestGateway({
    identity: { users: [{ name: 'alice', password: 'alice-password', roles: ['dev'] }] },
    roles: { dev: { allow: [{ cidr: '127.0.0.0/8' }] } },
    defaultRoles: [],
  });
});

afterAll(async () => {
  await gw?.stop();
  origin?.close();
});

async function send(method: string, path: string, body: string, type = 'application/json'): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${gw.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': type }, body });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe('admin request bodies', () => {
  it('a field the schema does not know is a 400 naming it, not dropped', async () => {
    const dest = `127.0.0.1:${originPort}`;
    expect((await send('POST', '/v1/policy/evaluate', JSON.stringify({ dest, user: 'alice' }))).json).toMatchObject({ verdict: 'allow' });
    const typo = await send('POST', '/v1/policy/evaluate', JSON.stringify({ dest, usr: 'alice' }));
    expect(typo.status).toBe(400);
    expect(typo.json).toMatchObject({ error: 'bad-request', details: [{ path: 'body.usr', message: 'must NOT have additional properties' }] });

    const mode = await send('PUT', '/v1/mode', JSON.stringify({ mode: 'enforce', force: true }));
    expect(mode.status).toBe(400);
    expect(mode.json).toMatchObject({ error: 'bad-request', details: [{ path: 'body.force' }] });
    const now = await fetch(`${gw.adminUrl}/v1/mode`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
    expect(((await now.json()) as { mode: string }).mode).toBe('monitor');
  });
});
