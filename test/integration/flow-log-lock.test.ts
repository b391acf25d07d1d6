/**
 * Two `serve` processes with one `flowLog.path`: each counted only its own bytes of the shared file,
 * so once it was removed each read back "its" lines by that count, the other's among them (1,780
 * lines, 4 torn, 452 duplicates). A log file belongs to one gateway: `<path>.lock` holds the pid of
 * the one writing it, and a second one refuses to start (exit 1, naming the holder). The lock goes at
 * the exit; one a killed gateway left is stale and taken.
 */
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';

let dir: string;
const running: Served[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-flow-log-lock-'));
});
afterEach(async () => {
  for (const s of running.splice(0)) await killIfRunning(s.child);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function configFor(name: string): Promise<{ config: string; flows: string }> {
  const flows = join(dir, `${name}.jsonl`);
  const config = join(dir, `${name}.yaml`);
  await writeFile(
    config,
    `mode: monitor
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(flows)} }
limits: { drainGraceMs: 1000 }
`,
  );
  return { config, flows };
}

async function serve(config: string): Promise<Served> {
  const s = await spawnServe(config);
  running.push(s);
  return s;
}

async function lockPid(flows: string): Promise<number> {
  return (JSON.parse(await readFile(`${flows}.lock`, 'utf8')) as { pid: number }).pid;
}

describe('egressgate serve: a flow log file belongs to one gateway', () => {
  it('a second gateway on the same flowLog.path exits 1 naming the first; the lock goes with the first one’s exit', async () => {
    const { config, flows } = await configFor('shared');
    const first = await serve(config);
    expect(await lockPid(flows)).toBe(first.child.pid);

    const second = await spawnServe(config).then(
      (s) => {
        running.push(s);
        return 'listening';
      },
      (err: Error) => err.message,
    );
    expect(second).toMatch(/serve exited \(1\) before listening/);
    expect(second).toContain(`${flows} is written by another gateway (pid ${first.child.pid}`);

    const exited = once(first.child, 'exit');
    first.child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
    expect(existsSync(`${flows}.lock`)).toBe(false);
    const next = await serve(config);
    expect(await lockPid(flows)).toBe(next.child.pid);
  }, 90_000);

  it('a lock left by a killed gateway is stale: the next one starts and takes it', async () => {
    const { config, flows } = await configFor('killed');
    const first = await serve(config);
    await killIfRunning(first.child);
    expect(await lockPid(flows)).toBe(first.child.pid);
    const next = await serve(config);
    expect(await lockPid(flows)).toBe(next.child.pid);
  }, 90_000);
});
