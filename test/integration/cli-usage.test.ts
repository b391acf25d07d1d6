/**
 * The command line's usage contract (SPEC §2: unknown flags and bad values are errors with a clear
 * message and exit code 2), run as an operator runs it: a child process of cli.ts, its exit code,
 * stdout and stderr. `serve`'s own flag cases are in serve-flags.test.ts.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, ROOT } from '../helpers/serve-process.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '', EGRESSGATE_AGENT_TOKEN: '' } }, (err, stdout, stderr) => {
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

// Regression: `egressgate` alone printed its usage on stdout and exited 2; a script's `egressgate
// $CMD > out` with CMD unset took the usage for the command's output. Usage for an error goes to
// stderr, as every command's own usage errors do; stdout is for --help (exit 0).
describe('usage on stderr for an error, on stdout when asked for', () => {
  it('no command: usage on stderr, stdout empty, exit 2; --help and help: stdout, exit 0', async () => {
    const [none, help, word] = await Promise.all([cli([]), cli(['--help']), cli(['help'])]);
    expect(none.code).toBe(2);
    expect(none.stdout).toBe('');
    expect(none.stderr).toMatch(/^egressgate: a command is required\nusage: egressgate <command> \[options\]/);
    for (const r of [help, word]) {
      expect(r.code).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(/^usage: egressgate <command> \[options\]/);
    }
  }, 60_000);

  it("every command's usage error (unknown flag) is on stderr with exit 2, stdout empty", async () => {
    const runs = await Promise.all(['serve', 'check', 'evaluate', 'replay', 'agent', 'hash-password', 'no-such-command'].map((c) => cli([c, '--bogus'])));
    for (const r of runs) {
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^egressgate( [a-z-]+)?: .*(bogus|unknown command)/);
    }
  }, 60_000);
});

// Regression: replay exited 2 (usage error) on an invalid --config, check and evaluate 1: a script
// telling "fix the policy" from "fix the command line" by the exit code got replay wrong.
describe('an invalid policy file', () => {
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'mode: loud\n');
  const scenario = join(ROOT, 'test/scenarios/B01-package-upgrade.yaml');

  it('is exit 1 on check, evaluate and replay (--config and --against), with the path and error on stderr', async () => {
    const [check, evaluate, replay, against, missing] = await Promise.all([
      cli(['check', '--config', bad]),
      cli(['evaluate', '--config', bad, '--dest', 'example.com:443']),
      cli(['replay', '--config', bad, scenario]),
      cli(['replay', '-q', '--single', '--config', join(ROOT, 'test/scenarios/policy.yaml'), '--against', bad, scenario]),
      cli(['replay', '--config', join(dir, 'no-such.yaml'), scenario]),
    ]);
    for (const r of [check, evaluate, replay, against]) {
      expect(r.stderr).toMatch(/^mode: .*loud|^ {2}mode: .*loud/m);
      expect(r.code).toBe(1);
    }
    expect(replay.stderr).toMatch(/^egressgate replay: .*bad\.yaml is invalid:$/m);
    expect(missing.stderr).toMatch(/^egressgate replay: cannot read .*no-such\.yaml/m);
    expect(missing.code).toBe(1);
  }, 60_000);
});

// Regression: replay told a JSON policy by a case-sensitive `.json`, check, evaluate and serve by
// any case: `replay --config POLICY.JSON` read it as YAML and ran a file the others refuse (a bare
// word where JSON wants a string; a key written twice, named by line instead of path), exit 0.
describe('a policy file named .JSON', () => {
  const loose = join(dir, 'LOOSE.JSON');
  writeFileSync(loose, '{"mode": enforce}\n');
  const scenario = join(ROOT, 'test/scenarios/B01-package-upgrade.yaml');

  it('is read as JSON by replay (--config and --against) as by check and evaluate: invalid, exit 1', async () => {
    const [check, evaluate, replay, against] = await Promise.all([
      cli(['check', '--config', loose]),
      cli(['evaluate', '--config', loose, '--dest', 'example.com:443']),
      cli(['replay', '-q', '--single', '--config', loose, scenario]),
      cli(['replay', '-q', '--single', '--config', join(ROOT, 'test/scenarios/policy.yaml'), '--against', loose, scenario]),
    ]);
    for (const r of [check, evaluate, replay, against]) {
      expect(r.stderr).toMatch(/invalid JSON/);
      expect(r.code).toBe(1);
    }
  }, 60_000);
});

// Regression: a directory INPUT holding no scenario file (empty, or a directory of flow logs) was
// replayed as nothing: no output, `policy change turns 0 of 0 distinct connections` with --against,
// exit 0, which a rollout check reads as "no verdict turns, no alert".
describe('a replay INPUT directory with no scenario file', () => {
  const logs = join(dir, 'logs');
  const empty = join(dir, 'empty');
  mkdirSync(logs);
  mkdirSync(empty);
  writeFileSync(join(logs, 'flows.jsonl'), `${JSON.stringify({ event: 'listening', http: '127.0.0.1:1' })}\n`);

  it('is an input error naming the directory (exit 2, nothing judged), with or without --against', async () => {
    const [fromLogs, fromEmpty, against] = await Promise.all([
      cli(['replay', '--config', monitor, logs]),
      cli(['replay', '--config', monitor, empty]),
      cli(['replay', '--config', monitor, '--against', enforce, logs]),
    ]);
    for (const [r, d] of [[fromLogs, logs], [fromEmpty, empty], [against, logs]] as const) {
      expect(r.stderr).toContain(`egressgate replay: ${d}: no scenario file in this directory`);
      expect(r.stdout).toBe('');
      expect(r.code).toBe(2);
    }
  }, 60_000);
});

// Regression: --step-ms was read with Number(), so `1e3`, `0x64`, ` 100` and `100 ` replayed (exit 0)
// at a step the operator never wrote. Digits only now, as agent's --interval-ms (digits-flag.ts).
describe('replay --step-ms', () => {
  const scenario = join(ROOT, 'test', 'scenarios', 'B01-package-upgrade.yaml');

  it('takes digits only: anything else is a usage error naming the flag (exit 2, nothing judged)', async () => {
    const bad = ['1e3', '0x64', ' 100', '100 ', '+100', ''];
    const runs = await Promise.all(bad.map((v) => cli(['replay', '--config', monitor, '--step-ms', v, scenario])));
    runs.forEach((r, i) => {
      expect(r.stderr).toContain(`egressgate replay: --step-ms must be a positive integer, got '${bad[i]}'`);
      expect(r.stdout).toBe('');
      expect(r.code).toBe(2);
    });
  }, 60_000);

  it('digits are taken', async () => {
    const r = await cli(['replay', '--config', monitor, '--step-ms', '100', scenario]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  }, 60_000);
});
