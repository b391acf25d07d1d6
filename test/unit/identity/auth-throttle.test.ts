import { describe, expect, it } from 'vitest';
import { AuthThrottle } from '../../../gateway/identity/auth-throttle.ts';

function setup(opts: ConstructorParameters<typeof AuthThrottle>[0] = {}) {
  let now = 1_000_000;
  const waits: number[] = [];
  // Sleeps that never settle by themselves let a test hold checks "waiting" deterministically.
  const pending: Array<() => void> = [];
  let holdSleeps = false;
  const t = new AuthThrottle(opts, () => now, (ms) => {
    waits.push(ms);
    if (!holdSleeps) return Promise.resolve();
    return new Promise<void>((resolve) => pending.push(resolve));
  });
  return {
    t,
    waits,
    advance: (ms: number) => {
      now += ms;
    },
    hold: (on: boolean) => {
      holdSleeps = on;
    },
    wake: () => {
      for (const r of pending.splice(0)) r();
    },
  };
}

describe('AuthThrottle', () => {
  it('no delay up to freeFailures, then doubling, capped', () => {
    const { t } = setup({ freeFailures: 3, baseDelayMs: 100, maxDelayMs: 1000 });
    const seen: number[] = [];
    for (let i = 0; i < 10; i++) {
      seen.push(t.delayFor('10.0.0.1'));
      t.recordFailure('10.0.0.1');
    }
    expect(seen).toEqual([0, 0, 0, 100, 200, 400, 800, 1000, 1000, 1000]);
    expect(t.delayFor('10.0.0.2')).toBe(0);
  });

  it('the window slides: old failures stop counting', () => {
    const { t, advance } = setup({ freeFailures: 2, baseDelayMs: 100, windowMs: 10_000 });
    t.recordFailure('a');
    advance(6_000);
    t.recordFailure('a');
    t.recordFailure('a');
    expect(t.failureCount('a')).toBe(3);
    expect(t.delayFor('a')).toBe(200);
    advance(4_000); // the first failure is now exactly windowMs old
    expect(t.failureCount('a')).toBe(2);
    advance(6_001);
    expect(t.failureCount('a')).toBe(0);
    expect(t.delayFor('a')).toBe(0);
  });

  it('remembers at most maxFailuresPerSource per source', () => {
    const { t } = setup({ maxFailuresPerSource: 8 });
    for (let i = 0; i < 100; i++) t.recordFailure('a');
    expect(t.failureCount('a')).toBe(8);
    expect(t.stats.failuresTotal).toBe(100);
  });

  it('acquire waits the delay through the injected sleep and counts it', async () => {
    const { t, waits } = setup({ freeFailures: 1, baseDelayMs: 50 });
    const r0 = await t.acquire('a');
    expect(r0).not.toBeNull();
    r0!();
    expect(waits).toEqual([]);
    t.recordFailure('a');
    t.recordFailure('a');
    const r1 = await t.acquire('a');
    r1!();
    expect(waits).toEqual([100]);
    expect(t.stats).toMatchObject({ delayedTotal: 1, delayMsTotal: 100, shedTotal: 0 });
  });

  it('sheds checks beyond maxPendingPerSource while they wait, and recovers after release', async () => {
    const { t, hold, wake } = setup({ freeFailures: 0, baseDelayMs: 10, maxPendingPerSource: 2 });
    t.recordFailure('a');
    hold(true);
    const p1 = t.acquire('a');
    const p2 = t.acquire('a');
    expect(await t.acquire('a')).toBeNull();
    expect(t.stats.shedTotal).toBe(1);
    hold(false);
    wake();
    const [r1, r2] = await Promise.all([p1, p2]);
    r1!();
    r2!();
    r2!(); // idempotent: a double release must not free someone else's slot
    const r3 = await t.acquire('a');
    expect(r3).not.toBeNull();
    r3!();
    // Another source is not affected by a's pending checks.
    expect(await t.acquire('b')).not.toBeNull();
  });

  it('costly checks count against their source before they run, with no failures yet (regression: only delayed checks were counted, so one address queued 1,000 derivations)', async () => {
    const { t, waits } = setup({ maxPendingPerSource: 3 });
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await t.acquire('198.51.100.9', true));
    expect(held.every((r) => typeof r === 'function')).toBe(true);
    expect(await t.acquire('198.51.100.9', true)).toBeNull();
    expect(t.stats.shedTotal).toBe(1);
    // Cheap checks of a source without failures are never held up; other sources are untouched.
    expect(typeof (await t.acquire('198.51.100.9'))).toBe('function');
    expect(typeof (await t.acquire('198.51.100.10', true))).toBe('function');
    held[0]!();
    held[0]!(); // idempotent
    expect(typeof (await t.acquire('198.51.100.9', true))).toBe('function');
    expect(waits).toEqual([]);
  });

  it('bounds tracked sources (LRU)', () => {
    const { t } = setup({ maxSources: 3 });
    for (const s of ['a', 'b', 'c', 'd']) t.recordFailure(s);
    expect(t.stats.sourcesTracked).toBe(3);
    expect(t.failureCount('a')).toBe(0);
    expect(t.failureCount('d')).toBe(1);
  });
});
