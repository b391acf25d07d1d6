/**
 * A policy that gives one token to two entries is invalid. The admin API takes the first entry a
 * token matches (admin.tokens in order, then identity.agents), so the second never applies: against
 * a serve whose only admin token is the config's `ops`, a PUT listing a read entry with ops's token
 * before the admin entry answered 200, passed the check that an admin token remains, and from then
 * on ops got 403 on every write (PUT /v1/mode, PUT /v1/policy, rollback) until a restart. Now such a
 * PUT is 400 invalid-policy at the second entry, and the running policy keeps serving: its version,
 * ops's writes and a CONNECT it admits. Through the real listeners.
 */
import { once } from 'node:events';
import { connect, createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { sha256hex } from '../unit/admin/harness.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const OPS = 'ops-admin-token-shadow-0123';
const SOC = 'soc-read-token-shadow-0123';
let gw: TestGateway | null = null;
let origin: Server | null = null;

afterEach(async () => {
  await gw?.stop();
  gw = null;
  origin?.close();
  origin = null;
});

async function call(g: TestGateway, method: string, path: string, token: string, body?: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${g.adminUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'text/yaml' }) },
    ...(body === undefined ? {} : { body }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** The status line a CONNECT through the gateway gets. */
async function connectStatus(g: TestGateway, port: number): Promise<string> {
  const c = connect(g.httpPort, g.httpHost);
  c.on('error', () => {});
  await once(c, 'connect');
  c.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  const [chunk] = (await once(c, 'data')) as [Buffer];
  c.destroy();
  return chunk.toString('latin1').split('\r\n')[0] ?? '';
}

/** Enforce mode, no role: a policy that, applied, would refuse every CONNECT. */
const denyAllWith = (admin: string, agents = ''): string =>
  `mode: enforce\nallowRanges: [127.0.0.0/8]\nflowLog: { path: null }\nadmin:\n  tokens:\n${admin}${agents ? `identity:\n  agents:\n${agents}` : ''}`;

describe('one token in two entries', () => {
  it('is refused at the second entry; the running policy, its admin and its flows stay', async () => {
    gw = await startTestGateway(
      { admin: { tokens: [{ name: 'ops', token: OPS, scope: 'admin' }, { name: 'soc', token: SOC, scope: 'read' }] } },
      { adminToken: undefined },
    );
    const g = gw;
    origin = createServer((s) => s.on('error', () => {}).end());
    origin.listen(0, '127.0.0.1');
    await once(origin, 'listening');
    const originPort = (origin.address() as AddressInfo).port;
    expect(await connectStatus(g, originPort)).toMatch(/^HTTP\/1\.1 200 /);

    const cases: Array<[string, string]> = [
      // A read entry with ops's token ahead of the admin entry: ops would be read-only.
      [denyAllWith(`    - { name: soc, token: "${OPS}", scope: read }\n    - { name: ops, token: "${OPS}", scope: admin }\n`), 'admin.tokens[1].token'],
      // The same, the read entry giving the token as its sha256 (any case).
      [denyAllWith(`    - { name: soc, tokenSha256: "${sha256hex(OPS).toUpperCase()}", scope: read }\n    - { name: ops, token: "${OPS}", scope: admin }\n`), 'admin.tokens[1].token'],
      // An agent entry with the admin's token: its `sources` binding would never apply.
      [denyAllWith(`    - { name: ops, token: "${OPS}", scope: admin }\n`, `    - { name: ws-1, token: "${OPS}", sources: [10.0.0.0/8] }\n`), 'identity.agents[0].token'],
    ];
    for (const [body, path] of cases) {
      const put = await call(g, 'PUT', '/v1/policy', OPS, body);
      expect(put.status, path).toBe(400);
      expect(put.json).toMatchObject({ error: 'invalid-policy', details: [{ path, message: expect.stringContaining('the same token as') }] });
      const validate = await call(g, 'POST', '/v1/policy/validate', SOC, body);
      expect(validate.json).toMatchObject({ valid: false, errors: [{ path }] });
    }

    // Nothing changed: version 1, ops still writes, and the CONNECT the policy admits still passes.
    expect((await call(g, 'GET', '/v1/policy', SOC)).json['version']).toBe(1);
    const mode = await fetch(`${g.adminUrl}/v1/mode`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${OPS}`, 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'monitor' }),
    });
    expect(mode.status).toBe(200);
    expect(await connectStatus(g, originPort)).toMatch(/^HTTP\/1\.1 200 /);
  });
});
