import { describe, expect, it } from 'vitest';
import type { LoadResult } from '../../../bench/loadgen.ts';
import { budgetChecks, groupByTarget } from '../../../bench/summary.ts';

/** A run with only the absolute-URI 1 KiB phase: its rate and CPU split (% of one core). */
function k1(name: string, reqPerSec: number, cpu: { proxy: number; origin: number; gen: number }): LoadResult {
  return { name, kind: 'http', http: { '1k': { req_per_s: reqPerSec, ok: reqPerSec, cpu: { ...cpu, machine: 0, other: 0 } } } } as unknown as LoadResult;
}

describe('bench budget table', () => {
  it('derives the proxy budget per request from the peer run and the machine', () => {
    const by = groupByTarget([
      // squid: 10,000 req/s; origin + load generator 50 % of a core → 50 µs per request.
      k1('squid', 10_000, { proxy: 99, origin: 20, gen: 30 }),
      k1('egw-http', 8000, { proxy: 100, origin: 15, gen: 25 }),
      k1('naive-undici', 20_000, { proxy: 96, origin: 30, gen: 40 }),
    ]);
    const row = budgetChecks(by, 2)
      .split('\n')
      .find((l) => l.startsWith('| absolute-URI 1 KiB'));
    // 1.2 × 10,000 = 12,000/s: one thread allows 1e6 / 12,000 = 83.3 µs; two cores 2e6 / 12,000 − 50 = 116.7 µs.
    // egressgate: 100 % of a core / 8,000 = 125 µs; naive-undici 96 % / 20,000 = 48 µs.
    expect(row).toBe('| absolute-URI 1 KiB ≥ 1.2× squid | 12000/s | 50 | ≤ 83.3 µs | ≤ 117 µs | 125 µs | 48 µs (naive-undici) |');
  });

  it('says so when the peer was not run', () => {
    const row = budgetChecks(groupByTarget([k1('egw-http', 8000, { proxy: 100, origin: 15, gen: 25 })]), 2)
      .split('\n')
      .find((l) => l.startsWith('| CONNECT'));
    expect(row).toContain('squid not run');
  });
});
