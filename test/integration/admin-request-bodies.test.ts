/**
 * What the admin API does with a request body it cannot take as written, through the real listener:
 * - a field the route's schema does not know is a 400 naming it. fastify's default dropped it
 *   silently: `POST /v1/policy/evaluate {"dest": …, "usr": "alice"}` (a typo of `user`) answered
 *   200 for an anonymous client (would-block) where alice is allowed, and `PUT /v1/mode` took
 *   `{"mode": "enforce", "force": true}`;
 * - a policy body that is empty, only comments or JSON `null` is no policy: each was taken as the
 *   built-in defaults, so a PUT of it replaced every role, user and token (version 2, and every
 *   configured token answered 401 from then on);
 * - `GET /v1/alerts?since=` is an event id or an ISO 8601 time: other text was read by Date.parse's
 *   legacy parser (`06/12/2026` as 12 June, `yesterday 1` as 2001) and answered 200.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const READ_TOKEN = 'read-token-request-bodies-0123';
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
    admin: { tokens: [{ name: 'soc', token: READ_TOKEN, scope: 'read' }] },
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

  it('an empty policy body is refused, by PUT and validate alike, and the running policy stays', async () => {
    const before = await fetch(`${gw.adminUrl}/v1/policy`, { headers: { authorization: `Bearer ${READ_TOKEN}` } });
    const version = ((await before.json()) as { version: number }).version;
    for (const [body, type] of [
      ['null', 'application/json'],
      ['', 'text/yaml'],
      ['# nothing yet\n\n---\n', 'text/yaml'],
      ['  \n', 'text/plain'],
      ['~', 'application/yaml'],
    ] as const) {
      const put = await send('PUT', '/v1/policy', body, type);
      expect(put.status, JSON.stringify(body)).toBe(400);
      expect(put.json).toMatchObject({ error: 'invalid-policy', details: [{ path: '(root)' }] });
      expect((put.json['details'] as Array<{ message: string }>)[0]?.message).toMatch(/empty/);
      const check = await send('POST', '/v1/policy/validate', body, type);
      expect(check.json).toMatchObject({ valid: false, errors: [{ path: '(root)' }] });
    }
    // Nothing was replaced: same version, the configured read token still authenticates, alice still allowed.
    const after = await fetch(`${gw.adminUrl}/v1/policy`, { headers: { authorization: `Bearer ${READ_TOKEN}` } });
    expect(after.status).toBe(200);
    expect(((await after.json()) as { version: number }).version).toBe(version);
    expect((await send('POST', '/v1/policy/evaluate', JSON.stringify({ dest: `127.0.0.1:${originPort}`, user: 'alice' }))).json).toMatchObject({ verdict: 'allow' });
  });
});

describe('admin query values', () => {
  async function alertsSince(since: string): Promise<{ status: number; json: Record<string, unknown> }> {
    const res = await fetch(`${gw.adminUrl}/v1/alerts?since=${encodeURIComponent(since)}`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  }

  // Date.parse took any text its legacy parser reads: 06/12/2026 as 12 June, 'yesterday 1' as 2001.
  it('alerts since= takes an event id or an ISO 8601 time, and nothing else', async () => {
    for (const since of ['06/12/2026', 'yesterday 1', 'Dec 6', 'garbage', '2026-13-45x']) {
      const res = await alertsSince(since);
      expect(res.status, since).toBe(400);
      expect(res.json).toMatchObject({ error: 'bad-request', details: [{ path: 'querystring.since' }] });
    }
    for (const since of ['0', '17', '2026-12-06', '2026-12-06T02:00:00Z', '2026-12-06T02:00:00.123+01:00', '2026-12-06 02:00']) {
      const res = await alertsSince(since);
      expect(res.status, since).toBe(200);
      expect(res.json).toMatchObject({ alerts: [] });
    }
  });
});
