/**
 * Upload detectors (research D5, D6) and the byte budget the data plane enforces.
 *
 * - `an0080.bulk-upload` (D5): one flow with bytesOut ≥ `bytesOut` (50 MiB) and out:in ≥ `minRatio`
 *   to a non-approved destination; the trigger drops to `storageBytesOut` (10 MiB) for file-sharing
 *   / storage hosts and for untrusted uploaders (exfil tool or unusual lineage, D5b — which is
 *   its own corroboration).
 * - `an0080.split-upload` (D6a): Σ bytesOut per identity and destination domain over `windowSec`
 *   ≥ `bytesOut` with Σout:Σin ≥ `minRatio`; and per identity over 24 h to non-approved
 *   destinations ≥ `dayBytesOut`.
 */
import type { ConnectFacts, Identity, PolicySnapshot } from '../types.ts';
import { type DetectionContext, detectionContext } from './context.ts';
import { fmtBytes, identityKeyOf, processNames, registrableDomain, viewKey } from './match.ts';
import { lineageReason } from './process-signals.ts';
import { modifiersFor, score } from './scoring.ts';
import type { SweepSignal } from './signal.ts';
import { type DetectionState, identityUploadersSince, uploadersSince } from './state.ts';
import type { BehaviourDetector, Finding, FlowDestinationView, FlowView } from './types.ts';

const GiB = 1024 * 1024 * 1024;

interface UploadRule {
  readonly trigger: number;
  readonly minRatio: number;
  readonly untrusted: string | null;
  readonly storage: string | null;
}

/** The bulk-upload rule for this identity and destination, or null when it does not apply. */
function uploadRule(
  identity: Identity,
  destHost: string,
  idKey: string,
  state: DetectionState | null,
  ctx: DetectionContext,
  now: number,
  clientIp?: string,
): UploadRule | null {
  if (ctx.isApprovedDestination(destHost)) return null;
  if (ctx.isSkipped('an0080.bulk-upload', identity, destHost, clientIp)) return null;
  const s = ctx.settings('an0080.bulk-upload');
  const p = identity.process;
  const recent = state ? state.recentDetectors(idKey, now) : [];
  let untrusted: string | null = null;
  if (p && processNames(p).some((n) => ctx.exfilTools.has(n) || ctx.tunnelTools.has(n))) untrusted = 'exfil tool';
  else if (p && lineageReason(p)) untrusted = `unusual lineage ${lineageReason(p)}`;
  else if (recent.includes('an0080.exfil-tool') || recent.includes('an0080.lineage')) untrusted = 'identity flagged by exfil-tool / lineage';
  const storage = ctx.storageDomains.match(destHost);
  const trigger = untrusted || storage ? (s.n['storageBytesOut'] ?? 10_485_760) : (s.n['bytesOut'] ?? 52_428_800);
  return { trigger, minRatio: s.n['minRatio'] ?? 10, untrusted, storage };
}

const UNTRUSTED_FIRED: readonly BehaviourDetector[] = ['an0080.exfil-tool'];

/** bulk-upload signal for one flow, or null. */
export function bulkUploadSignal(f: FlowView, idKey: string, state: DetectionState, ctx: DetectionContext, now: number): SweepSignal | null {
  const s = ctx.settings('an0080.bulk-upload');
  // Cheap pre-check: below the smallest trigger nothing can fire.
  if (f.bytesOut < Math.min(s.n['storageBytesOut'] ?? 10_485_760, s.n['bytesOut'] ?? 52_428_800)) return null;
  const rule = uploadRule(f.identity, f.destination.host, idKey, state, ctx, now, f.clientIp);
  if (!rule) return null;
  const ratio = f.bytesOut / Math.max(f.bytesIn, 1);
  if (f.bytesOut < rule.trigger || ratio < rule.minRatio) return null;
  const why = [`flow sent ${fmtBytes(f.bytesOut)} (≥ ${fmtBytes(rule.trigger)}) at out:in ${ratio.toFixed(1)} (≥ ${rule.minRatio})`];
  if (rule.storage) why.push(`to file-sharing / storage host (${rule.storage})`);
  if (rule.untrusted) why.push(`untrusted uploader: ${rule.untrusted}`);
  return {
    detector: 'an0080.bulk-upload',
    analytic: 'AN0080',
    idKey,
    identity: f.identity,
    clientIp: f.clientIp,
    baseLevel: f.bytesOut >= GiB ? 2 : 1,
    gate: 'config',
    alsoFired: rule.untrusted ? UNTRUSTED_FIRED : [],
    destination: f.destination,
    flowIds: [f.id],
    evidence: { bytesOut: f.bytesOut, bytesIn: f.bytesIn, thresholdBytesOut: rule.trigger, ratio: Number(ratio.toFixed(2)), minRatio: rule.minRatio },
    reason: why.join('; '),
    key: `an0080.bulk-upload|${viewKey(f)}`,
  };
}

