/**
 * The command line's usage contract (SPEC §2: unknown flags and bad values are errors with a clear
 * message and exit code 2), run as an operator runs it: a child process of cli.ts, its exit code,
 * stdout and stderr. `serve`'s own flag cases are in serve-flags.test.ts.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/serve-process.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'cli.ts', ...args], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '', EGRESSGATE_AGENT_TOKEN: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

const dir = mkdtempSync(join(tmpdir(), 'egw-cli-usage-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const monitor = join(dir, 'monitor.yaml');
writeFileSync(monitor, 'mode: monitor\n');
const enforce = join(dir, 'enforce.yaml');
writeFileSync(enforce, 'mode: enforce\n');

// Regression: parseArgs keeps the last of a repeated flag without a word, so `check -c a.yaml
// --config b.yaml` validated b.yaml only and `evaluate --mode monitor --mode enforce` judged in
// enforce mode: whichever copy a wrapper script appended won, silently.
describe('a value flag given twice', () => {
  it('is a usage error naming the flag on every command (exit 2, nothing run)', async () => {
    const runs = await Promise.all([
      cli(['check', '-c', monitor, '--config', enforce]),
      cli(['evaluate', '--config', monitor, '--dest', 'example.com:443', '--mode', 'monitor', '--mode', 'enforce']),
      cli(['replay', '--config', monitor, '--step-ms', '1000', '--step-ms', '2000', dir]),
      cli(['agent', '--gateway', 'http://127.0.0.1:9', '--token', 't', '--interval-ms', '100', '--interval-ms', '200', '--once']),
      cli(['hash-password', '--password', 'a', '--password', 'b']),
    ]);
    const [check, evaluate, replay, agent, hash] = runs;
    expect(check?.stderr).toMatch(/^egressgate check: --config given twice \(as -c and --config\): '.*monitor\.yaml', then '.*enforce\.yaml'; give it once$/m);
    expect(evaluate?.stderr).toMatch(/^egressgate evaluate: --mode given twice: 'monitor', then 'enforce'; give it once$/m);
    expect(replay?.stderr).toMatch(/^egressgate replay: --step-ms given twice: '1000', then '2000'/m);
    expect(agent?.stderr).toMatch(/^egressgate agent: --interval-ms given twice: '100', then '200'/m);
    expect(hash?.stderr).toMatch(/^egressgate hash-password: --password given twice/m);
    for (const r of runs) {
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
    }
  }, 60_000);

  it('a boolean flag twice and replay INPUTs (positional) still repeat', async () => {
    const scenario = join(ROOT, 'test/scenarios/B01-package-upgrade.yaml');
    const [quiet, check] = await Promise.all([
      cli(['replay', '-q', '--quiet', '--single', '--config', join(ROOT, 'test/scenarios/policy.yaml'), scenario, scenario]),
      cli(['check', '--json', '--json', '--config', enforce]),
    ]);
    expect(quiet.stderr).toBe('');
    expect(quiet.code).toBe(0);
    expect(quiet.stdout).toMatch(/B01/);
    expect(check.code).toBe(0);
    expect(JSON.parse(check.stdout)).toMatchObject({ ok: true, summary: expect.stringMatching(/^ok: mode enforce/) });
  }, 60_000);
});
