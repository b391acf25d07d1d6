/**
 * The scenario suite through the replay harness (research §5), malicious half: every one of M01–M17 caught with its expected action and not one byte past a kill budget.
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

describe('scenario suite: malicious', () => {
  it('catches M01–M17 with the expected action, 0 bytes past a kill budget', async () => {
    const r = await suite('malicious');
    expect(failures(r)).toEqual([]);
    expect(r.judgements).toHaveLength(17);
    for (const j of r.judgements) expect(['flag', 'block', 'kill']).toContain(j.strongest);
    expect(r.judgements.reduce((n, j) => n + j.bytesPastBudget, 0)).toBe(0);
    // The byte-budget kills really happened, at exactly the budget (M10 at 10 MiB, M15 at 50 MiB).
    const kills = r.findings.filter((f) => f.finding.detector === 'an0080.bulk-upload' && f.finding.action === 'kill');
    expect(kills.map((f) => `${f.scenario}:${f.finding.evidence['bytesOut']}`).sort()).toEqual([`M10:${10 * 1024 * 1024}`, `M15:${50 * 1024 * 1024}`]);
    // Behaviour detectors needed time; name-based ones fired at the first connection.
    const ttd = new Map(r.judgements.map((j) => [j.scenario, j.timeToDetectMs]));
    expect(ttd.get('M01')).toBe(0);
    expect(ttd.get('M07')).toBeGreaterThan(5 * 60_000);
    expect(ttd.get('M09')).toBeGreaterThan(5 * 60_000);
  });
});
