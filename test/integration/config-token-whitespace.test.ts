/**
 * A token with whitespace in it (`admin.tokens[].token`, `identity.agents[].token`): the admin API
 * reads `Authorization: Bearer \S+`, so such a token can never be sent. It was accepted by `check`,
 * `serve`, `PUT /v1/policy` and a reload alike; now each refuses it at its path, as `serve` refuses
 * an EGRESSGATE_ADMIN_TOKEN with whitespace.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { CLI, ROOT } from '../helpers/serve-process.ts';

const POLICY = {
  admin: {
    tokens: [
      { name: 'ops', token: 'ops-token-0123456789abcdef', scope: 'admin' },
      { name: 'dash', token: 'dash token 0123456789', scope: 'read' },
    ],
  },
  identity: { agents: [{ name: 'ws1', token: 'agent-token-0123456789\n', sources: ['127.0.0.0/8'] }] },
};

let dir: string;
let gw: TestGateway;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-token-ws-'));
  gw = await startTestGateway();
});
afterAll(async () => {
  await gw?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('a token with whitespace in it is refused at its path', () => {
  it('check exits 1 naming admin.tokens[1].token and identity.agents[0].token', async () => {
    const file = join(dir, 'policy.json');
    await writeFile(file, JSON.stringify(POLICY));
    const r = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(process.execPath, [CLI, 'check', '--config', file], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, _out, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stderr });
      });
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^admin\.tokens\[1\]\.token: has whitespace in it/m);
    expect(r.stderr).toMatch(/^identity\.agents\[0\]\.token: has whitespace in it/m);
    expect(r.stderr).not.toContain('admin.tokens[0]');
    // The secret itself is never echoed.
    expect(r.stderr).not.toContain('dash token');
  }, 60_000);

  it('PUT /v1/policy answers 400 with both paths and keeps the running policy', async () => {
    const before = await fetch(`${gw.adminUrl}/v1/policy`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
    const version = ((await before.json()) as { version: number }).version;
    const res = await fetch(`${gw.adminUrl}/v1/policy`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(POLICY),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: string; details: Array<{ path: string }> };
    expect(body.error).toBe('invalid-policy');
    const paths = body.details.map((e) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['admin.tokens[1].token', 'identity.agents[0].token']));
    const after = await fetch(`${gw.adminUrl}/v1/policy`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
    expect(((await after.json()) as { version: number }).version).toBe(version);
  });
});
