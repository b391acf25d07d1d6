import { describe, expect, it } from 'vitest';
import { BoundedMap, CountedWindow, DistinctWindow, WindowSum } from '../../../policy/detectors/windows.ts';

describe('BoundedMap', () => {
  it('never holds more than its bound and evicts the least recently used first', () => {
    const m = new BoundedMap<string, number>(64);
    for (let i = 0; i < 64; i++) m.set(`k${i}`, i);
    // k0 is used again: it is now the most recent, and k1 the least.
    expect(m.get('k0')).toBe(0);
    m.set('k64', 64);
    expect(m.size).toBeLessThanOrEqual(64);
    expect(m.has('k0')).toBe(true);
    expect(m.has('k1')).toBe(false);
    expect(m.has('k64')).toBe(true);
    // The one over the bound and a batch (1/16 of the bound) went, oldest first: k1..k5.
    expect(m.size).toBe(60);
    expect(m.has('k5')).toBe(false);
    expect(m.has('k6')).toBe(true);
    expect([...m.entries()].at(-1)).toEqual(['k64', 64]);
  });

  it('stays bounded under a long stream of new keys, keeping the newest', () => {
    const m = new BoundedMap<number, number>(1000);
    let largest = 0;
    for (let i = 0; i < 200_000; i++) {
      m.set(i, i);
      if (i % 3 === 0) m.get(i - 500);
      largest = Math.max(largest, m.size);
    }
    expect(largest).toBe(1000);
    for (let i = 200_000 - 500; i < 200_000; i++) expect(m.peek(i)).toBe(i);
  });

  it('peek does not refresh, delete removes', () => {
    const m = new BoundedMap<string, number>(16);
    for (let i = 0; i < 16; i++) m.set(`k${i}`, i);
    expect(m.peek('k0')).toBe(0);
    m.set('k16', 16);
    expect(m.has('k0')).toBe(false);
    expect(m.delete('k5')).toBe(true);
    expect(m.has('k5')).toBe(false);
  });
});

describe('DistinctWindow', () => {
  it('counts distinct keys in the window and reports what it drops', () => {
    const dropped: string[] = [];
    const w = new DistinctWindow<string>(1000, (k) => dropped.push(k));
    expect(w.touch('a', 1, 'x')).toBe(true);
    expect(w.touch('b', 2, 'x')).toBe(true);
    expect(w.touch('a', 3, 'x')).toBe(false);
    expect(w.prune(2)).toBe(2);
    expect(w.prune(3)).toBe(1);
    expect(dropped).toEqual(['b']);
  });

  it('touching the newest key again moves its time and value; once pruned it is new again', () => {
    const w = new DistinctWindow<string>(1000);
    expect(w.touch('a', 1, 'x')).toBe(true);
    expect(w.touch('a', 5, 'y')).toBe(false);
    expect(w.map.get('a')).toEqual({ t: 5, v: 'y' });
    expect(w.prune(3)).toBe(1);
    expect(w.prune(6)).toBe(0);
    expect(w.touch('a', 7, 'z')).toBe(true);
    expect(w.touch('b', 8, 'z')).toBe(true);
    expect(w.touch('a', 9, 'z')).toBe(false);
    expect([...w.map.keys()]).toEqual(['b', 'a']);
  });

  it('past maxKeys drops the oldest keys in a batch, each reported once', () => {
    const dropped: string[] = [];
    const w = new DistinctWindow<number>(32, (k) => dropped.push(k));
    for (let i = 0; i < 33; i++) w.touch(`d${i}`, i, i);
    expect(w.map.size).toBeLessThanOrEqual(32);
    expect(dropped).toEqual(['d0', 'd1', 'd2']);
    expect(w.map.has('d3')).toBe(true);
    expect(w.map.has('d32')).toBe(true);
  });
});

/** WindowSum as it was before its buckets became one array (two lists): the answers it must keep. */
class TwoListWindowSum {
  private readonly starts: number[] = [];
  private readonly values: number[] = [];
  private head = 0;

