/**
 * The benign half of the scenario suite through the replay harness, shared by the benign test
 * files (split in two so each stays fast). 30 s virtual sweep; `npm run eval` runs the same at 1 s.
 */
import { readFile } from 'node:fs/promises';
import { expect } from 'vitest';
import { loadInputs, runSuite, type SuiteResult } from '../../../gateway/replay/suite.ts';
import { loadConfig } from '../../../policy/load-config.ts';

const DIR = new URL('../../scenarios/', import.meta.url).pathname;

/** Runs B01–B17 in the given variants against test/scenarios/policy.yaml. */
export async function benignSuite(runs: Array<'allowlist' | 'no-allowlist' | 'mixed'>): Promise<SuiteResult> {
  const cfg = loadConfig(await readFile(`${DIR}policy.yaml`, 'utf8'));
  if (!cfg.ok) throw new Error(`policy.yaml invalid: ${JSON.stringify(cfg.errors)}`);
  const { scenarios } = await loadInputs([DIR]);
  const benign = scenarios.filter((s) => s.kind === 'benign');
  expect(benign).toHaveLength(17);
  return runSuite(cfg.config, benign, [], { stepMs: 30_000, runs });
}

/** Judgements that missed their expectation, readable in an assertion diff. */
export const failures = (r: SuiteResult): string[] =>
  r.judgements.filter((j) => !j.ok).map((j) => `${j.scenario}(${j.variant}): expected ${j.expected}, got ${j.got} ${j.maxSeverity}`);

/** Did the scenario end blocked or killed? */
export const stopped = (j: SuiteResult['judgements'][number]): boolean => j.strongest === 'block' || j.strongest === 'kill';
