/**
 * The flow log when its writes fail: records are held, in order, and written once the log can take
 * them again; nothing is written twice and a line cut by a full disk is completed, not repeated.
 * Real files: /dev/full (every write fails with ENOSPC) and, where the machine lets us mount one
 * (root), a small tmpfs that really fills up.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, readSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../../gateway/flow/flow.ts';
import type { AppendLogEvent } from '../../../gateway/append-log.ts';
import { FlowLog } from '../../../gateway/flow/flow-log.ts';
import { sampleRecord } from '../../helpers/flow-records.ts';
import { skipNotice } from '../../helpers/skip-notice.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-flowlog-fail-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// 832 bytes a line, a little more than a real record (the backlog test counts what fits in 5,000)
const record = (i: number): FlowRecord => sampleRecord(i, ['x'.repeat(283)]);

/** Complete lines of a file, parsed; a last line without its newline is returned apart. */
function read(path: string): { ids: string[]; cut: string } {
  const text = readFileSync(path, 'utf8');
  const parts = text.split('\n');
  const cut = parts.pop() ?? '';
  return { ids: parts.map((l) => (JSON.parse(l) as FlowRecord).id), cut };
}

const ids = (from: number, to: number): string[] => Array.from({ length: to - from }, (_, i) => `f${from + i}`);

function until(pred: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (pred()) resolve();
      else if (Date.now() > deadline) reject(new Error('timed out'));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

describe('FlowLog: a log that cannot be written', () => {
  it('holds the records of a failed log and writes them, in order and once, to the file that replaces it', async () => {
    const path = join(dir, 'replaced.jsonl');
    symlinkSync('/dev/full', path);
    const events: AppendLogEvent[] = [];
    const log = await FlowLog.open(path, { retryMs: 50, onStateChange: (e) => events.push(e) });
    for (let i = 0; i < 10; i++) log.write(record(i));
    await log.flush();
    expect(log.isFailing).toBe(true);
    expect(log.status()).toMatchObject({ failing: true, error: 'ENOSPC', backlogRecords: 10, droppedRecords: 0 });
    expect(events).toEqual([expect.objectContaining({ event: 'failed', error: 'ENOSPC', willRetry: true })]);
    // Still failing on the retries: later records queue behind the held ones; one 'failed' only.
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 10; i < 15; i++) log.write(record(i));
    await log.flush();
    expect(log.status().backlogRecords).toBe(15);
    expect(events.filter((e) => e.event === 'failed')).toHaveLength(1);
    // A regular file takes the path's place (as after a log rotation or cleanup).
    writeFileSync(`${path}.new`, '');
    renameSync(`${path}.new`, path);
    await until(() => !log.isFailing);
    expect(events.at(-1)).toMatchObject({ event: 'recovered', records: 15 });
    for (let i = 15; i < 20; i++) log.write(record(i));
    await log.close();
    expect(read(path)).toEqual({ ids: ids(0, 20), cut: '' });
  });

  it('drops what does not fit in the backlog, counts it, and reports what is still held at close as lost', async () => {
    const path = join(dir, 'full.jsonl');
    symlinkSync('/dev/full', path);
    const events: AppendLogEvent[] = [];
    const log = await FlowLog.open(path, { retryMs: 60_000, backlogBytes: 5000, onStateChange: (e) => events.push(e) });
    log.write(record(0));
    await log.flush();
    expect(log.isFailing).toBe(true);
    // 832 bytes each, one batch per turn: 6 fit in 5,000 bytes (the first one included), the rest do not.
    for (let i = 1; i < 20; i++) {
      log.write(record(i));
      await log.flush();
    }
    const status = log.status();
    expect(status.backlogRecords + status.droppedRecords).toBe(20);
    expect(status).toMatchObject({ backlogRecords: 6, droppedRecords: 14 });
    expect(events.filter((e) => e.event === 'dropping')).toHaveLength(1);
    await log.close();
    expect(events.at(-1)).toEqual({ event: 'lost', path, records: 20 });
    expect(log.status().droppedRecords).toBe(20);
  });
});

describe('FlowLog: a write that hangs', () => {
  it('counts as a failure once it has taken stallMs, flush does not wait for it, and it recovers when the write completes', async () => {
    // A FIFO whose reader stops reading: a write larger than the pipe's 64 KiB blocks in the thread pool.
    const path = join(dir, 'stuck.fifo');
    execFileSync('mkfifo', [path]);
    const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const events: AppendLogEvent[] = [];
    const log = await FlowLog.open(path, { stallMs: 200, retryMs: 50, onStateChange: (e) => events.push(e) });
    for (let i = 0; i < 120; i++) log.write(record(i)); // ~100 KB
    const t0 = Date.now();
    await log.flush();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(log.status()).toMatchObject({ failing: true, error: 'ESTALLED' });
    expect(events).toEqual([expect.objectContaining({ event: 'failed', error: 'ESTALLED' })]);
    // Records written meanwhile wait behind the stuck write.
    for (let i = 120; i < 130; i++) log.write(record(i));
    await log.flush();
    // The reader drains the pipe: the write completes, the log is healthy and writes the rest.
    const chunks: Buffer[] = [];
    const buf = Buffer.alloc(65536);
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      let n = 0;
      try {
        n = readSync(reader, buf, 0, buf.length, null);
      } catch {
        n = 0; // EAGAIN: nothing in the pipe right now
      }
      if (n > 0) chunks.push(Buffer.from(buf.subarray(0, n)));
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.split('\n').length > 130) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    await log.close();
    closeSync(reader);
    const got = Buffer.concat(chunks).toString('utf8').split('\n').filter((l) => l !== '').map((l) => (JSON.parse(l) as FlowRecord).id);
    expect(got).toEqual(ids(0, 130));
    expect(log.isFailing).toBe(false);
    expect(events.map((e) => e.event)).toEqual(['failed', 'recovered']);
  });
});

