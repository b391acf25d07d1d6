/**
 * The scenario suite through the replay harness (research §5), benign half 2: B01–B17 mixed concurrently on one clock with all their entries (keys must not bleed).
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
