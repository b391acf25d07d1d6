/** LocalAttributor's guarantees to the data plane, with a resolver seam standing in for /proc. */
import { describe, expect, it } from 'vitest';
import { type ConnectionTuple, LocalAttributor, ProcessResolver, connectionKey } from '../../../agent/attribution.ts';
import type { ProcessDetails } from '../../../agent/proc-process.ts';

const proc = (pid: number): ProcessDetails => ({
  pid,
  name: `p${pid}`,
  exe: null,
  cmdline: null,
  user: null,
  uid: 0,
  loginuid: null,
  ppid: 1,
  parentName: null,
  parentExe: null,
  startedAt: null,
});

/** Answers each batch when `release()` is called; records batch sizes. */
class GatedResolver extends ProcessResolver {
  batches: number[] = [];
  private gates: Array<() => void> = [];
  override attributeMany(tuples: readonly ConnectionTuple[]): Promise<Map<string, ProcessDetails | null>> {
    this.batches.push(tuples.length);
    return new Promise((resolve) => {
      this.gates.push(() => resolve(new Map(tuples.map((t) => [connectionKey(t), proc(t.localPort)]))));
    });
  }
  release(): void {
    for (const g of this.gates.splice(0)) g();
  }
  get waiting(): number {
    return this.gates.length;
  }
}

class ThrowingResolver extends ProcessResolver {
  override attributeMany(): Promise<Map<string, ProcessDetails | null>> {
    return Promise.reject(new Error('boom'));
  }
}

describe('LocalAttributor', () => {
  it('serves lookups that arrive during a batch with one next batch', async () => {
    const resolver = new GatedResolver();
    const a = new LocalAttributor({ resolver });
    const first = a.attribute('127.0.0.1', 1001, '127.0.0.1', 3128);
    await Promise.resolve();
    const rest = [1002, 1003, 1004].map((p) => a.attribute('127.0.0.1', p, '127.0.0.1', 3128));
    // Wait until the first batch is in the resolver (bounded).
    for (let i = 0; i < 100 && resolver.waiting === 0; i++) await Promise.resolve();
    expect(resolver.batches).toEqual([1]);
    resolver.release();
    expect((await first)?.pid).toBe(1001);
    for (let i = 0; i < 100 && resolver.waiting === 0; i++) await new Promise((r) => setImmediate(r));
    expect(resolver.batches).toEqual([1, 3]);
    resolver.release();
    expect((await Promise.all(rest)).map((p) => p?.pid)).toEqual([1002, 1003, 1004]);
    expect((await first)?.source).toBe('local');
  });

  it('answers null after timeoutMs when /proc is slow, and null at once beyond maxPending', async () => {
    const resolver = new GatedResolver();
    const a = new LocalAttributor({ resolver, timeoutMs: 20, maxPending: 2 });
    const slow = a.attribute('127.0.0.1', 2001, '127.0.0.1', 3128);
    expect(await slow).toBeNull();
    // The first batch is still held by the gate; these queue behind it.
    const q1 = a.attribute('127.0.0.1', 2002, '127.0.0.1', 3128);
    const q2 = a.attribute('127.0.0.1', 2003, '127.0.0.1', 3128);
    expect(await a.attribute('127.0.0.1', 2004, '127.0.0.1', 3128)).toBeNull();
    resolver.release();
    // Their batch is gated too, so they time out: null, never a rejection.
    expect(await q1).toBeNull();
    expect(await q2).toBeNull();
    resolver.release();
  });

  it('a lookup that timed out still hands its answer to `eventually` when its batch ends; the rest get theirs at once', async () => {
    const resolver = new GatedResolver();
    const a = new LocalAttributor({ resolver, timeoutMs: 20, maxPending: 1 });
    const late: Array<number | null> = [];
    const slow = a.attribute('127.0.0.1', 3001, '127.0.0.1', 3128, 'tcp', (p) => late.push(p?.pid ?? null));
    expect(await slow).toBeNull();
    expect(late).toEqual([]);
    // Shed (beyond maxPending) and remote clients: no lookup, `eventually` null at once.
    await a.attribute('127.0.0.1', 3002, '127.0.0.1', 3128, 'tcp', () => undefined);
    const shed: Array<number | null> = [];
    a.attribute('127.0.0.1', 3003, '127.0.0.1', 3128, 'tcp', (p) => shed.push(p?.pid ?? null));
    a.attribute('192.0.2.10', 3004, '127.0.0.1', 3128, 'tcp', (p) => shed.push(p?.pid ?? null));
    expect(shed).toEqual([null, null]);
    resolver.release();
    for (let i = 0; i < 100 && late.length === 0; i++) await new Promise((r) => setImmediate(r));
    expect(late).toEqual([3001]);
    resolver.release();
  });

  it('never throws: a failing resolver and garbage addresses give null', async () => {
    const a = new LocalAttributor({ resolver: new ThrowingResolver() });
    expect(await a.attribute('127.0.0.1', 1, '127.0.0.1', 2)).toBeNull();
    expect(await a.attribute('not an ip', -5, '', Number.NaN)).toBeNull();
  });
});
