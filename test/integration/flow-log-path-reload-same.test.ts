/**
 * Regression: a reload whose flowLog.path names the file the gateway is already writing warned that
 * the path change applies at the next restart: the same path written another way (`logs/./flows.jsonl`,
 * a relative path to it), or set back to the running path after a reload had moved it. The settings
 * read at start only are now compared as the files they name, and with what is running: the warning
 * comes only for a change a restart would make.
 */
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { flowLogFixture, flowLogServeConfig } from '../helpers/flow-log-fixture.ts';
import { ROOT } from '../helpers/serve-process.ts';

const { top: dir, ...fx } = flowLogFixture('egw-path-reload-', { hasOrigin: false });

const policy = (flowLog: string, interimSec: number): string => flowLogServeConfig(flowLog, { interimSec });

const count = (text: string, what: string): number => text.split(what).length - 1;

describe('egressgate serve: a reload whose flowLog.path is the running one', () => {
  it('warns only when the path names another file than the one open', async () => {
    const flowLog = join(dir, 'flows.jsonl');
    const configPath = join(dir, 'policy.yaml');
    await writeFile(configPath, policy(flowLog, 0));
    const s = await fx.serve(configPath);
    const warnings = (): number => count(s.stderr(), 'apply at the next restart');
    /** Write the config, SIGHUP, wait for the reload's line (bounded: 250 × 20 ms); the warnings so far. */
    let reloads = 0;
    const reload = async (path: string, interimSec: number): Promise<number> => {
      await writeFile(configPath, policy(path, interimSec));
      s.child.kill('SIGHUP');
      reloads++;
      for (let i = 0; i < 250 && count(s.stderr(), '"policy reloaded"') < reloads; i++) await new Promise((r) => setTimeout(r, 20));
      expect(count(s.stderr(), '"policy reloaded"')).toBe(reloads);
      // The warning is logged before the reload's own line, from the policy's change event.
      return warnings();
    };

    // The same file, written two other ways (relative to serve's working directory).
    expect(await reload(`${dir}/./sub/../flows.jsonl`, 1)).toBe(0);
    expect(await reload(relative(ROOT, flowLog), 2)).toBe(0);
    // Another file: warned; then back to the running one: nothing to wait for.
    expect(await reload(join(dir, 'moved.jsonl'), 3)).toBe(1);
    expect(await reload(flowLog, 4)).toBe(1);

    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    expect(((await exited) as [number | null])[0]).toBe(0);
    await expect(readFile(flowLog, 'utf8')).resolves.toBe('');
    await expect(readFile(join(dir, 'moved.jsonl'), 'utf8')).rejects.toThrow(/ENOENT/);
  }, 60_000);
});
