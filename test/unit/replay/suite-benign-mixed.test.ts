/**
 * The scenario suite through the replay harness (research §5), benign half 2: B01–B17 mixed concurrently on one clock with all their entries (keys must not bleed).
 * Runs with a 30 s virtual sweep to keep the file fast; `npm run eval` runs the same suite at the
 * policy's 1 s. (Budget kills do not depend on the sweep: the byte budget is enforced per chunk.)
 */
import { describe, expect, it } from 'vitest';
import { benignSuite as suite, failures, stopped } from './benign-suite.ts';

describe('scenario suite: benign, mixed', () => {
  it('stops none and flags none above low when all benign scenarios run together', async () => {
    const r = await suite(['mixed']);
    expect(failures(r)).toEqual([]);
    expect(r.judgements).toHaveLength(17);
    for (const j of r.judgements) {
      expect(j.variant).toBe('mixed');
      expect(stopped(j), j.scenario).toBe(false);
      expect(j.maxSeverity === 'medium' || j.maxSeverity === 'high', j.scenario).toBe(false);
    }
  });
});
