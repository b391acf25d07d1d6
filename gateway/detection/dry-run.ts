/**
 * The connect-time detection of the policy dry run (`egressgate evaluate`, `POST /v1/policy/evaluate`):
 * what admission's step 8 would make of a described connection after the policy's decision —
 * quarantine, then the connect-time detectors (proxyware, scanner and exfil tools, lineage) with the
 * policy's detector settings (enabled, action, corroborate, exceptions) and mode. The same
 * judgement admission runs (`connectFindings`, `connectDecision`, `quarantineDecision`), read-only:
 * no alert raised, no quarantine opened, nothing noted or counted towards fan-out or first-seen.
 *
 * With a running gateway (`live`) its quarantine and detector state (recent detector firings, the
 * first-seen destinations that make one rare or long-known, beacon timings) are read as they are;
 * without one (the CLI) there is none, and the answer says so.
 */
import {
  alertActionFor,
  type BehaviourDetector,
  CONNECT_DETECTORS,
  connectDecision,
  connectFindings,
  type DetectionReader,
  DetectionState,
  type SkipReason,
  skippedConnectDetectors,
} from '../../policy/detectors/index.ts';
import { identityKeyOf } from '../../policy/detectors/match.ts';
import { type AlertAction, type ConnectFacts, DETECTOR_NAMES, type Decision, type PolicySnapshot, type Severity } from '../../policy/types.ts';
import { quarantineDecision } from './quarantine.ts';

/** A running gateway's detection state, read without changing it (DetectionEngine.readOnly()). */
export interface LiveDetection {
  /** Until when (ms) the identity key is quarantined at `now`, 0 when it is not. */
  quarantinedUntil(key: string, now: number): number;
  /** Until when monitor mode takes the identity for quarantined (enforce mode would have quarantined it), 0 when not. */
  wouldQuarantinedUntil?(key: string, now: number): number;
  readonly state: DetectionReader;
}

/** A connect-time finding the connection would raise: its alert, less what only a live flow has. */
export interface DryRunFinding {
  detector: BehaviourDetector;
  analytic: string;
  severity: Severity;
  /** The alert's action under the identity's mode: flag, block or would-block. */
  action: AlertAction;
  evidence: Record<string, number | string | boolean>;
  reasons: readonly string[];
}

/** Which detectors the answer judged, and with what state. */
export interface DryRunDetectors {
  /** `live`: the running gateway's quarantine and detector state, read; `none`: no running gateway. */
  state: 'live' | 'none';
  /** Connect-time detectors that judged the connection. */
  judged: BehaviourDetector[];
  /** Connect-time detectors that did not, and why. */
  skipped: Array<{ detector: BehaviourDetector; why: SkipReason }>;
  /** Detectors of what a connection does once admitted (bytes, duration, fan-out): not judged here. */
  notJudged: BehaviourDetector[];
  /** ISO time the identity is quarantined until, or null (always null without a running gateway). */
  quarantinedUntil: string | null;
  notes: string[];
}

export interface DryRun {
  /** The verdict admission would record: the policy's, or the detectors' / quarantine's over it. */
  decision: Decision;
  findings: DryRunFinding[];
  detectors: DryRunDetectors;
}

/** The detectors that judge traffic after admission (the sweep, the upload budget). */
const TRAFFIC_DETECTORS: readonly BehaviourDetector[] = DETECTOR_NAMES.filter(
  (n): n is BehaviourDetector =>
    n !== 'policy.deny' && n !== 'policy.deny-range' && n !== 'quarantine' && !CONNECT_DETECTORS.includes(n as BehaviourDetector),
);

const NO_GATEWAY =
  'no running gateway: quarantine, fan-out windows, first-seen history and recent detector firings not consulted (a detector that waits for corroboration from them may act on the gateway where it only flags here)';
const LIVE =
  "the running gateway's quarantine and detector state were read, not changed: nothing counted, no alert raised, no quarantine opened";

/**
 * Admission's connect-time detection for `facts` after the policy decided `policy` (its `mode` is
 * the identity's), at `now`. `live` is the running gateway's state, or null.
 */
export function dryRunConnect(snapshot: PolicySnapshot, facts: ConnectFacts, policy: Decision, now: number, live: LiveDetection | null): DryRun {
  const mode = policy.mode;
  const skipped = skippedConnectDetectors(facts, snapshot);
  const detectors: DryRunDetectors = {
    state: live ? 'live' : 'none',
    judged: [],
    skipped,
    notJudged: [...TRAFFIC_DETECTORS],
    quarantinedUntil: null,
    notes: [live ? LIVE : NO_GATEWAY],
  };
  // Admission refuses a policy block (step 7), and a client that did not log in where the policy
  // requires it (step 1), before any detector (step 8); monitor mode's would-block
  // by policy is that refusal too, and meets no detector either (enforce mode never reaches them).
  if (policy.verdict !== 'allow') {
    detectors.notes.push(
      policy.reason === 'auth-required'
        ? 'refused before the policy (no login): quarantine and detectors not reached'
        : policy.verdict === 'block'
          ? 'refused by the policy: quarantine and detectors not reached'
          : 'enforce mode would refuse it by the policy: quarantine and detectors not reached',
    );
    return { decision: policy, findings: [], detectors };
  }
  const key = identityKeyOf(facts.identity, facts.clientIp);
  const until = live ? live.quarantinedUntil(key, now) : 0;
  // Monitor mode takes an identity enforce mode would have quarantined for quarantined (would-block).
  const wouldUntil = until === 0 && mode !== 'enforce' ? (live?.wouldQuarantinedUntil?.(key, now) ?? 0) : 0;
  let found: Decision | null;
  let findings: DryRunFinding[] = [];
  if (until !== 0) {
    detectors.quarantinedUntil = new Date(until).toISOString();
    detectors.notes.push('identity quarantined: the detectors are not judged');
    found = quarantineDecision(until, mode, policy.matchedRule);
  } else if (wouldUntil !== 0) {
    detectors.notes.push(`enforce mode would have quarantined the identity until ${new Date(wouldUntil).toISOString()} (monitor mode records would-block): the detectors are not judged`);
    found = quarantineDecision(wouldUntil, mode, policy.matchedRule, true);
  } else {
    const state = live?.state ?? DetectionState.forConfig(snapshot.config, now).readOnly();
    const all = connectFindings(facts, state, snapshot, now);
    detectors.judged = CONNECT_DETECTORS.filter((d) => !skipped.some((s) => s.detector === d));
    findings = all.map((f) => ({
      detector: f.detector,
      analytic: f.analytic,
      severity: f.severity,
      action: alertActionFor(f.action, mode),
      evidence: f.evidence,
      reasons: f.reasons,
    }));
    found = connectDecision(all, mode, policy.matchedRule);
  }
  // As admission: a detector's or quarantine's decision over a policy allow.
  const decision = found ?? policy;
  return { decision, findings, detectors };
}
