import { describe, expect, it } from 'vitest';
import { ArrivalQueue } from '../../../gateway/listeners/arrival-queue.ts';

const item = (name: string): { name: string } => ({ name });

describe('ArrivalQueue (the CONNECT front’s waiting connections)', () => {
  it('expires oldest first and stops at the first item still in time', () => {
    const q = new ArrivalQueue<{ name: string }>();
    q.add(item('a'), 1000);
    q.add(item('b'), 1500);
    q.add(item('c'), 2500);
    const out: string[] = [];
    q.expire(3000, 1000, (x) => out.push(x.name));
    expect(out).toEqual(['a', 'b']);
    expect(q.size).toBe(1);
    q.expire(3499, 1000, (x) => out.push(x.name));
    expect(out).toEqual(['a', 'b']);
    q.expire(3500, 1000, (x) => out.push(x.name));
    expect(out).toEqual(['a', 'b', 'c']);
    expect(q.size).toBe(0);
  });

  it('never expires an item that left, wherever it stood, and ignores a ticket twice or after expiry', () => {
    const q = new ArrivalQueue<{ name: string }>();
    const ta = q.add(item('a'), 0);
    const tb = q.add(item('b'), 0);
    const tc = q.add(item('c'), 0);
    q.remove(tb);
    q.remove(tb);
    expect(q.size).toBe(2);
    const out: string[] = [];
    q.expire(10, 5, (x) => out.push(x.name));
    expect(out).toEqual(['a', 'c']);
    q.remove(ta);
    q.remove(tc);
    expect(q.size).toBe(0);
    // Tickets keep counting up after the queue emptied.
    const td = q.add(item('d'), 20);
    expect(td).toBeGreaterThan(tc);
    q.remove(td);
    q.expire(1_000, 5, (x) => out.push(x.name));
    expect(out).toEqual(['a', 'c']);
  });

  it('holds nothing once every item left in arrival order (the common case: first bytes arrive)', () => {
    const q = new ArrivalQueue<{ name: string }>();
    for (let round = 0; round < 3; round++) {
      const tickets = Array.from({ length: 1000 }, (_, i) => q.add(item(String(i)), round));
      for (const t of tickets) q.remove(t);
      expect(q.size).toBe(0);
      expect((q as unknown as { items: unknown[] }).items.length).toBe(0);
    }
  });

  it('clear hands out every item still waiting, once', () => {
    const q = new ArrivalQueue<{ name: string }>();
    q.add(item('a'), 0);
    const tb = q.add(item('b'), 0);
    q.add(item('c'), 0);
    q.remove(tb);
    const out: string[] = [];
    q.clear((x) => out.push(x.name));
    q.clear((x) => out.push(x.name));
    expect(out).toEqual(['a', 'c']);
    expect(q.size).toBe(0);
  });
});