describe('FlowLog: a recovery whose write hangs', () => {
  it('ends that recovery: the log stays failed, flush does not wait, and it is healthy once the write completes', async () => {
    const path = join(dir, 'recover-stuck.jsonl');
    symlinkSync('/dev/full', path);
    const fifo = join(dir, 'recover-stuck.fifo');
    execFileSync('mkfifo', [fifo]);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const events: AppendLogEvent[] = [];
    const log = await FlowLog.open(path, { stallMs: 200, retryMs: 50, onStateChange: (e) => events.push(e) });
    for (let i = 0; i < 120; i++) log.write(record(i)); // ~100 KB: more than the pipe takes
    await log.flush();
    expect(log.status()).toMatchObject({ failing: true, error: 'ENOSPC' });
    // The path now leads to the FIFO nobody reads: the recovery's write blocks.
    rmSync(path);
    symlinkSync(fifo, path);
    await new Promise((r) => setTimeout(r, 600));
    // flush resolves while the recovery's write is still stuck (nothing has read the FIFO yet): a
    // flush that waited for that write would still be waiting 5 s later.
    const flushed = await Promise.race([log.flush().then(() => 'flushed'), new Promise((r) => setTimeout(() => r('still waiting'), 5000))]);
    expect(flushed).toBe('flushed');
    expect(log.status()).toMatchObject({ failing: true, error: 'ENOSPC' });
    expect(events.map((e) => e.event)).toEqual(['failed']);
    // The reader drains the pipe: the write completes and the log is healthy.
    const chunks: Buffer[] = [];
    const buf = Buffer.alloc(65536);
    const deadline = Date.now() + 5000;
    while (log.isFailing && Date.now() < deadline) {
      try {
        const n = readSync(reader, buf, 0, buf.length, null);
        if (n > 0) chunks.push(Buffer.from(buf.subarray(0, n)));
      } catch {
        // EAGAIN: nothing in the pipe right now
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(events.map((e) => e.event)).toEqual(['failed', 'recovered']);
    await log.close();
    closeSync(reader);
  });
});

/** A 64 KiB tmpfs at a fresh directory, or null where mounting is not allowed. */
function mountSmallTmpfs(): string | null {
  const at = mkdtempSync(join(dir, 'tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', at], { stdio: 'ignore' });
    return at;
  } catch {
    return null;
  }
}

const isRoot = process.getuid?.() === 0;
const canMount = skipNotice(isRoot, 'flow log on a full disk (tmpfs)', 'mounting a tmpfs needs root');

describe.runIf(canMount)('FlowLog: a disk that fills up (tmpfs, root)', () => {
  const mounts: string[] = [];
  afterAll(() => {
    for (const m of mounts) execFileSync('umount', [m]);
  });

  /** 150 records (~125 KB) into a 64 KiB tmpfs: the disk fills part-way through a line. */
  async function fill(events: AppendLogEvent[]): Promise<{ log: FlowLog; mount: string; path: string }> {
    const mount = mountSmallTmpfs();
    if (mount === null) throw new Error('mount -t tmpfs failed although running as root');
    mounts.push(mount);
    const path = join(mount, 'flows.jsonl');
    const log = await FlowLog.open(path, { retryMs: 50, onStateChange: (e) => events.push(e) });
    for (let i = 0; i < 150; i++) log.write(record(i));
    await log.flush();
    expect(log.status()).toMatchObject({ failing: true, error: 'ENOSPC' });
    expect(read(path).cut).not.toBe('');
    return { log, mount, path };
  }

  it('space freed on the same file: the cut line is completed where it stopped, nothing written twice', async () => {
    const events: AppendLogEvent[] = [];
    const { log, mount, path } = await fill(events);
    execFileSync('mount', ['-o', 'remount,size=1m', mount]);
    await until(() => !log.isFailing);
    await log.close();
    expect(read(path)).toEqual({ ids: ids(0, 150), cut: '' });
    expect(events.map((e) => e.event)).toEqual(['failed', 'recovered']);
  });

  it('the full file moved away and space freed: the new file starts with the cut line whole', async () => {
    const events: AppendLogEvent[] = [];
    const { log, mount, path } = await fill(events);
    const before = read(path);
    renameSync(path, `${path}.1`);
    execFileSync('mount', ['-o', 'remount,size=1m', mount]);
    await until(() => !log.isFailing);
    await log.close();
    const after = read(path);
    expect(after.cut).toBe('');
    // The old file keeps its complete lines and the start of the cut one; the new one has the rest, whole.
    expect([...before.ids, ...after.ids]).toEqual(ids(0, 150));
    expect(JSON.stringify(record(before.ids.length)).startsWith(before.cut)).toBe(true);
  });
});
