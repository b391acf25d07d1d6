/**
 * The scenario suite through the replay harness (research §5), benign half 1: B01–B17 alone, with their allowlist entries and without them.
 * Runs with a 30 s virtual sweep to keep the file fast; `npm run eval` runs the same suite at the
 * policy's 1 s. (Budget kills do not depend on the sweep: the byte budget is enforced per chunk.)
 */
import { describe, expect, it } from 'vitest';
import { benignSuite as suite, failures, stopped } from './benign-suite.ts';

describe('scenario suite: benign, alone', () => {
  it('blocks or kills no benign scenario with its entry and flags none above low; without it only the declared look-alikes stop', async () => {
    const r = await suite(['allowlist', 'no-allowlist']);
    expect(failures(r)).toEqual([]);
    const withEntry = r.judgements.filter((j) => j.variant === 'allowlist');
    expect(withEntry).toHaveLength(17);
    for (const j of withEntry) {
      expect(stopped(j), j.scenario).toBe(false);
      expect(j.maxSeverity === 'medium' || j.maxSeverity === 'high', j.scenario).toBe(false);
    }
    const without = r.judgements.filter((j) => j.variant === 'no-allowlist');
    expect(without).toHaveLength(17);
    // Restic to a non-approved repository (D5b) and a scanner that is not an expected source (D3a).
    expect(without.filter(stopped).map((j) => j.scenario).sort()).toEqual(['B05', 'B12']);
    // The entries matter: without them several benign scenarios are flagged.
    expect(without.filter((j) => j.strongest === 'flag').length).toBeGreaterThan(3);
  });
});
