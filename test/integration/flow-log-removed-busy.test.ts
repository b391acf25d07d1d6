/**
 * Regression: the check for a removed flow log file (once a second) was skipped whenever a write was
 * in flight, so a log written without pause (a slow disk, or a busy libuv thread pool: every write
 * waits for a thread) was never checked: a file removed under a steady stream of flows went unseen
 * for as long as the stream lasted, every record meanwhile going to the removed file (read back only
 * once the stream paused; all of them lost if the process died first). Now the check runs while a
 * write is in flight too. Through the real listeners: the thread pool kept busy the way scrypt logins
 * and DNS lookups keep it busy, curl making flows all along.
 */
import { pbkdf2 } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { recordsAt, sizesOnce } from '../helpers/flow-log-cases.ts';
import { flowLogFixture } from '../helpers/flow-log-fixture.ts';
import { until } from '../helpers/gateway.ts';

const fx = flowLogFixture('egw-flowlog-busy-');
const getSizes = fx.curlSizes;

/**
 * Keep every thread of libuv's pool busy (as logins' scrypt and DNS lookups do on a loaded gateway):
 * each flow-log write waits for a thread, so one is nearly always in flight. Bounded: `stop()`, or
 * 400 jobs per thread at most (~60 s).
 */
function busyThreadPool(): { stop: () => Promise<void> } {
  const threads = Number(process.env['UV_THREADPOOL_SIZE']) || 4;
  let isStopped = false;
  const loops: Array<Promise<void>> = [];
  for (let t = 0; t < threads; t++) {
    loops.push(
      (async () => {
        for (let i = 0; i < 400 && !isStopped; i++) await new Promise<void>((resolve) => pbkdf2('x', 'salt', 60_000, 32, 'sha256', () => resolve()));
      })(),
    );
  }
  return {
    stop: async () => {
      isStopped = true;
      await Promise.all(loops);
    },
  };
}

describe('flow log file removed while the log is written without pause', () => {
  it('the removal is seen within seconds, not once the stream stops; every flow after it has its record, once', async () => {
    const dir = join(fx.top, 'logs');
    const path = join(dir, 'flows.jsonl');
    // The stream makes flows as fast as curl can: past the default 200 new flows a second of one
    // identity on a fast machine, so the limit is raised (a 429 is not what this test is about).
    const g = await fx.gateway({ flowLog: { path }, limits: { maxNewFlowsPerSecPerIdentity: 100_000 } });
    expect(await getSizes(g, [11, 12, 13])).toEqual([200, 200, 200]);
    await until('the first records', () => recordsAt(path).length === 3);

    const pool = busyThreadPool();
    // A steady stream of flows: 10 per curl, one curl after another, until the check has been made
    // (or 12 s, ~100 curls at most).
    let isStreaming = true;
    const made: number[] = [];
    const stream = (async () => {
      for (let n = 1000; n < 2000 && isStreaming; n += 10) {
        const sizes = Array.from({ length: 10 }, (_, i) => n + i);
        expect(await getSizes(g, sizes)).toEqual(sizes.map(() => 200));
        made.push(...sizes);
      }
    })();
    let madeBefore = 0;
    try {
      await until('the stream under way', () => made.length >= 30, 10_000);
      const removedAt = Date.now();
      madeBefore = made.length;
      rmSync(dir, { recursive: true });
      const seen = (): boolean => g.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('flow log file was removed'));
      const deadline = removedAt + 12_000;
      while (!seen() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const seenAfterMs = Date.now() - removedAt;
      expect(seen()).toBe(true);
      // Wide margin: the check is once a second, its fstat waits for a busy thread (~0.1 s).
      expect(seenAfterMs).toBeLessThan(6000);
    } finally {
      isStreaming = false;
      await stream;
      await pool.stop();
    }
    expect(await getSizes(g, [31])).toEqual([200]);
    await g.stop();

    // Each flow once; every one made after the removal there (from the curl after the one under way
    // then: those before it may have gone with the file).
    const sizes = sizesOnce(path);
    const after = [...made.slice(madeBefore + 10), 31];
    expect(after.filter((n) => !sizes.includes(n))).toEqual([]);
  }, 40_000);
});
