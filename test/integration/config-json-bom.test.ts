/**
 * A JSON policy file that starts with a UTF-8 byte order mark (as some Windows editors save it):
 * js-yaml skipped the mark, so a YAML policy with one was read, but JSON.parse refused the JSON
 * one (`(root): invalid JSON: Unexpected token '﻿'`) in `check`, `evaluate`, `replay` and
 * `serve` (start and SIGHUP). Every reader now drops a leading mark for both formats.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { CLI, killIfRunning, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';

const BOM = '\uFEFF';

function policy(mode: 'monitor' | 'enforce'): string {
  return `${BOM}${JSON.stringify({
    mode,
    allowRanges: ['127.0.0.0/8'],
    roles: { any: { allow: [{ cidr: '127.0.0.0/8' }] } },
    defaultRoles: ['any'],
    identity: { localAttribution: false },
  })}`;
}

let dir: string;
let served: Served | null = null;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-json-bom-'));
});
afterEach(async () => {
  await killIfRunning(served?.child ?? null);
  served = null;
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

describe('a JSON policy with a leading byte order mark is read as YAML is', () => {
  it('check and evaluate read it', async () => {
    const file = join(dir, 'policy.json');
    await writeFile(file, policy('enforce'));
    const [checked, evaluated] = await Promise.all([cli('check', '--config', file), cli('evaluate', '--config', file, '--dest', '127.0.0.1:9')]);
    expect(checked.stderr).toBe('');
    expect(checked).toMatchObject({ code: 0 });
    expect(checked.stdout).toMatch(/^ok: mode enforce, 1 role,/);
    expect(evaluated.stderr).toBe('');
    expect(JSON.parse(evaluated.stdout)).toMatchObject({ verdict: 'allow', mode: 'enforce', matchedRule: { role: 'any', index: 0 } });
  }, 60_000);

  it('serve starts on it and a SIGHUP reloads one', async () => {
    const file = join(dir, 'serve.json');
    await writeFile(file, policy('enforce'));
    const s = await spawnServe(file);
    served = s;
    await writeFile(file, policy('monitor'));
    s.child.kill('SIGHUP');
    await until('the reload answered', () => /policy reload/.test(s.stderr()), 30_000);
    const line = s.stderr().split('\n').find((l) => l.includes('policy reload'));
    expect(line).toContain('"policy reloaded"');
  }, 60_000);
});
