/**
 * `flowLog.path` naming a directory (or a path whose audit log, PATH.audit.jsonl, is one): serve's
 * start failed with `cannot start: EISDIR: illegal operation on a directory, open '/tmp'`, which
 * names no setting. The message now starts with the config key that gave the path.
 *
 * `state.path` naming a directory: serve started, warned `detection state unreadable; starting
 * fresh` and then `could not persist detection state … rename` at every save. Now a start error
 * naming state.path (restart-only, so a reload naming one applies, and fails, at the next start).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopbackServeConfig, spawnServe } from '../helpers/serve-process.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-flow-log-dir-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** serve on a policy whose flowLog.path is `flowLog` (and `extra` YAML): the start's failure message (serve must not listen). */
async function startFailure(name: string, flowLog: string, extra = ''): Promise<string> {
  const config = join(dir, `${name}.yaml`);
  await writeFile(config, `${loopbackServeConfig(flowLog)}${extra}`);
  return spawnServe(config).then(
    (s) => {
      s.child.kill('SIGKILL');
      return 'listening';
    },
    (err: Error) => err.message,
  );
}

describe('a log path that is a directory fails the start naming flowLog.path', () => {
  it('flowLog.path: a directory', async () => {
    const outcome = await startFailure('flows', dir);
    expect(outcome).toMatch(/serve exited \(1\) before listening/);
    expect(outcome).toContain(`cannot start: flowLog.path: EISDIR`);
  }, 60_000);

  it('flowLog.path whose audit log is a directory', async () => {
    const flows = join(dir, 'flows.jsonl');
    await mkdir(`${flows}.audit.jsonl`);
    const outcome = await startFailure('audit', flows);
    expect(outcome).toMatch(/serve exited \(1\) before listening/);
    expect(outcome).toContain('cannot start: flowLog.path (its audit log, PATH.audit.jsonl): EISDIR');
  }, 60_000);
});

describe('a state.path that is a directory fails the start naming state.path', () => {
  it('state.path: a directory', async () => {
    const state = join(dir, 'state-dir');
    await mkdir(state);
    const outcome = await startFailure('state-dir', join(dir, 'state-dir-flows.jsonl'), `state: { path: ${JSON.stringify(state)} }\n`);
    expect(outcome).toMatch(/serve exited \(1\) before listening/);
    expect(outcome).toContain('cannot start: state.path: EISDIR');
  }, 60_000);

  it('state.path under a file (not a directory)', async () => {
    const file = join(dir, 'a-file');
    await writeFile(file, 'x');
    const outcome = await startFailure('state-under-file', join(dir, 'state-under-file-flows.jsonl'), `state: { path: ${JSON.stringify(join(file, 'state.json'))} }\n`);
    expect(outcome).toMatch(/serve exited \(1\) before listening/);
    expect(outcome).toContain('cannot start: state.path: ENOTDIR');
  }, 60_000);
});
