/**
 * The scenario suite through the replay harness (research §5), benign half: B01–B17 with their allowlist entries, without them, and all mixed concurrently.
 * Runs with a 10 s virtual sweep to keep the file fast; `npm run eval` runs the same suite at the
 * policy's 1 s. (Budget kills do not depend on the sweep: the byte budget is enforced per chunk.)
 */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../policy/load-config.ts';
import { type SuiteResult, loadInputs, runSuite } from '../../../gateway/replay/suite.ts';

const DIR = new URL('../../scenarios/', import.meta.url).pathname;

async function suite(kind: 'benign' | 'malicious'): Promise<SuiteResult> {
  const cfg = loadConfig(await readFile(`${DIR}policy.yaml`, 'utf8'));
  if (!cfg.ok) throw new Error(`policy.yaml invalid: ${JSON.stringify(cfg.errors)}`);
  const { scenarios } = await loadInputs([DIR]);
  const mine = scenarios.filter((s) => s.kind === kind);
  expect(mine).toHaveLength(17);
  return runSuite(cfg.config, mine, [], { stepMs: 10_000 });
}

const failures = (r: SuiteResult) =>
  r.judgements.filter((j) => !j.ok).map((j) => `${j.scenario}(${j.variant}): expected ${j.expected}, got ${j.got} ${j.maxSeverity}`);

describe('scenario suite: benign', () => {
  it('blocks or kills no benign scenario with its entry and flags none above low', async () => {
    const r = await suite('benign');
    expect(failures(r)).toEqual([]);
    const withEntry = r.judgements.filter((j) => j.variant !== 'no-allowlist');
    expect(withEntry).toHaveLength(34); // 17 alone + 17 in the mixed run
    for (const j of withEntry) {
      expect(j.strongest === 'block' || j.strongest === 'kill', `${j.scenario} ${j.variant}`).toBe(false);
      expect(j.maxSeverity === 'medium' || j.maxSeverity === 'high', `${j.scenario} ${j.variant}`).toBe(false);
    }
    // Without the entry only the two declared look-alikes are stopped (restic exfil, internal scan).
    const without = r.judgements.filter((j) => j.variant === 'no-allowlist');
    expect(without).toHaveLength(17);
    const stopped = without.filter((j) => j.strongest === 'block' || j.strongest === 'kill');
    expect(stopped.map((j) => j.scenario).sort()).toEqual(['B05', 'B12']);
    // …and the rest still raise flags where the research expects them (entries matter).
    expect(without.filter((j) => j.strongest === 'flag').length).toBeGreaterThan(3);
  });
});