  constructor(
    private readonly bucketMs: number,
    private readonly horizonMs: number,
  ) {}

  add(t: number, v: number): void {
    if (v === 0) return;
    const b = Math.floor(t / this.bucketMs) * this.bucketMs;
    const n = this.starts.length;
    if (n > this.head && this.starts[n - 1]! >= b) this.values[n - 1]! += v;
    else {
      this.starts.push(b);
      this.values.push(v);
    }
    const min = t - this.horizonMs;
    while (this.head < this.starts.length && this.starts[this.head]! + this.bucketMs <= min) this.head++;
    if (this.head > 64 && this.head * 2 > this.starts.length) {
      this.starts.splice(0, this.head);
      this.values.splice(0, this.head);
      this.head = 0;
    }
  }

  sumSince(since: number): number {
    let s = 0;
    for (let i = this.starts.length - 1; i >= this.head; i--) {
      if (this.starts[i]! + this.bucketMs <= since) break;
      s += this.values[i]!;
    }
    return s;
  }
}

describe('WindowSum', () => {
  it('holds no bucket until its first add, and sums nothing then', () => {
    const w = new WindowSum(5_000, 3_600_000);
    expect(w.bucketCount).toBe(0);
    expect(w.sumSince(0)).toBe(0);
    w.add(1_000, 0);
    expect(w.bucketCount).toBe(0);
    w.add(1_000, 7);
    expect(w.bucketCount).toBe(1);
    expect(w.sumSince(0)).toBe(7);
  });

  it('empty, filled, expired, filled again: the sums it gave with two lists, across compactions', () => {
    const bucketMs = 5_000;
    const horizonMs = 60_000;
    const w = new WindowSum(bucketMs, horizonMs);
    const before = new TwoListWindowSum(bucketMs, horizonMs);
    let t = 1_000_000;
    // Busy (several adds a bucket, past 64 buckets: compacted), then idle past the horizon
    // (every bucket expired), then busy again; a late add.
    const steps: number[] = [];
    for (let i = 0; i < 400; i++) steps.push(1_700);
    steps.push(3 * horizonMs);
    for (let i = 0; i < 200; i++) steps.push(2_900);
    steps.push(-4_000);
    for (let i = 0; i < 30; i++) steps.push(6_100);
    for (const [i, step] of steps.entries()) {
      t += step;
      const v = (i % 7) * 100;
      w.add(t, v);
      before.add(t, v);
      for (const back of [0, 1, bucketMs, 4 * bucketMs, horizonMs, 2 * horizonMs]) expect(w.sumSince(t - back)).toBe(before.sumSince(t - back));
    }
    // Compacted: at most the horizon's buckets plus the dead prefix allowed before a compaction.
    expect(w.bucketCount).toBeLessThanOrEqual(horizonMs / bucketMs + 1 + 128);
  });
});

describe('CountedWindow', () => {
  it('counts its keys per group out as they are pruned or evicted (the caller counts them in)', () => {
    const w = new CountedWindow(32);
    const touch = (key: string, t: number, group: string): void => {
      if (w.touch(key, t, group)) w.counts.set(group, (w.counts.get(group) ?? 0) + 1);
    };
    touch('a:1', 1, 'a');
    touch('a:2', 2, 'a');
    touch('b:1', 3, 'b');
    touch('a:1', 4, 'a');
    expect([...w.counts]).toEqual([
      ['a', 2],
      ['b', 1],
    ]);
    expect(w.prune(3)).toBe(2);
    expect([...w.counts]).toEqual([
      ['a', 1],
      ['b', 1],
    ]);
    expect(w.prune(5)).toBe(0);
    expect(w.counts.size).toBe(0);
    for (let i = 0; i < 40; i++) touch(`c:${i}`, 10 + i, 'c');
    expect(w.counts.get('c')).toBe(w.map.size);
  });
});