/** split-upload signal for one identity and destination domain, or null. */
export function splitUploadSignal(
  idKey: string,
  domain: string,
  sample: FlowView,
  state: DetectionState,
  ctx: DetectionContext,
  now: number,
): SweepSignal | null {
  const w = state.windows(idKey);
  const d = w?.perDest.get(domain);
  if (!w || !d) return null;
  if (ctx.isSkipped('an0080.split-upload', sample.identity, sample.destination.host, sample.clientIp)) return null;
  const s = ctx.settings('an0080.split-upload');
  const windowSec = s.n['windowSec'] ?? 3600;
  const since = now - windowSec * 1000;
  const out = d.out.sumSince(since);
  const inn = d.in.sumSince(since);
  const ratio = out / Math.max(inn, 1);
  const min = s.n['bytesOut'] ?? 52_428_800;
  const minRatio = s.n['minRatio'] ?? 5;
  if (out < min || ratio < minRatio) return null;
  // One big flow is bulk-upload's case; split-upload is about the same volume over several flows.
  const flowsInWindow = d.uploads.sumSince(since);
  if (flowsInWindow < 2) return null;
  return {
    detector: 'an0080.split-upload',
    analytic: 'AN0080',
    idKey,
    identity: sample.identity,
    clientIp: sample.clientIp,
    baseLevel: 1,
    gate: 'config',
    destination: sample.destination,
    // Every flow whose bytes are in the window, not only those of this sweep.
    flowIds: uploadersSince(d, since),
    evidence: { windowSec, bytesOut: out, bytesIn: inn, thresholdBytesOut: min, ratio: Number(ratio.toFixed(2)), minRatio, domain, flows: flowsInWindow },
    reason: `${fmtBytes(out)} sent to ${domain} over ${windowSec} s (≥ ${fmtBytes(min)}) at out:in ${ratio.toFixed(1)}`,
    key: `an0080.split-upload|${idKey}|${domain}`,
  };
}

/** The 24 h per-identity upload total to non-approved destinations (D6a second rule), or null. */
export function dailyUploadSignal(idKey: string, sample: FlowView, state: DetectionState, ctx: DetectionContext, now: number): SweepSignal | null {
  const w = state.windows(idKey);
  if (!w) return null;
  if (ctx.isSkipped('an0080.split-upload', sample.identity, null, sample.clientIp)) return null;
  const s = ctx.settings('an0080.split-upload');
  const min = s.n['dayBytesOut'] ?? 1024 * 1024 * 1024;
  const out = w.dayOutUnapproved.sumSince(now - 86_400_000);
  if (out < min) return null;
  return {
    detector: 'an0080.split-upload',
    analytic: 'AN0080',
    idKey,
    identity: sample.identity,
    clientIp: sample.clientIp,
    baseLevel: 1,
    gate: 'config',
    destination: null,
    flowIds: identityUploadersSince(w, now - 86_400_000),
    evidence: { windowSec: 86_400, bytesOut: out, thresholdBytesOut: min },
    reason: `${fmtBytes(out)} sent to non-approved destinations in 24 h (≥ ${fmtBytes(min)})`,
    key: `an0080.split-upload|${idKey}|24h`,
  };
}

/**
 * The byte budget of a new flow for `an0080.bulk-upload` with action kill: the data plane lets
 * exactly this many bytes reach the destination and then, if `isOverUploadBudget` holds, kills
 * the flow (monitor mode: records would-kill and lets it run). null = no budget: the detector is
 * off, excepted, approved, not `kill`, or its corroboration is missing at connect time (then the
 * sweep still flags it). `state` adds the rare / beacon / second-detector knowledge.
 */
export function uploadBudgetFor(
  facts: ConnectFacts,
  snapshot: Pick<PolicySnapshot, 'config'>,
  now: number,
  state: DetectionState | null = null,
): number | null {
  const ctx = detectionContext(snapshot);
  const s = ctx.settings('an0080.bulk-upload');
  if (!s.enabled || s.action !== 'kill') return null;
  const idKey = identityKeyOf(facts.identity, facts.clientIp);
  const rule = uploadRule(facts.identity, facts.destHost, idKey, state, ctx, now, facts.clientIp);
  if (!rule) return null;
  return isUploadKillCorroborated(facts, rule, s, idKey, ctx, now, state) ? rule.trigger : null;
}

/**
 * The bulk-upload kill budget before corroboration: what `uploadBudgetFor` gives once `corroborate`
 * is satisfied. The data plane keeps it from the connect and asks `uploadBudgetFor` again when the
 * budget is reached: a modifier or second detector that came meanwhile makes the kill stand there,
 * at the budget, not at the next sweep with everything sent since.
 */
