/**
 * A config path that starts with `~` (`flowLog.path: ~/egw-flows.jsonl`): nothing expands it (no
 * shell reads the config, and node takes paths as they are), so `serve` made `./~/egw-flows.jsonl`
 * under its working directory without a word, and the audit log beside it. Every path key
 * (flowLog.path, state.path, tls.cert/key/ca) now refuses a leading `~` with its path, in `check`,
 * at `serve`'s start and on a reload.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { CLI, killIfRunning, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';

/** Where a `~/…` path lands when taken literally by `serve` (its working directory is ROOT). */
const LITERAL_TILDE = join(ROOT, '~');
const hadLiteralTilde = existsSync(LITERAL_TILDE);

let dir: string;
let served: Served | null = null;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-config-path-tilde-'));
});
afterEach(async () => {
  await killIfRunning(served?.child ?? null);
  served = null;
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  // Only what a failing run of this file made (the directory did not exist before it).
  if (!hadLiteralTilde) await rm(LITERAL_TILDE, { recursive: true, force: true });
});

function policy(flowLogPath: string, extra = ''): string {
  return `mode: monitor
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(flowLogPath)} }
${extra}`;
}

function check(configPath: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check', '--config', configPath], { cwd: ROOT, timeout: 50_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stderr });
    });
  });
}

describe('config paths: a leading ~ is refused at its path, not taken as a directory named ~', () => {
  it('check names every path key that starts with ~', async () => {
    const config = join(dir, 'all.yaml');
    await writeFile(config, policy('~/egw-flows.jsonl', 'state: { path: "~/egw-state.json" }\ntls: { cert: "~/cert.pem", key: "~user/key.pem", ca: "~" }\n'));
    const r = await check(config);
    expect(r.code).toBe(1);
    for (const key of ['flowLog.path', 'state.path', 'tls.cert', 'tls.key', 'tls.ca']) expect(r.stderr).toMatch(new RegExp(`^${key.replace('.', '\\.')}: a leading ~ is not expanded`, 'm'));
  }, 60_000);

  it('serve exits 1 naming flowLog.path, and makes no ./~ under its working directory', async () => {
    const config = join(dir, 'serve.yaml');
    await writeFile(config, policy('~/egw-flows.jsonl'));
    const outcome = await spawnServe(config).then(
      (s) => {
        served = s;
        return 'listening';
      },
      (err: Error) => err.message,
    );
    expect(outcome).toMatch(/serve exited \(1\) before listening/);
    expect(outcome).toContain('flowLog.path: a leading ~ is not expanded');
    if (!hadLiteralTilde) expect(existsSync(LITERAL_TILDE)).toBe(false);
  }, 60_000);

  it('a reload to a ~ path fails at its path; the running policy stays', async () => {
    const config = join(dir, 'reload.yaml');
    await writeFile(config, policy(join(dir, 'flows.jsonl')));
    const s = await spawnServe(config);
    served = s;
    await writeFile(config, policy(join(dir, 'flows.jsonl'), 'state: { path: "~/egw-state.json" }\n'));
    s.child.kill('SIGHUP');
    await until('the reload answered', () => /policy reload/.test(s.stderr()), 30_000);
    const line = s.stderr().split('\n').find((l) => l.includes('policy reload'));
    expect(line).toContain('policy reload failed');
    expect(JSON.parse(line as string)).toMatchObject({ errors: [{ path: 'state.path', message: expect.stringContaining('a leading ~ is not expanded') }] });
  }, 60_000);
});
