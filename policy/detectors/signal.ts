/**
 * A raw detector hit before scoring: the sweep collects these, then scores each one with the
 * modifiers and the other detectors that fired for the same identity (corroboration).
 */
import type { Identity } from '../types.ts';
import type { Gate, ModifierName } from './scoring.ts';
import type { Analytic, BehaviourDetector, FlowDestinationView } from './types.ts';

export interface SweepSignal {
  readonly detector: BehaviourDetector;
  readonly analytic: Analytic;
  readonly idKey: string;
  readonly identity: Identity;
  readonly clientIp?: string | undefined;
  readonly baseLevel: number;
  readonly gate: Gate;
  readonly minLevelForAction?: number;
  /** Modifiers the signal already is (not counted twice). */
  readonly exclude?: readonly ModifierName[];
  /** Detectors treated as already corroborating (e.g. the exfil tool behind a D5b upload). */
  readonly alsoFired?: readonly BehaviourDetector[];
  readonly destination: FlowDestinationView | null;
  readonly flowIds: readonly string[];
  readonly evidence: Record<string, number | string | boolean>;
  readonly reason: string;
  readonly key: string;
}
