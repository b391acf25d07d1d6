import { describe, expect, it } from 'vitest';
import { SlotArray } from '../../../gateway/slot-array.ts';

describe('SlotArray (live flows, flowless SOCKS5 connections)', () => {
  it('reuses freed slots, so it grows only with the peak number of items', () => {
    const slots = new SlotArray<{ n: number }>();
    const a = { n: 1 };
    const b = { n: 2 };
    const sa = slots.add(a);
    const sb = slots.add(b);
    expect([sa, sb]).toEqual([0, 1]);
    expect(slots.remove(sa, a)).toBe(true);
    const c = { n: 3 };
    expect(slots.add(c)).toBe(sa);
    expect(slots.get(sa)).toBe(c);
    expect([...slots.values()].map((x) => x.n)).toEqual([3, 2]);
    for (let i = 0; i < 1000; i++) {
      const x = { n: i };
      expect(slots.remove(slots.add(x), x)).toBe(true);
    }
    expect((slots as unknown as { items: unknown[] }).items.length).toBe(3);
  });

  it('a stale slot number never frees another item, and a freed slot holds nothing', () => {
    const slots = new SlotArray<{ n: number }>();
    const a = { n: 1 };
    const sa = slots.add(a);
    expect(slots.remove(sa, a)).toBe(true);
    expect(slots.remove(sa, a)).toBe(false);
    expect(slots.get(sa)).toBeUndefined();
    const b = { n: 2 };
    expect(slots.add(b)).toBe(sa);
    expect(slots.remove(sa, a)).toBe(false);
    expect(slots.remove(-1, b)).toBe(false);
    expect(slots.get(sa)).toBe(b);
    expect([...slots.values()]).toEqual([b]);
  });
});
