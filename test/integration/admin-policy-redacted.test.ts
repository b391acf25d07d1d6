/**
 * A read copy of the policy is not a policy. GET /v1/policy shows read tokens "[redacted]" in place
 * of passwords, password hashes, the signed-header secret, URL credentials and webhook paths; an
 * admin who PUT such a copy back (a dashboard's GET, an edit, the admin's PUT) got 200, and from
 * then on every user's password was the placeholder itself: `curl --proxy-user 'alice:[redacted]'`
 * got through, alice's own password got 407. Now the placeholder is refused wherever it stands for a
 * secret (400 invalid-policy with every path) and the running policy keeps serving.
 * Through the real listeners: the admin API with fetch, the HTTP proxy with curl.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const run = promisify(execFile);
const READ_TOKEN = 'read-token-redacted-copy-0123';
const AGENT_TOKEN = 'agent-token-redacted-copy-0123';
/** A syntactically valid scrypt hash (egressgate hash-password's format). */
const BOB_HASH = 'scrypt$1024$8$1$izFLRePXeAhzFY7eicuf4w$Pv/jTCz3O0NTuxV1sTBqrv2CnHs8U1Kd8IQjobju6TY';

let gw: TestGateway;
let origin: Server;
let originPort = 0;

beforeAll(async () => {
  origin = createServer((_req, res) => res.end('hello'));
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  gw = await startTestGateway({
    admin: { tokens: [{ name: 'soc', token: READ_TOKEN, scope: 'read' }] },
    identity: {
      requireAuth: true,
      users: [
        { name: 'alice', password: 'alice-real-password', roles: ['any'] },
        { name: 'bob', passwordHash: BOB_HASH, roles: ['any'] },
      ],
      headers: { signed: { header: 'x-egress-identity', secret: 'signed-header-secret-0123456789', maxAgeSec: 300 } },
      agents: [{ name: 'ws-17', token: AGENT_TOKEN, sources: ['127.0.0.1/32'] }],
    },
    roles: { viaParent: { allow: [], upstream: 'http://parentuser:parentpass@127.0.0.1:9/' } },
    alerts: { webhooks: [{ url: 'http://127.0.0.1:9/hooks/T000/SECRETXYZ', minSeverity: 'high' }] },
  });
});

afterAll(async () => {
  await gw?.stop();
  origin?.close();
});

async function api(method: string, path: string, token: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${gw.adminUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** HTTP status of a GET through the proxy with `user:password`. */
async function through(login: string): Promise<string> {
  const { stdout } = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-m', '10', '-x', `http://${gw.httpHost}:${gw.httpPort}`, '--proxy-user', login, `http://127.0.0.1:${originPort}/`]);
  return stdout;
}

describe('a read copy of the policy PUT back', () => {
  it('is refused with every placeholder path; the running policy and its passwords stay', async () => {
    expect(await through('alice:alice-real-password')).toBe('200');
    const before = await api('GET', '/v1/policy', gw.adminToken);
    const readCopy = (await api('GET', '/v1/policy', READ_TOKEN)).json['config'] as Record<string, unknown>;
    expect(JSON.stringify(readCopy)).toContain('[redacted]');

    // Only what validation took before: passwords, a parent's login, a webhook's path.
    const simple = structuredClone(readCopy) as { identity: { users: unknown[]; headers: { signed: unknown } } };
    simple.identity.users = simple.identity.users.slice(0, 1);
    simple.identity.headers.signed = null;
    const putSimple = await api('PUT', '/v1/policy', gw.adminToken, simple);
    expect(putSimple.status).toBe(400);
    expect(putSimple.json['error']).toBe('invalid-policy');
    const simplePaths = (putSimple.json['details'] as Array<{ path: string }>).map((d) => d.path);
    expect(simplePaths.sort()).toEqual(['admin.tokens[0].tokenSha256', 'alerts.webhooks[0].url', 'identity.agents[0].tokenSha256', 'identity.users[0].password', 'roles.viaParent.upstream']);

    const put = await api('PUT', '/v1/policy', gw.adminToken, readCopy);
    expect(put.status).toBe(400);
    expect(put.json['error']).toBe('invalid-policy');
    const paths = (put.json['details'] as Array<{ path: string; message: string }>).map((d) => d.path);
    for (const p of ['identity.users[0].password', 'identity.users[1].passwordHash', 'identity.headers.signed.secret', 'roles.viaParent.upstream', 'alerts.webhooks[0].url']) {
      expect(paths).toContain(p);
    }
    for (const d of put.json['details'] as Array<{ message: string }>) expect(d.message).toContain('placeholder');

    // Nothing changed: same version, alice's own password works, the placeholder does not.
    expect((await api('GET', '/v1/policy', gw.adminToken)).json['version']).toBe(before.json['version']);
    expect(await through('alice:alice-real-password')).toBe('200');
    expect(await through('alice:[redacted]')).toBe('407');

    // validate says the same.
    const check = await api('POST', '/v1/policy/validate', READ_TOKEN, readCopy);
    expect(check.json['valid']).toBe(false);
    expect((check.json['errors'] as Array<{ path: string }>).map((e) => e.path)).toContain('identity.users[0].password');

    // The admin's own copy still round-trips.
    const adminCopy = before.json['config'];
    expect((await api('PUT', '/v1/policy', gw.adminToken, adminCopy)).status).toBe(200);
    expect(await through('alice:alice-real-password')).toBe('200');
  });

  it("read scope gets no token digest: from an admin token's sha256 a weak token is guessed offline", async () => {
    const sha = (t: string): string => createHash('sha256').update(t, 'utf8').digest('hex');
    const body = await (await fetch(`${gw.adminUrl}/v1/policy`, { headers: { authorization: `Bearer ${READ_TOKEN}` } })).text();
    for (const t of [READ_TOKEN, AGENT_TOKEN]) {
      expect(body).not.toContain(t);
      expect(body).not.toContain(sha(t));
    }
    const config = (JSON.parse(body) as { config: { admin: { tokens: unknown[] }; identity: { agents: unknown[] } } }).config;
    expect(config.admin.tokens).toEqual([{ name: 'soc', scope: 'read', tokenSha256: '[redacted]' }]);
    expect(config.identity.agents).toEqual([{ name: 'ws-17', sources: ['127.0.0.1/32'], tokenSha256: '[redacted]' }]);
    // An admin still reads the digests (its copy round-trips), and both tokens still authenticate.
    const asAdmin = (await api('GET', '/v1/policy', gw.adminToken)).json['config'] as typeof config;
    expect(asAdmin.admin.tokens).toEqual([{ name: 'soc', scope: 'read', tokenSha256: sha(READ_TOKEN) }]);
    expect((asAdmin.identity.agents[0] as { tokenSha256: string }).tokenSha256).toBe(sha(AGENT_TOKEN));
    expect((await api('GET', '/v1/mode', READ_TOKEN)).status).toBe(200);
    const report = await api('POST', '/v1/agents/reports', AGENT_TOKEN, { host: 'ws-17', reports: [] });
    expect(report.status).toBe(200);
  });
});
