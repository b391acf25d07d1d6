/**
 * The virtual-clock data plane of the replay harness. It plays connection scripts through the same
 * code the gateway runs — policy `decide`, `evaluateConnect`, `uploadBudgetFor` /
 * `isOverUploadBudget`, `evaluateSweep` every `stepMs` — with bytes growing linearly over each
 * flow's life, so hours of traffic are judged in seconds.
 *
 * Per step:
 * 1. start the connections due (policy → quarantine → connect-time detectors → budget); a refused
 *    or failed one is folded as the gateway folds it (`outcomeOfUnconnected`: an address refused by
 *    policy is a `denied` attempt, a failed dial a failed one unless the flow was would-block); one
 *    the gateway refused before judging it (`unjudged`: draining, a Via loop) is not judged at all;
 * 2. advance bytes of live flows; a flow reaching its budget is cut at exactly the budget
 *    (enforce) when the out:in ratio holds;
 * 3. sweep: evaluateSweep over live flows and those closed in this step;
 * 4. act on findings: enforce kills flows and quarantines the identity on block/kill (monitor notes
 *    the quarantine it would have opened: its next flows are would-block, as in the gateway).
 * Idle stretches (no live flow) jump straight to the next connection.
 */
import {
  evaluateConnect,
  evaluateSweep,
  isOverUploadBudget,
  outcomeOfUnconnected,
  toAlert,
  uploadBudgetFor,
  uploadKillTrigger,
} from '../../policy/detectors/index.ts';
import { identityKeyOf, severityLevel } from '../../policy/detectors/match.ts';
import { DetectionState } from '../../policy/detectors/state.ts';
import type { Alert, Finding, FlowOutcome, FlowView } from '../../policy/detectors/types.ts';
import type { ConnectFacts, Identity, Mode, PolicySnapshot, ReasonCode, Verdict } from '../../policy/types.ts';
import type { ConnOutcome, ConnSpec } from './scenario.ts';

const DAY_MS = 86_400_000;

/** The closeReason the gateway records for a scripted outcome (what outcomeOfUnconnected reads). */
const CLOSE_REASON_OF: Record<ConnOutcome, string | null> = {
  ok: null,
  refused: 'connection-refused',
  timeout: 'connect-timeout',
  'dns-fail': 'dns-failed',
  // Not the destination's answer (outcomeOfUnconnected: counted nowhere) unless policy refuses it.
  unconnected: null,  // Refused before admission judged it: never started (see `start`).
  unjudged: null,
};

interface SimFlow {
  id: string;
  spec: ConnSpec;
  view: {
    id: string;
    protocol: ConnSpec['protocol'];
    clientIp: string;
    identity: Identity;
    destination: { host: string; ip: string | null; port: number };
    startedAtMs: number;
    endedAtMs: number | null;
    lastActivityAtMs: number;
    bytesOut: number;
    bytesIn: number;
    outcome: FlowOutcome;
  };
  endMs: number;
  mode: Mode;
  facts: ConnectFacts;
  budget: number | null;
  /** The kill already stands at the budget (false: `corroborate: true` and none yet at the connect). */
  corroborated: boolean;
  budgetDone: boolean;
}

export interface ReplayFinding {
  readonly scenario: string;
  readonly atMs: number;
  readonly finding: Finding;
  readonly alert: Alert;
  /** false when grouped with an identical earlier alert (not printed again). */
  readonly isNew: boolean;
}

export interface ScenarioTally {
  connections: number;
  blockedByDetector: number;
  blockedByPolicy: number;
  blockedByQuarantine: number;
  killedFlows: number;
  /** Bytes that reached the destination past a kill budget (enforce mode). */
  bytesPastBudget: number;
  firstStartMs: number;
}

export interface ReplayResult {
  readonly findings: ReplayFinding[];
  readonly tallies: Map<string, ScenarioTally>;
  readonly steps: number;
}

