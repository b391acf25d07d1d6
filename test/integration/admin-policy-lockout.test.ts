/**
 * A policy write that would leave the admin API without an admin is refused. `PUT /v1/policy`
 * replaces the whole policy, tokens included: against a serve whose only admin token is the config's
 * `ops`, a PUT of a policy naming just the read token (or `{}`) answered 200, and from then on ops got
 * 401 on every route: no write, no rollback, until a restart. Now such a PUT is 400 invalid-policy at
 * admin.tokens and the running policy stays; a PUT that hands admin to another token passes, as does
 * any PUT while a token outside the policy (EGRESSGATE_ADMIN_TOKEN) remains. Through the real listener.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const OPS = 'ops-admin-token-lockout-0123';
const OPS2 = 'ops2-admin-token-lockout-0123';
const SOC = 'soc-read-token-lockout-0123';
let gw: TestGateway | null = null;

afterEach(async () => {
  await gw?.stop();
  gw = null;
});

async function call(g: TestGateway, method: string, path: string, token: string, body?: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${g.adminUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'text/yaml' }) },
    ...(body === undefined ? {} : { body }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const policyWith = (tokens: string): string => `mode: monitor\nallowRanges: [127.0.0.0/8]\nflowLog: { path: null }\nadmin:\n  tokens:\n${tokens}`;

describe('a policy write that would leave no admin', () => {
  it('is refused while the config holds the only admin token; handing admin to another token passes', async () => {
    // No token outside the policy: the config's ops is the only admin.
    gw = await startTestGateway(
      { admin: { tokens: [{ name: 'ops', token: OPS, scope: 'admin' }, { name: 'soc', token: SOC, scope: 'read' }] } },
      { adminToken: undefined },
    );
    const g = gw;
    for (const body of [policyWith(`    - { name: soc, token: "${SOC}", scope: read }\n`), '{}']) {
      const put = await call(g, 'PUT', '/v1/policy', OPS, body);
      expect(put.status, body).toBe(400);
      expect(put.json).toMatchObject({ error: 'invalid-policy', details: [{ path: 'admin.tokens' }] });
    }
    // Nothing changed: the version is still 1 and ops is still an admin.
    expect((await call(g, 'GET', '/v1/policy', SOC)).json['version']).toBe(1);
    expect((await call(g, 'POST', '/v1/policy/rollback/1', OPS)).status).toBe(200);

    const handOver = await call(g, 'PUT', '/v1/policy', OPS, policyWith(`    - { name: ops2, token: "${OPS2}", scope: admin }\n`));
    expect(handOver.status).toBe(200);
    expect((await call(g, 'GET', '/v1/mode', OPS)).status).toBe(401);
    expect((await call(g, 'GET', '/v1/mode', OPS2)).status).toBe(200);
    const audit = (await call(g, 'GET', '/v1/audit', OPS2)).json['entries'] as Array<{ status: number; route: string }>;
    expect(audit.filter((e) => e.route === '/v1/policy').map((e) => e.status)).toEqual([200, 400, 400]);
    expect((await call(g, 'GET', '/v1/policy', OPS2)).json['version']).toBe(3);
  });

  it('passes while a token outside the policy remains an admin', async () => {
    gw = await startTestGateway({ admin: { tokens: [{ name: 'soc', token: SOC, scope: 'read' }] } });
    const put = await call(gw, 'PUT', '/v1/policy', gw.adminToken, '{}');
    expect(put.status).toBe(200);
    expect((await call(gw, 'GET', '/v1/mode', gw.adminToken)).status).toBe(200);
  });
});
