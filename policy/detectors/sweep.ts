/**
 * The periodic detector pass (SPEC §4; STYLE "detectors run on a periodic sweep").
 *
 * 1. Fold the flows (live ones, plus those closed since the last sweep) into the windows.
 * 2. Per flow: bulk-upload, sustained, long-session.
 * 3. Per identity that changed: scan (failed attempts, fan-out), proxyjack, daily upload total.
 * 4. Per identity + destination domain that got bytes: split-upload.
 * 5. Score every hit with its modifiers and the other detectors that fired for the identity,
 *    then group: a repeat with no escalation inside the grouping window is not returned again.
 *
 * Cost is O(flows passed + identities/destinations that changed), not O(all tracked state).
 */
import type { PolicySnapshot } from '../types.ts';
import { detectionContext } from './context.ts';
import { findingIdentity } from './connect.ts';
import { longSessionSignal, sustainedSignal } from './duration.ts';
import { proxyjackSignal, scanSignals } from './fanout.ts';
import { identityKeyOf, registrableDomain } from './match.ts';
import { modifiersFor, score } from './scoring.ts';
import type { SweepSignal } from './signal.ts';
import type { DetectionState, ObserveOptions, ObserveResult } from './state.ts';
import type { BehaviourDetector, Finding, FlowView } from './types.ts';
import { bulkUploadSignal, dailyUploadSignal, splitUploadSignal } from './upload.ts';

const observeOptionsCache = new WeakMap<object, ObserveOptions>();

/** The options `DetectionState.observe` takes, for a snapshot (built once per snapshot). */
export function observeOptions(snapshot: Pick<PolicySnapshot, 'config'>): ObserveOptions {
  let opts = observeOptionsCache.get(snapshot);
  if (opts === undefined) {
    const ctx = detectionContext(snapshot);
    const slowResetMs = (ctx.settings('an0081.scan').n['slowResetSec'] ?? 900) * 1000;
    opts = { slowResetMs, isApproved: (h) => ctx.isApprovedDestination(h) };
    observeOptionsCache.set(snapshot, opts);
  }
  return opts;
}

/** The flows of a sweep not folded yet: the live ones (ended flows were folded as they ended). */
function* unfolded(flows: readonly FlowView[]): Generator<FlowView> {
  for (const f of flows) if (f.endedAtMs === null) yield f;
}

/**
 * Runs the sweep detectors over `flows` at `now`. Updates `state` (windows, fired detectors,
 * grouping) and returns the findings to act on. `folded`: what folding flows into `state` since the
 * last sweep already changed (flows folded when they ended; they are still passed in `flows` for
 * their per-flow checks, and are not observed again).
 */
export function evaluateSweep(
  flows: readonly FlowView[],
  state: DetectionState,
  snapshot: Pick<PolicySnapshot, 'config'>,
  now: number,
  folded?: ObserveResult,
): Finding[] {
  const ctx = detectionContext(snapshot);
  // Flows folded when they ended are in `folded` already: only the others are observed here.
  const changed = folded ? state.observe(unfolded(flows), now, observeOptions(snapshot), folded) : state.observe(flows, now, observeOptions(snapshot));

  const byIdentity = new Map<string, FlowView[]>();
  const byDest = new Map<string, FlowView[]>();
  const signals: SweepSignal[] = [];
  for (const f of flows) {
    const idKey = identityKeyOf(f.identity, f.clientIp);
    const list = byIdentity.get(idKey);
    if (list) list.push(f);
    else byIdentity.set(idKey, [f]);
    if (f.outcome !== 'open' && f.outcome !== 'closed') continue;
    // The split-upload sample is a flow to a host that is not an approved upload destination (an
    // approved one's bytes are not in its domain's window): the alert names where the upload went.
    if (!ctx.isApprovedDestination(f.destination.host)) {
      const dk = `${idKey}\0${registrableDomain(f.destination.host)}`;
      const dl = byDest.get(dk);
      if (dl) dl.push(f);
      else byDest.set(dk, [f]);
    }
    const b = bulkUploadSignal(f, idKey, state, ctx, now);
    if (b) signals.push(b);
    const s = sustainedSignal(f, idKey, ctx, now);
    if (s) signals.push(s);
    const l = longSessionSignal(f, idKey, state, ctx, now);
    if (l) signals.push(l);
  }

  const touched = new Set([...changed.failed, ...changed.active]);
  for (const idKey of touched) {
    const list = byIdentity.get(idKey) ?? [];
    const w = state.windows(idKey);
    if (!w) continue;
    const who = { identity: w.identity, clientIp: w.clientIp };
    const changes = { hasNewFailures: changed.failed.has(idKey), hasNewDestinations: changed.started.has(idKey) };
    signals.push(...scanSignals(idKey, who, state, ctx, now, changes));
    if (changed.active.has(idKey)) {
      const pj = proxyjackSignal(idKey, who, list, state, ctx, now);
      if (pj) signals.push(pj);
      const sample = list[0];
      if (sample) {
        const day = dailyUploadSignal(idKey, sample, state, ctx, now);
        if (day) signals.push(day);
      }
    }
  }
  for (const dk of changed.dests) {
    const list = byDest.get(dk);
    if (!list || list.length === 0) continue;
    const [idKey, domain] = dk.split('\0') as [string, string];
    const sp = splitUploadSignal(idKey, domain, list[list.length - 1]!, state, ctx, now);
    if (sp) signals.push(sp);
  }
  if (signals.length === 0) return [];

  // Corroboration sees every detector that fired for the identity recently or in this sweep.
  const firedNow = new Map<string, BehaviourDetector[]>();
  for (const s of signals) {
    const l = firedNow.get(s.idKey);
    if (l) l.push(s.detector);
    else firedNow.set(s.idKey, [s.detector]);
  }
  const findings: Finding[] = [];
  for (const s of signals) {
    const mods = modifiersFor({ identity: s.identity, idKey: s.idKey, destination: s.destination, now, state, ctx, exclude: s.exclude ?? [] });
    const fired = [...state.recentDetectors(s.idKey, now), ...(firedNow.get(s.idKey) ?? []), ...(s.alsoFired ?? [])];
    const sc = score({
      detector: s.detector,
      baseLevel: s.baseLevel,
      modifiers: mods,
      settings: ctx.settings(s.detector),
      otherDetectors: fired,
      gate: s.gate,
      ...(s.minLevelForAction !== undefined ? { minLevelForAction: s.minLevelForAction } : {}),
      connectTime: false,
    });
    const finding: Finding = {
      detector: s.detector,
      analytic: s.analytic,
      severity: sc.severity,
      action: sc.action,
      flowIds: s.flowIds,
      identity: findingIdentity(s.identity, s.idKey),
      destination: s.destination,
      evidence: s.evidence,
      reasons: [s.reason, ...sc.reasons],
      key: s.key,
    };
    if (state.shouldEmit(finding, sc.level, now)) findings.push(finding);
  }
  for (const s of signals) state.noteDetector(s.idKey, s.detector, now);
  return findings;
}