export interface ReplayOptions {
  readonly snapshot: PolicySnapshot;
  /** Sweep interval; default `detection.sampleIntervalMs`. */
  readonly stepMs?: number;
  readonly modeOverride?: Mode | null;
  /** Destinations in the baseline, first seen long before the run. */
  readonly known?: readonly string[];
}

function tallyFor(tallies: Map<string, ScenarioTally>, spec: ConnSpec): ScenarioTally {
  let t = tallies.get(spec.scenario);
  if (!t) {
    t = {
      connections: 0,
      blockedByDetector: 0,
      blockedByPolicy: 0,
      blockedByQuarantine: 0,
      killedFlows: 0,
      bytesPastBudget: 0,
      firstStartMs: spec.startMs,
    };
    tallies.set(spec.scenario, t);
  }
  return t;
}

/** Plays `conns` (sorted by start) on a virtual clock; returns every finding and per-scenario tallies. */
export function replayConnections(conns: readonly ConnSpec[], opts: ReplayOptions): ReplayResult {
  const { snapshot } = opts;
  const config = snapshot.config;
  const stepMs = Math.max(1, opts.stepMs ?? config.detection.sampleIntervalMs);
  const origin = conns[0]?.startMs ?? 0;
  // The gateway has been learning for a month; the scenario's known destinations are older still.
  const state = new DetectionState({
    // A replay tracks far fewer keys than a gateway; smaller caches keep each run cheap to set up.
    maxTrackedIdentities: Math.min(config.detection.maxTrackedIdentities, 10_000),
    maxTrackedDestinations: Math.min(config.detection.maxTrackedDestinations, 100_000),
    learningStartedAtMs: origin - 30 * DAY_MS,
  });
  for (const k of opts.known ?? []) state.seedFirstSeen(k, origin - 90 * DAY_MS);

  const tallies = new Map<string, ScenarioTally>();
  const findings: ReplayFinding[] = [];
  const quarantine = new Map<string, number>();
  const scenarioOfIdentity = new Map<string, string>();
  const flowsById = new Map<string, SimFlow>();
  const printed = new Map<string, string>();
  let active: SimFlow[] = [];
  let seq = 0;
  let alertSeq = 0;
  let steps = 0;

  const record = (scenario: string, f: Finding, mode: Mode, at: number): void => {
    const alert = toAlert(f, mode, `a${++alertSeq}`, at);
    const sig = `${alert.action}/${alert.severity}`;
    const isNew = printed.get(f.key) !== sig;
    printed.set(f.key, sig);
    findings.push({ scenario, atMs: at, finding: f, alert, isNew });
  };
  const quarantineFor = (idKey: string, at: number): void => {
    quarantine.set(idKey, at + config.detection.quarantineSec * 1000);
  };

  const start = (spec: ConnSpec, now: number): SimFlow | null => {
    const tally = tallyFor(tallies, spec);
    tally.connections++;
    // Refused by the gateway before admission judged it (draining, a Via loop, the flow log failing):
    // live, neither policy nor quarantine nor a connect-time detector saw it, and nothing was folded.
    if (spec.outcome === 'unjudged') return null;
    const roles = spec.identity.roles ?? snapshot.rolesFor(spec.identity.user, spec.identity.host);
    const identity: Identity = { user: spec.identity.user, host: spec.identity.host, roles, process: spec.identity.process };
    const idKey = identityKeyOf(identity, spec.identity.clientIp);
    scenarioOfIdentity.set(idKey, spec.scenario);
    const mode = snapshot.modeFor(roles, opts.modeOverride ?? null);
    const id = `f${++seq}`;
    const facts: ConnectFacts = {
      protocol: spec.protocol,
      clientIp: spec.identity.clientIp,
      clientPort: 40000 + (seq % 20000),
      identity,
      destHost: spec.host,
      destPort: spec.port,
      destIp: spec.ip,
    };
    // 1. policy, 2. quarantine, 3. connect-time detectors (the gateway's order: admission.ts decides,
    // then its detection hooks judge quarantine and the connect-time detectors).
    const decision = snapshot.decide(facts, now, opts.modeOverride ?? null);
    const destination = { host: spec.host, ip: spec.ip, port: spec.port };
    // A flow refused, or whose dial failed, is folded by the gateway's own rule (outcomeOfUnconnected):
    // a refusal of the address itself, or the destination failing the dial of a flow policy allows.
    // Monitor mode's would-block counts as enforce mode's refusal would: nothing more.
    const unconnected = (verdict: Verdict, reason: ReasonCode): FlowOutcome =>
      outcomeOfUnconnected({ verdict, reason, closeReason: CLOSE_REASON_OF[spec.outcome], destination });
    // Monitor mode's would-block by policy is enforce mode's refusal, whether its dial would connect or not
    // (outcomeOfEnded, as the gateway folds it).
    let outcome: FlowOutcome = decision.verdict === 'allow' && spec.outcome === 'ok' ? 'open' : unconnected(decision.verdict, decision.reason);
    if (decision.verdict === 'block') {
      tally.blockedByPolicy++;
      if (outcome !== 'denied') return null;
    } else if (spec.outcome === 'dns-fail') {
      // No address: the gateway refuses it at step 7's end, before quarantine and the connect-time
      // detectors, and folds nothing (no address to count an attempt at).
      return null;
    } else if (decision.verdict === 'allow') {
      // Monitor mode's would-block by policy meets no quarantine or connect-time detector: enforce
      // mode refuses it first (the gateway's admission, step 7 before step 8).
      // As the gateway's detection engine: a quarantined identity (monitor mode: one enforce mode
      // would have quarantined) is not judged by the connect-time detectors again; monitored, it and
      // a refusing connect-time finding make the flow would-block, which its failed dial then is.
      const isQuarantined = (quarantine.get(idKey) ?? 0) > now;
      if (isQuarantined && mode === 'enforce') {
        tally.blockedByQuarantine++;
        return null;
      }
      let wouldBlock: ReasonCode | null = isQuarantined ? 'quarantine' : null;
      if (!isQuarantined) {
        const found = evaluateConnect(facts, state, snapshot, now, id);
        for (const f of found) record(spec.scenario, f, mode, now);
        if (found.some((f) => f.action !== 'flag')) {
          quarantineFor(idKey, now);
          if (mode === 'enforce') {
            tally.blockedByDetector++;
            return null;
          }
          wouldBlock = 'detector';
        }
      }
      if (wouldBlock !== null && outcome !== 'open') outcome = unconnected('would-block', wouldBlock);
    }
    // Counted nowhere (a name's failed dial that policy refuses, a DNS failure): nothing to fold.
    if (outcome === 'blocked') return null;
    const failed = outcome !== 'open';
    const flow: SimFlow = {
      id,
      spec,
      view: {
        id,
        protocol: spec.protocol,
        clientIp: spec.identity.clientIp,
        identity,
        destination,
        startedAtMs: spec.startMs,
        endedAtMs: failed ? spec.startMs : null,
        lastActivityAtMs: spec.startMs,
        bytesOut: 0,
        bytesIn: 0,
        outcome,
      },
      endMs: spec.startMs + spec.durationMs,
      mode,
      facts,
      // As the gateway does (detection-engine budgetFor): the budget is kept from the connect even
      // when `corroborate: true` has no corroboration yet; that is judged again at the budget.
      budget: failed ? null : uploadKillTrigger(facts, snapshot, now, state),
      corroborated: !failed && uploadBudgetFor(facts, snapshot, now, state) !== null,
      budgetDone: false,
    };
    flowsById.set(id, flow);
    return flow;
  };

  const advance = (f: SimFlow, now: number): void => {
    const v = f.view;
    if (v.outcome !== 'open') return;
    const s = f.spec;
    const until = Math.min(now, f.endMs);
    const frac = s.durationMs > 0 ? Math.min(1, (until - s.startMs) / s.durationMs) : 1;
    const out = Math.round(s.bytesOut * frac);
    const inn = Math.round(s.bytesIn * frac);
    if (f.budget !== null && !f.budgetDone && out >= f.budget) {
      // The data plane holds the chunk that would cross the budget and asks whether to kill.
      const share = s.bytesOut > 0 ? f.budget / s.bytesOut : 1;
      const inAt = Math.round(s.bytesIn * share);
      const atMs = s.startMs + Math.round(s.durationMs * share);
      f.budgetDone = true;
      const over = isOverUploadBudget(f.budget, inAt, f.budget, snapshot);
      // A modifier or second detector that came since the connect makes the kill stand here.
      if (over && !f.corroborated) f.corroborated = uploadBudgetFor(f.facts, snapshot, atMs, state) !== null;
      if (over && f.corroborated && f.mode === 'enforce') {
        v.bytesOut = f.budget;
        v.bytesIn = inAt;
        v.endedAtMs = Math.min(now, atMs);
        v.lastActivityAtMs = v.endedAtMs;
        v.outcome = 'closed';
        tallyFor(tallies, s).killedFlows++;
        return;
      }
    }
    v.bytesOut = out;
    v.bytesIn = inn;
    v.lastActivityAtMs = until;
    if (now >= f.endMs) {
      v.endedAtMs = f.endMs;
      v.outcome = 'closed';
    }
  };

  const act = (f: Finding, now: number): void => {
    const firstFlow = f.flowIds.map((id) => flowsById.get(id)).find((x) => x !== undefined);
    const scenario = firstFlow?.spec.scenario ?? scenarioOfIdentity.get(f.identity.key) ?? '?';
    const mode = firstFlow?.mode ?? snapshot.modeFor(f.identity.roles, opts.modeOverride ?? null);
    record(scenario, f, mode, now);
    if (f.action === 'flag') return;
    // Monitor mode notes the quarantine enforce mode would have opened (its flows are would-block).
    quarantineFor(f.identity.key, now);
    if (mode !== 'enforce' || f.action !== 'kill') return;
    for (const id of f.flowIds) {
      const fl = flowsById.get(id);
      if (!fl) continue;
      const threshold = f.detector === 'an0080.bulk-upload' ? Number(f.evidence['thresholdBytesOut'] ?? Number.NaN) : Number.NaN;
      if (Number.isFinite(threshold)) tallyFor(tallies, fl.spec).bytesPastBudget += Math.max(0, fl.view.bytesOut - threshold);
      if (fl.view.outcome === 'open') {
        fl.view.outcome = 'closed';
        fl.view.endedAtMs = now;
        tallyFor(tallies, fl.spec).killedFlows++;
      }
    }
  };

  let t = origin;
  let ci = 0;
  // Bounded: every iteration either starts a connection, or advances t by stepMs towards the
  // end of the last live flow.
  while (ci < conns.length || active.length > 0) {
    if (active.length === 0 && ci < conns.length && conns[ci]!.startMs > t) {
      t = origin + Math.ceil((conns[ci]!.startMs - origin) / stepMs) * stepMs;
    }
    const stepFlows: SimFlow[] = [];
    while (ci < conns.length && conns[ci]!.startMs <= t) {
      const f = start(conns[ci]!, conns[ci]!.startMs);
      ci++;
      if (f) stepFlows.push(f);
    }
    for (const f of active) advance(f, t);
    for (const f of stepFlows) advance(f, t);
    const views: FlowView[] = [];
    for (const f of active) views.push(f.view);
    for (const f of stepFlows) views.push(f.view);
    const found = evaluateSweep(views, state, snapshot, t);
    for (const f of found) act(f, t);
    steps++;
    const next: SimFlow[] = [];
    for (const f of active) if (f.view.outcome === 'open') next.push(f);
    for (const f of stepFlows) if (f.view.outcome === 'open') next.push(f);
    active = next;
    t += stepMs;
  }
  return { findings, tallies, steps };
}

/** Severity rank helper for reports. */
export { severityLevel };
