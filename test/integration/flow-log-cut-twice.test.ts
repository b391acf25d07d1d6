/**
 * A flow log line cut twice: a write fails part-way through a record's line, and the retry that goes
 * on with the rest of it fails part-way too, still inside that line (the disk full again). The
 * file's size limit (RLIMIT_FSIZE, set on the running `serve` with prlimit) stands in for the full
 * disk: it stops a write at the exact byte (EFBIG, which the log treats as ENOSPC), where a tmpfs
 * stops at a page, past any one line. Then:
 *  - the same file again: the line is completed where it stopped;
 *  - the file rotated away (mv, SIGUSR2): the line's start is taken off the end of the rotated file
 *    and the line written whole in the new one;
 *  - the file removed (rm): what went to it is read back and the line written whole.
 * Regression (rotated): the line's start was taken off only as far as the second cut's bytes (200 of
 * 500 here), because the held bytes began where the first cut left the line, not at its start: the
 * rotated file ended in a fragment of it (300 bytes, no newline) and the new file began with the rest
 * (from byte 300): two torn lines, the record in neither. Through a real `serve` process.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { logCount as count, sleep } from '../helpers/flow-log-cases.ts';
import { flowLogFixture, writeFlowLogServeConfig } from '../helpers/flow-log-fixture.ts';
import { skipNotice } from '../helpers/skip-notice.ts';

function hasPrlimit(): boolean {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return process.platform === 'linux';
  } catch {
    return false;
  }
}
const available = skipNotice(hasPrlimit(), 'flow-log-cut-twice', 'needs prlimit (util-linux) to set a running process file size limit');

const fx = flowLogFixture('egw-flowlog-cut-twice-');

async function untilTrue(what: string, pred: () => boolean): Promise<void> {
  for (let i = 0; i < 250 && !pred(); i++) await sleep(20);
  expect(pred(), what).toBe(true);
}

/** The soft file size limit of process `pid` (the hard one stays unlimited, so it can be raised again). */
function limitFileSize(pid: number, bytes: number | 'unlimited'): void {
  execFileSync('prlimit', ['--pid', String(pid), `--fsize=${bytes}:`]);
}

/** Each line of `text` parsed as a record's bytesIn; a line that is no JSON (torn) as null. */
function lineSizes(text: string): Array<number | null> {
  if (text === '') return [];
  return text
    .replace(/\n$/, '')
    .split('\n')
    .map((l) => {
      try {
        return (JSON.parse(l) as { bytesIn: number }).bytesIn;
      } catch {
        return null;
      }
    });
}

type Then = 'same file' | 'rotated' | 'removed';

describe.skipIf(!available)('a flow log line cut twice (the disk full again while the rest of the line is written)', () => {
  it.each<Then>(['same file', 'rotated', 'removed'])('then %s: every line whole, every flow one record', async (then) => {
    const dir = join(fx.top, then.replace(' ', '-'));
    mkdirSync(dir);
    const path = join(dir, 'flows.jsonl');
    const configPath = join(dir, 'serve.yaml');
    writeFlowLogServeConfig(configPath, path, { isAdmitting: true });
    const s = await fx.serve(configPath);
    const pid = s.child.pid as number;
    const exited = once(s.child, 'exit');
    const made: number[] = [];
    const get = async (sizes: number[]): Promise<void> => {
      expect(await fx.curlSizes(s, sizes)).toEqual(sizes.map(() => 200));
      made.push(...sizes);
    };
    await get([11, 12, 13]);
    await untilTrue('the first records', () => existsSync(path) && lineSizes(readFileSync(path, 'utf8')).length === 3);
    const start = statSync(path).size;

    // A record's line (~650 bytes) cut 300 bytes in; then the retry writes 200 more and is cut again.
    limitFileSize(pid, start + 300);
    await get([5001]);
    await untilTrue('the first cut', () => count(s, 'flow log write failed') === 1 && statSync(path).size === start + 300);
    limitFileSize(pid, start + 500);
    await untilTrue('the second cut', () => statSync(path).size === start + 500);
    await sleep(200);
    expect(count(s, 'flow log writable again')).toBe(0);
    expect(readFileSync(path).subarray(start).includes(0x0a)).toBe(false);

    if (then === 'rotated') {
      renameSync(path, `${path}.1`);
      limitFileSize(pid, 'unlimited');
      s.child.kill('SIGUSR2');
    } else if (then === 'removed') {
      rmSync(path);
      limitFileSize(pid, 'unlimited');
    } else limitFileSize(pid, 'unlimited');
    await untilTrue('recovery', () => count(s, 'flow log writable again') === 1);
    await get([21, 22]);
    s.child.kill('SIGTERM');
    expect(((await exited) as [number | null])[0]).toBe(0);

    const files = then === 'rotated' ? [`${path}.1`, path] : [path];
    const texts = files.map((f) => readFileSync(f, 'utf8'));
    const all = texts.flatMap(lineSizes);
    expect({ ends: texts.map((t) => t === '' || t.endsWith('\n')), torn: all.filter((n) => n === null).length }).toEqual({ ends: files.map(() => true), torn: 0 });
    // Removing the file removed the records in it before the cuts (11-13): the operator's doing.
    const wanted = then === 'removed' ? made.filter((n) => n > 13) : made;
    expect(all.filter((n) => n !== null && wanted.includes(n)).sort((a, b) => (a as number) - (b as number))).toEqual([...wanted].sort((a, b) => a - b));
  }, 30_000);
});
