import { describe, expect, it } from 'vitest';
import { BoundedMap, DistinctWindow } from '../../../policy/detectors/windows.ts';

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
