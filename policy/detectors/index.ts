/**
 * Public surface of the AN0081 / AN0080 detectors. The gateway needs only these:
 * - `evaluateConnect` at connection setup (proxyware, scanner-tool, exfil-tool, lineage), and its
 *   read-only `connectFindings` for the policy dry run; `connectDecision` makes the verdict of them;
 * - `uploadBudgetFor` / `isOverUploadBudget` for the byte-exact bulk-upload kill;
 * - `evaluateSweep` on every flow-table sweep;
 * - `toAlert` to turn a Finding into the SPEC §5 record under the identity's mode;
 * - `DetectionState` (one per gateway; `toJSON` / `fromJSON` for `state.path`).
 */
export { toAlert, alertActionFor } from './alert.ts';
export { CONNECT_DETECTORS, connectDecision, connectFindings, evaluateConnect, type SkipReason, skippedConnectDetectors } from './connect.ts';
export { DETECTOR_DEFAULTS, detectorSettings } from './defaults.ts';
export { DetectionState, emptyObserveResult, isRefusedByPolicy, outcomeOfEnded, outcomeOfRefusal, outcomeOfUnconnected, type BaselineJson, type DetectionReader, type ObserveResult } from './state.ts';
export { evaluateSweep, observeOptions } from './sweep.ts';
export type { Alert, Analytic, BehaviourDetector, Finding, FindingAction, FlowOutcome, FlowView } from './types.ts';
export { budgetKillFinding, isOverUploadBudget, nextUploadBudget, uploadBudgetFor, uploadKillTrigger } from './upload.ts';

/** The strongest action among findings: kill > block > flag; null when there are none. */
export function strongestAction(findings: readonly { action: 'flag' | 'block' | 'kill' }[]): 'flag' | 'block' | 'kill' | null {
  let best: 'flag' | 'block' | 'kill' | null = null;
  for (const f of findings) {
    if (f.action === 'kill') return 'kill';
    if (f.action === 'block') best = 'block';
    else if (best === null) best = 'flag';
  }
  return best;
}
