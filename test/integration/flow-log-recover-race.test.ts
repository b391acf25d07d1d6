/**
 * Regression: recoveries of a failed flow log ran at once and one closed the file the other was
 * writing to. A reopen signal (SIGUSR2, SIGHUP) on a failed log starts a recovery, as the retry timer
 * and the drain's close do, and nothing kept a second from starting while the first wrote what was
 * held. The second opened the path before that write landed, closed the first's descriptor with the
 * write in flight and took over with the file's end as it read it then: the log's idea of where the
 * file ends fell behind by everything that write held (7,623 against 20,480 bytes in a run). At the
 * next full disk the retry took the same file for another (rotated) one, left the cut line's start in
 * it and wrote the line again whole: a torn line, its record lost (3 torn lines, 3 flows without a
 * record in 3 rounds, 5 runs of 5 before the fix). Now one recovery runs at a time; a signal's or the
 * drain's waits for the one under way. Through a real `serve` process and real signals (SIGSTOP holds
 * it while SIGHUP and SIGUSR2 are sent, so both are handled in one turn of its event loop), on a small
 * tmpfs (root only).
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fill as fillUpTo, logCount as count, sleep } from '../helpers/flow-log-cases.ts';
import { flowLogFixture, writeFlowLogServeConfig } from '../helpers/flow-log-fixture.ts';

const fx = flowLogFixture('egw-flowlog-recover-race-', { tmpfs: { size: '2m', what: 'flow-log-recover-race (a 2 MiB tmpfs)' } });
const { top, mnt } = fx;

/** Fill what is left of the tmpfs. */
const fill = (file: string): void => fillUpTo(file, 4 * 1024 * 1024);

/** Wait (bounded) until the process's state in /proc is `state` (T: stopped, else running or asleep). */
async function untilState(pid: number, isStopped: boolean): Promise<void> {
  const stopped = (): boolean => /^\d+ \(.*\) T /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  for (let i = 0; i < 250 && stopped() !== isStopped; i++) await sleep(20);
  expect(stopped()).toBe(isStopped);
}

/**
 * SIGHUP and SIGUSR2 to a stopped `serve`, then SIGCONT: both are handled in one turn of its event
 * loop, so both reopens start at once, as a retry's and a signal's can (only timing decides those).
 */
async function twoReopensAtOnce(c: ChildProcess): Promise<void> {
  const pid = c.pid as number;
  c.kill('SIGSTOP');
  await untilState(pid, true);
  c.kill('SIGHUP');
  c.kill('SIGUSR2');
  c.kill('SIGCONT');
  await untilState(pid, false);
}

/** The descriptors `serve` holds on the flow log (not the audit log beside it). */
function logDescriptors(pid: number, path: string): number {
  return readdirSync(`/proc/${pid}/fd`).filter((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`) === path;
    } catch {
      return false;
    }
  }).length;
}

describe.skipIf(!fx.hasTmpfs)('flow log recoveries started at once (two reopen signals as the disk has room)', () => {
  it('one recovery at a time: one "writable again" per failure, one descriptor, every line whole, every flow one record', async () => {
    const dir = join(mnt, 'logs');
    mkdirSync(dir);
    const path = join(dir, 'flows.jsonl');
    const filler = join(mnt, 'filler');
    const configPath = join(top, 'serve.yaml');
    writeFlowLogServeConfig(configPath, path, { isAdmitting: true, limits: { maxNewFlowsPerSecPerIdentity: 100000 } });
    const s = await fx.serve(configPath);
    const exited = once(s.child, 'exit');
    const made: number[] = [];
    let next = 1000;
    const makeFlows = async (n: number): Promise<void> => {
      const sizes = Array.from({ length: n }, (_, i) => next + i);
      next += n;
      const codes = await fx.curlSizes(s, sizes);
      made.push(...sizes.filter((_, i) => codes[i] === 200));
    };
    await makeFlows(5);
    const rounds = 3;
    for (let round = 1; round <= rounds; round++) {
      // The disk full: flows until a write fails (bounded: 50 × 20 flows, ~650 KB of records).
      fill(filler);
      for (let i = 0; i < 50 && count(s, 'flow log write failed') < 2 * round - 1; i++) {
        await makeFlows(20);
        await sleep(30);
      }
      expect(count(s, 'flow log write failed')).toBe(2 * round - 1);
      // Room again, and two reopens at once (SIGHUP's and SIGUSR2's).
      rmSync(filler);
      await twoReopensAtOnce(s.child);
      for (let i = 0; i < 250 && count(s, 'flow log writable again') < 2 * round - 1; i++) await sleep(20);
      // The disk full again: the log must still know where its file ends, and the retry complete the cut line.
      await sleep(300);
      fill(filler);
      for (let i = 0; i < 50 && count(s, 'flow log write failed') < 2 * round; i++) {
        await makeFlows(20);
        await sleep(30);
      }
      rmSync(filler);
      for (let i = 0; i < 250 && count(s, 'flow log writable again') < 2 * round; i++) await sleep(20);
    }
    const descriptors = logDescriptors(s.child.pid as number, path);
    await makeFlows(3);
    s.child.kill('SIGTERM');
    expect(((await exited) as [number | null])[0]).toBe(0);

    const text = readFileSync(path, 'utf8');
    expect(text.endsWith('\n')).toBe(true);
    const lines = text.slice(0, -1).split('\n');
    const torn = lines.filter((l) => {
      try {
        JSON.parse(l);
        return false;
      } catch {
        return true;
      }
    });
    const got = lines.filter((l) => !torn.includes(l)).map((l) => (JSON.parse(l) as { bytesIn: number }).bytesIn);
    expect(made.length).toBeGreaterThan(rounds * 10);
    expect({
      failed: count(s, 'flow log write failed'),
      recovered: count(s, 'flow log writable again'),
      descriptors,
      torn: torn.length,
      missing: made.filter((n) => !got.includes(n)).length,
      twice: got.length - new Set(got).size,
    }).toEqual({ failed: 2 * rounds, recovered: 2 * rounds, descriptors: 1, torn: 0, missing: 0, twice: 0 });
  }, 120_000);
});
