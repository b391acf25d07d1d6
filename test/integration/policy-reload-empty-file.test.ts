/**
 * A SIGHUP that finds the config file empty (truncated and not written yet, only comments and
 * document markers, a null scalar) is a failed reload: the running policy stays, one warning says
 * why, `gw_config_reload_total{result="failure"}` counts it. `{}` still means the built-in defaults.
 * Real `egressgate serve`, real signals, a real CONNECT and the admin API.
 *
 * Regression: such a file was the built-in defaults, swapped in as any valid policy: an enforcing
 * gateway went to monitor mode with no role, and every admin request was answered 401 (the defaults
 * name no admin token), from one SIGHUP that caught a config file half-written.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killIfRunning, loggedLines, type Served, spawnServe } from '../helpers/serve-process.ts';
import { jsonBody, rawExchange } from './http-harness.ts';

const TOKEN = 'empty-reload-admin-token-0123456789';
const ENV_TOKEN = 'empty-reload-env-token-0123456789';
const POLICY = `mode: enforce
admin: { tokens: [ { name: ops, token: "${TOKEN}", scope: admin } ] }
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { host: only.example.com, ports: [443] } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: null }
`;
const FAILED = 'policy reload failed; the running policy is unchanged';

let dir: string;
let configPath: string;
let served: Served;
let child: ChildProcess | null = null;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-empty-reload-'));
  configPath = join(dir, 'policy.yaml');
  await writeFile(configPath, POLICY);
  served = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: ENV_TOKEN } });
  child = served.child;
}, 30_000);

afterAll(async () => {
  await killIfRunning(child);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function admin(path: string, token = TOKEN): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://${served.admin}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, text: await res.text() };
}

/** SIGHUP, then the first log line with `msg` after what was logged before it. */
async function sighup(msg: string): Promise<Record<string, unknown>> {
  const from = served.stderr().length;
  served.child.kill('SIGHUP');
  const deadline = Date.now() + 5000;
  for (;;) {
    const line = loggedLines(served, msg, from)[0];
    if (line) return line;
    if (Date.now() > deadline) throw new Error(`no "${msg}" after SIGHUP: ${served.stderr().slice(from)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('a SIGHUP that finds the config file empty', () => {
  it.each([
    ['empty (truncated)', ''],
    ['only a comment and a document marker', '# being written\n---\n'],
    ['a null scalar', '~\n'],
  ])('%s: refused, the running policy and its admin token stay, enforce still refuses', async (_name, text) => {
    await writeFile(configPath, text);
    const failed = await sighup(FAILED);
    expect(failed['errors']).toEqual([{ path: '(root)', message: expect.stringContaining('the config file is empty') }]);
    const policy = await admin('/v1/policy');
    expect(policy.status).toBe(200);
    expect(JSON.parse(policy.text)).toMatchObject({ version: 1, mode: 'enforce' });
    const { response } = await rawExchange(served.http.port, 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n', 5000);
    expect(response.slice(0, 12)).toBe('HTTP/1.1 403');
    expect(jsonBody(response)).toMatchObject({ reason: 'not-allowlisted' });
  });

  it('counts the failures; `{}` is still taken as the built-in defaults', async () => {
    const metrics = await admin('/metrics');
    expect(metrics.text).toMatch(/gw_config_reload_total\{result="failure"\} 3\b/);
    await writeFile(configPath, '{}\n');
    await sighup('policy reloaded');
    // The defaults name no admin token: the one from the environment still answers.
    const policy = await admin('/v1/policy', ENV_TOKEN);
    expect(JSON.parse(policy.text)).toMatchObject({ version: 2, mode: 'monitor' });
  });
});
