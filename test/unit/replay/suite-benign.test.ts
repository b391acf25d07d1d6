/**
 * The scenario suite through the replay harness (research §5), benign half 1: B01–B17 alone, with their allowlist entries and without them.
 * Runs with a 30 s virtual sweep to keep the file fast; `npm run eval` runs the same suite at the
 * policy's 1 s. (Budget kills do not depend on the sweep: the byte budget is enforced per chunk.)
 */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../policy/load-config.ts';
import { type SuiteResult, loadInputs, runSuite } from '../../../gateway/replay/suite.ts';

const DIR = new URL('../../scenarios/', import.meta.url).pathname;

async function suite(runs: Array<'allowlist' | 'no-allowlist' | 'mixed'>): Promise<SuiteResult> {
  const cfg = loadConfig(await readFile(`${DIR}policy.yaml`, 'utf8'));
  if (!cfg.ok) throw new Error(`policy.yaml invalid: ${JSON.stringify(cfg.errors)}`);
  const { scenarios } = await loadInputs([DIR]);
  const benign = scenarios.filter((s) => s.kind === 'benign');
  expect(benign).toHaveLength(17);
  return runSuite(cfg.config, benign, [], { stepMs: 30_000, runs });
}

const failures = (r: SuiteResult) =>
  r.judgements.filter((j) => !j.ok).map((j) => `${j.scenario}(${j.variant}): expected ${j.expected}, got ${j.got} ${j.maxSeverity}`);
const stopped = (j: SuiteResult['judgements'][number]) => j.strongest === 'block' || j.strongest === 'kill';

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
