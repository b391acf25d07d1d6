/**
 * Regression: an `admin.tokens` or `identity.agents` entry repeating EGRESSGATE_ADMIN_TOKEN passed
 * start, SIGHUP reload and PUT /v1/policy. The env token authenticates first, so the entry never
 * applied: a read entry `soc` with the env token's value made its holder an admin, its name never
 * in the audit trail. Two entries with one token were already invalid (load-config's rule); now an
 * entry with the env token is too, at its `token` / `tokenSha256`, wherever the policy comes in:
 * start (serve exits 1, saying so), reload (refused, the running policy stays), PUT (400).
 * `egressgate check` and POST /v1/policy/validate passed it (valid, exit 0) though serve and a
 * reload refuse it; now check refuses it when EGRESSGATE_ADMIN_TOKEN is set in its environment,
 * and validate (asked with an admin token) as PUT does, the token never in the answer.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, TEST_ADMIN_TOKEN, until } from '../helpers/gateway.ts';
import { CLI, killIfRunning, loopbackServeConfig, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';
import { sha256hex } from '../unit/admin/harness.ts';

const ENV_TOKEN = 'env-admin-token-repeated-0123456789';
const MESSAGE = 'the same token as EGRESSGATE_ADMIN_TOKEN';
const dir = mkdtempSync(join(tmpdir(), 'egw-env-token-'));
let gw: TestGateway | null = null;
const served: Served[] = [];

afterEach(async () => {
  await gw?.stop();
  gw = null;
  for (const s of served.splice(0)) await killIfRunning(s.child);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, extra: string): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(path, `${loopbackServeConfig('-')}${extra}`);
  return path;
}

const REPEAT = `admin: { tokens: [ { name: ops, token: ops-token-0123456789abcdef, scope: admin }, { name: soc, token: ${ENV_TOKEN}, scope: read } ] }\n`;

describe('an entry repeating EGRESSGATE_ADMIN_TOKEN', () => {
  it('serve --config: does not start, naming the entry', async () => {
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [CLI, 'serve', '--config', file('start', REPEAT), '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
        { cwd: ROOT, env: { ...process.env, EGRESSGATE_ADMIN_TOKEN: ENV_TOKEN }, timeout: 110_000 },
        (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`admin.tokens[1].token: ${MESSAGE}`);
    expect(r.stdout).not.toContain('"listening"');
  }, 120_000);

  it('SIGHUP reload: refused at the entry, the running policy stays', async () => {
    const path = file('reload', '');
    const s = await spawnServe(path, { env: { EGRESSGATE_ADMIN_TOKEN: ENV_TOKEN } });
    served.push(s);
    file('reload', REPEAT);
    s.child.kill('SIGHUP');
    await until('the reload refused', () => s.stderr().includes('policy reload failed'), 20_000);
    const line = s.stderr().split('\n').find((l) => l.includes('policy reload failed')) ?? '';
    expect(line).toContain('"path":"admin.tokens[1].token"');
    expect(line).toContain(MESSAGE);
    expect(s.child.exitCode).toBeNull();
  }, 120_000);

  it('PUT /v1/policy: 400 at the entry (its sha256 too, an agent too), the running version stays', async () => {
    gw = await startTestGateway({});
    const g = gw;
    const put = async (body: string): Promise<{ status: number; json: Record<string, unknown> }> => {
      const res = await fetch(`${g.adminUrl}/v1/policy`, { method: 'PUT', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'text/yaml' }, body });
      return { status: res.status, json: (await res.json()) as Record<string, unknown> };
    };
    const before = g.policy.version();
    const bySha = await put(`flowLog: { path: null }\nadmin: { tokens: [ { name: soc, tokenSha256: "${sha256hex(TEST_ADMIN_TOKEN).toUpperCase()}", scope: read } ] }\n`);
    expect(bySha.status).toBe(400);
    expect(bySha.json).toMatchObject({ error: 'invalid-policy', details: [{ path: 'admin.tokens[0].tokenSha256', message: expect.stringContaining(MESSAGE) }] });
    const agent = await put(`flowLog: { path: null }\nidentity: { agents: [ { name: a1, token: ${TEST_ADMIN_TOKEN}, sources: [127.0.0.1/32] } ] }\n`);
    expect(agent.status).toBe(400);
    expect(agent.json).toMatchObject({ details: [{ path: 'identity.agents[0].token', message: expect.stringContaining(MESSAGE) }] });
    expect(g.policy.version()).toBe(before);
    // Its own token: accepted.
    expect((await put('flowLog: { path: null }\nadmin: { tokens: [ { name: soc, token: soc-read-token-0123456789, scope: read } ] }\n')).status).toBe(200);
  });

  it('egressgate check: exit 1 at the entry when EGRESSGATE_ADMIN_TOKEN is set, as serve; exit 0 without it', async () => {
    const path = file('check', REPEAT);
    const check = (env: NodeJS.ProcessEnv, json: boolean): Promise<{ code: number; stdout: string; stderr: string }> =>
      new Promise((resolve) => {
        execFile(process.execPath, [CLI, 'check', '--config', path, ...(json ? ['--json'] : [])], { cwd: ROOT, env, timeout: 110_000 }, (err, stdout, stderr) =>
          resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
      });
    const { EGRESSGATE_ADMIN_TOKEN: _unset, ...without } = process.env;
    const [withEnv, asJson, withoutEnv, empty] = await Promise.all([
      check({ ...without, EGRESSGATE_ADMIN_TOKEN: ENV_TOKEN }, false),
      check({ ...without, EGRESSGATE_ADMIN_TOKEN: ENV_TOKEN }, true),
      check(without, false),
      check({ ...without, EGRESSGATE_ADMIN_TOKEN: '' }, false),
    ]);
    expect(withEnv.code, withEnv.stderr).toBe(1);
    expect(withEnv.stderr).toContain(`admin.tokens[1].token: ${MESSAGE}`);
    expect(asJson.code).toBe(1);
    expect(JSON.parse(asJson.stdout)).toMatchObject({ ok: false, errors: [{ path: 'admin.tokens[1].token', message: expect.stringContaining(MESSAGE) }] });
    for (const r of [withEnv, asJson]) expect(r.stdout + r.stderr).not.toContain(ENV_TOKEN);
    // Without the variable (or empty, which serve takes as unset) the entry is a token like another.
    expect(withoutEnv.code, withoutEnv.stderr).toBe(0);
    expect(empty.code, empty.stderr).toBe(0);
  }, 120_000);

  it('POST /v1/policy/validate: invalid at the entry, as PUT, for an admin; not an oracle for a read token', async () => {
    const READ = 'soc-read-token-0123456789abcdef';
    gw = await startTestGateway({ admin: { tokens: [{ name: 'soc', token: READ, scope: 'read' }] } });
    const g = gw;
    const validate = async (token: string, body: string): Promise<{ status: number; text: string }> => {
      const res = await fetch(`${g.adminUrl}/v1/policy/validate`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'text/yaml' }, body });
      return { status: res.status, text: await res.text() };
    };
    const repeating = `flowLog: { path: null }\nadmin: { tokens: [ { name: ops, token: ops-token-0123456789abcdef, scope: admin }, { name: soc, token: ${TEST_ADMIN_TOKEN}, scope: read } ] }\n`;
    const byAdmin = await validate(TEST_ADMIN_TOKEN, repeating);
    expect(byAdmin.status).toBe(200);
    expect(JSON.parse(byAdmin.text)).toMatchObject({ valid: false, errors: [{ path: 'admin.tokens[1].token', message: expect.stringContaining(MESSAGE) }] });
    expect(byAdmin.text).not.toContain(TEST_ADMIN_TOKEN);
    const bySha = await validate(TEST_ADMIN_TOKEN, `flowLog: { path: null }\nidentity: { agents: [ { name: a1, tokenSha256: "${sha256hex(TEST_ADMIN_TOKEN)}", sources: [127.0.0.1/32] } ] }\n`);
    expect(JSON.parse(bySha.text)).toMatchObject({ valid: false, errors: [{ path: 'identity.agents[0].tokenSha256', message: expect.stringContaining(MESSAGE) }] });
    // Its own token: valid.
    expect(JSON.parse((await validate(TEST_ADMIN_TOKEN, 'flowLog: { path: null }\nadmin: { tokens: [ { name: soc, token: soc-read-token-0123456789, scope: read } ] }\n')).text)).toMatchObject({ valid: true });
    // A read token learns nothing of the admin token from it (guesses here meet no failed-login delay).
    expect(JSON.parse((await validate(READ, repeating)).text)).toMatchObject({ valid: true });
  });

  it('startGateway: refused before anything is bound', async () => {
    await expect(startTestGateway({ admin: { tokens: [{ name: 'soc', token: TEST_ADMIN_TOKEN, scope: 'read' }] } })).rejects.toThrow(`admin.tokens[0].token: ${MESSAGE}`);
  });
});