export function uploadKillTrigger(facts: ConnectFacts, snapshot: Pick<PolicySnapshot, 'config'>, now: number, state: DetectionState | null = null): number | null {
  const ctx = detectionContext(snapshot);
  const s = ctx.settings('an0080.bulk-upload');
  if (!s.enabled || s.action !== 'kill') return null;
  const idKey = identityKeyOf(facts.identity, facts.clientIp);
  return uploadRule(facts.identity, facts.destHost, idKey, state, ctx, now, facts.clientIp)?.trigger ?? null;
}

function isUploadKillCorroborated(
  facts: ConnectFacts,
  rule: UploadRule,
  s: ReturnType<DetectionContext['settings']>,
  idKey: string,
  ctx: DetectionContext,
  now: number,
  state: DetectionState | null,
): boolean {
  // Without `corroborate`, or with an untrusted uploader (its own corroboration), kill stands.
  if (!s.corroborate || rule.untrusted) return true;
  if (!state) return false;
  const destination: FlowDestinationView = { host: facts.destHost, ip: facts.destIp, port: facts.destPort };
  const mods = modifiersFor({ identity: facts.identity, idKey, destination, now, state, ctx });
  const sc = score({
    detector: 'an0080.bulk-upload',
    baseLevel: 1,
    modifiers: mods,
    settings: s,
    otherDetectors: state.recentDetectors(idKey, now),
    gate: 'config',
    connectTime: false,
  });
  return sc.action === 'kill';
}

/** At the budget: does the flow's out:in ratio make it a bulk upload (kill), or let it run on? */
export function isOverUploadBudget(bytesOut: number, bytesIn: number, budget: number, snapshot: Pick<PolicySnapshot, 'config'>): boolean {
  const minRatio = detectionContext(snapshot).settings('an0080.bulk-upload').n['minRatio'] ?? 10;
  return bytesOut >= budget && bytesOut / Math.max(bytesIn, 1) >= minRatio;
}

/**
 * Where the budget moves when the ratio rule did not hold at `bytesOut`: the first point at which
 * it could, `bytesIn × minRatio` with the bytes received so far (never below the configured
 * `budget`, always past `bytesOut`). The data plane asks again there, so a flow that turns into an
 * upload is still cut at exactly the point the rule held, and one that keeps downloading keeps
 * moving it on.
 */
export function nextUploadBudget(bytesOut: number, bytesIn: number, budget: number, snapshot: Pick<PolicySnapshot, 'config'>): number {
  const minRatio = detectionContext(snapshot).settings('an0080.bulk-upload').n['minRatio'] ?? 10;
  const next = Math.max(budget, Math.ceil(Math.max(bytesIn, 1) * minRatio));
  return next > bytesOut ? next : Number.POSITIVE_INFINITY;
}

/**
 * The `an0080.bulk-upload` finding of a kill (monitor: would-kill) the data plane makes at a flow's
 * byte budget, `view` its bytes there: scored as the sweep scores the same flow (base level by
 * volume, modifiers), its action the configured kill (the caller judged corroboration), and noted in
 * the state's grouping and fired detectors as a sweep finding is. The sweep that next sees the flow
 * over its threshold (a killed flow as it is folded, a monitored one as it runs on) then groups its
 * finding with this one instead of alerting the same upload a second time, at another severity.
 */
export function budgetKillFinding(
  view: FlowView,
  budget: number,
  reason: string,
  state: DetectionState,
  snapshot: Pick<PolicySnapshot, 'config'>,
  now: number,
): Finding {
  const ctx = detectionContext(snapshot);
  const s = ctx.settings('an0080.bulk-upload');
  const idKey = identityKeyOf(view.identity, view.clientIp);
  const sc = score({
    detector: 'an0080.bulk-upload',
    baseLevel: view.bytesOut >= GiB ? 2 : 1,
    modifiers: modifiersFor({ identity: view.identity, idKey, destination: view.destination, now, state, ctx }),
    settings: { ...s, corroborate: false },
    otherDetectors: state.recentDetectors(idKey, now),
    gate: 'config',
    connectTime: false,
  });
  const finding: Finding = {
    detector: 'an0080.bulk-upload',
    analytic: 'AN0080',
    severity: sc.severity,
    action: 'kill',
    flowIds: [view.id],
    identity: { user: view.identity.user, host: view.identity.host, roles: view.identity.roles, process: view.identity.process, key: idKey },
    destination: view.destination,
    evidence: { bytesOut: view.bytesOut, bytesIn: view.bytesIn, thresholdBytesOut: budget },
    reasons: [reason, ...sc.reasons],
    key: `an0080.bulk-upload|${viewKey(view)}`,
  };
  state.shouldEmit(finding, sc.level, now);
  state.noteDetector(idKey, 'an0080.bulk-upload', now);
  return finding;
}

/** Registrable domain re-export for callers grouping flows by destination. */
export { registrableDomain };
