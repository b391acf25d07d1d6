import { describe, expect, it } from 'vitest';
import { MAX_SCRYPT_QUEUED, scryptLimiter, WorkLimiter, WorkShedError } from '../../../gateway/identity/work-limiter.ts';

describe('WorkLimiter', () => {
  it('runs at most maxConcurrent jobs, in FIFO order, and releases on failure', async () => {
    const lim = new WorkLimiter(2);
    const gates: Array<() => void> = [];
    let running = 0;
    let peak = 0;
    const started: number[] = [];
    const job = (i: number) =>
      lim.run(async () => {
        started.push(i);
        running++;
        peak = Math.max(peak, running);
        await new Promise<void>((resolve) => gates.push(resolve));
        running--;
        if (i === 1) throw new Error('job 1 fails');
        return i;
      });
    const all = [0, 1, 2, 3, 4].map((i) => job(i).catch((e: Error) => e.message));
    // Let the first two start.
    await new Promise((r) => setImmediate(r));
    expect(started).toEqual([0, 1]);
    expect(lim.waiting).toBe(3);
    // Open gates one by one, bounded: 5 jobs → at most 5 rounds.
    for (let round = 0; round < 5 && gates.length > 0; round++) {
      gates.shift()!();
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
    }
    while (gates.length > 0) gates.shift()!();
    expect(await Promise.all(all)).toEqual([0, 'job 1 fails', 2, 3, 4]);
    expect(started).toEqual([0, 1, 2, 3, 4]);
    expect(peak).toBe(2);
    expect(lim.waiting).toBe(0);
    // Slots are all free again.
    expect(await lim.run(async () => 'ok')).toBe('ok');
  });

  it('queues at most maxQueued jobs and refuses the next with WorkShedError (regression: the scrypt queue was unbounded)', async () => {
    const lim = new WorkLimiter(1, 2);
    let open: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const running = lim.run(() => gate);
    const queued = [lim.run(async () => 'a'), lim.run(async () => 'b')];
    expect(lim.waiting).toBe(2);
    expect(lim.hasRoom()).toBe(false);
    await expect(lim.run(async () => 'c')).rejects.toBeInstanceOf(WorkShedError);
    expect(lim.shedTotal).toBe(1);
    expect(lim.waiting).toBe(2);
    open();
    await running;
    expect(await Promise.all(queued)).toEqual(['a', 'b']);
    expect(lim.hasRoom()).toBe(true);
    expect(scryptLimiter.maxQueued).toBe(MAX_SCRYPT_QUEUED);
  });
});
