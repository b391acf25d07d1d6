/**
 * The live side of detection: the pure detectors of policy/detectors run against the FlowTable.
 *
 *  - connect time (admission step 8): quarantine, then `evaluateConnect` (proxyware, scanner and
 *    exfil tools, lineage) → block / would-block; `uploadBudgetFor` → the flow's exact byte budget;
 *  - every sweep (`detection.sampleIntervalMs`): `evaluateSweep` over live flows plus those closed
 *    or refused since the last sweep → alerts, and in enforce mode kills and quarantines (a flow
 *    refused at an address by policy counts as a failed attempt for `an0081.scan`);
 *  - baselines (first-seen destinations, hourly volumes) persisted atomically to `state.path`.
 *
 * Alerts for the same finding key are grouped: a repeat is raised again when its action or
 * severity changes, or once its last alert is an hour old (REPEAT_ALERT_MS; the quarantine period,
 * if shorter, for a block or kill, enforced or monitored).
 */
import { mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  budgetKillFinding,
  connectDecision,
  emptyObserveResult,
  evaluateConnect,
  evaluateSweep,
  isOverUploadBudget,
  nextUploadBudget,
  type ObserveResult,
  isRefusedByPolicy,
  observeOptions,
  outcomeOfEnded,
  outcomeOfRefusal,
  toAlert,
  uploadBudgetFor,
  uploadKillTrigger,
} from '../../policy/detectors/index.ts';
import { identityKeyOf } from '../../policy/detectors/match.ts';
import { DetectionState, baselineJsonProblem } from '../../policy/detectors/state.ts';
import type { Alert, Finding, FlowDestinationView, FlowOutcome, FlowView } from '../../policy/detectors/types.ts';
import type { ConnectFacts, Decision, MatchedRule, Mode, PolicySnapshot, ReasonCode, Verdict } from '../../policy/types.ts';
import type { AlertStore } from '../alerts/alert-store.ts';
import type { DetectionHooks, Logger, PolicySource } from '../context.ts';
import { type Flow, type FlowLeg, isRouted, type KnownDestination, type RoutedFlow } from '../flow/flow.ts';
import type { FlowTable } from '../flow/flow-table.ts';
import { type AgentSources, compileAgentSources, isAgentSource } from '../identity/agent-sources.ts';
import { AlertGroups } from './alert-groups.ts';
import type { LiveDetection } from './dry-run.ts';
import { identityKeyParts, Quarantine, quarantineDecision, type QuarantineEntry } from './quarantine.ts';
import { WouldActs } from './would-acts.ts';

export interface DetectionEngineOptions {
  flows: FlowTable;
  policy: PolicySource;
  alerts: AlertStore<Alert>;
  log: Logger;
  statePath: string | null;
  /** How often baselines are written to statePath. */
  persistEveryMs?: number;
}

/** One live quarantine as the admin API lists it (GET /v1/quarantines). */
export interface QuarantineView extends QuarantineEntry {
  /** The identity key, `host|user|process`, and its parts (`-`, not known, as null). */
  readonly key: string;
  readonly host: string;
  readonly user: string | null;
  readonly process: string | null;
  /** false: monitor mode's record of a quarantine enforce mode would have opened (it refuses nothing). */
  readonly isEnforced: boolean;
}

export interface DetectionEngine extends DetectionHooks {
  readonly state: DetectionState;
  /** Identity keys quarantined (until, since, cause), expired entries not yet pruned included. */
  readonly quarantine: ReadonlyMap<string, QuarantineEntry>;
  /** The live quarantines at `now`: enforced ones, then monitor mode's would-be ones, each sorted by key. */
  quarantines(now: number): QuarantineView[];
  /**
   * Release the identity `key` now: its quarantine and monitor mode's would-be one. What was live
   * (empty: none). Its alert groups are forgotten, so a finding that quarantines it again alerts.
   */
  release(key: string, now: number): QuarantineView[];
  /**
   * The quarantine and detector state, read without changing anything (the policy dry run,
   * gateway/detection/dry-run.ts).
   */
  readOnly(): LiveDetection;
  /** Duration of the last sweep in ms. */
  lastSweepMs: number;
  /** Persist baselines and detach from the flow table. */
  close(): Promise<void>;
}

/**
 * A live flow from a host that runs an agent (an `identity.agents[].sources` address) but that no
 * agent attributed within this time is marked `unattributed`: something on that host hides from the
 * agent, or talks around it (agents report every second by default).
 */
const AGENT_GRACE_MS = 10_000;

/**
 * A finding already alerted with the same action and severity is alerted again once this long has
 * passed: research §3 "Suppression" (after an identity alerts for a scan, its repeats are
 * suppressed for 1 h, bro-simple-scan's `known_scanners`). An enforced block or kill quarantines
 * the identity: when the quarantine is shorter, the repeat is alerted once it has run, so a new
 * quarantine never comes without its alert.
 */
const REPEAT_ALERT_MS = 3_600_000;

const agentSourceCache = new WeakMap<PolicySnapshot, AgentSources | null>();

/**
 * The addresses agents speak for, per policy snapshot (null when no agent is configured), each
 * family in a list of its own as the report check keeps them (identity/agent-sources.ts).
 */
function agentSourcesOf(snapshot: PolicySnapshot): AgentSources | null {
  let list = agentSourceCache.get(snapshot);
  if (list !== undefined) return list;
  const agents = snapshot.config.identity.agents;
  list = agents.length === 0 ? null : compileAgentSources(agents.flatMap((a) => a.sources));
  agentSourceCache.set(snapshot, list);
  return list;
}

function facts(flow: RoutedFlow): ConnectFacts {
  return {
    protocol: flow.protocol,
    clientIp: flow.client.ip,
    clientPort: flow.client.port,
    identity: flow.identity,
    destHost: flow.destination.host,
    destPort: flow.destination.port,
    destIp: flow.destination.ip,
  };
}

function view(flow: RoutedFlow, outcome: FlowOutcome): FlowView {
  return {
    id: flow.id,
    protocol: flow.protocol,
    clientIp: flow.client.ip,
    identity: flow.identity,
    destination: flow.destination,
    startedAtMs: flow.startedAt,
    endedAtMs: flow.endedAt,
    lastActivityAtMs: flow.lastActivityAt,
    bytesOut: flow.bytesOut,
    bytesIn: flow.bytesIn,
    outcome,
  };
}

/**
 * One destination of a flow that relays to several (a SOCKS5 UDP association): judged on its own
 * bytes, from when it was first relayed to, as a flow to it alone would be; findings name the flow.
 */
function legView(flow: RoutedFlow, leg: FlowLeg, outcome: FlowOutcome): FlowView {
  return {
    id: flow.id,
    partKey: leg.key,
    protocol: flow.protocol,
    clientIp: flow.client.ip,
    identity: flow.identity,
    destination: leg.destination,
    startedAtMs: leg.startedAt,
    endedAtMs: flow.endedAt,
    lastActivityAtMs: flow.lastActivityAt,
    bytesOut: leg.bytesOut,
    bytesIn: leg.bytesIn,
    outcome,
  };
}

/**
 * The destinations of a flow that relays to several that moved bytes since the last sweep. An idle
 * one has nothing new for the windows (its counters are folded already) and is no session: looking
 * at every one of an association's 4,096 destinations each second let one client with a few idle
 * associations stretch each sweep from under 1 ms to over 100.
 */
function pushActiveLegs(views: FlowView[], flow: RoutedFlow, legs: readonly FlowLeg[]): void {
  for (const leg of legs) {
    if (leg.isRefusedByPolicy) continue;
    const bytes = leg.bytesOut + leg.bytesIn;
    if (bytes === leg.sweptBytes) continue;
    leg.sweptBytes = bytes;
    views.push(legView(flow, leg, 'open'));
  }
}

/**
 * The allow entry a detector's kill or would-kill of `flow` names: for a flow that relays to several
 * destinations (SOCKS5 UDP), the entry that admitted the destination the finding names, when it is
 * one of the flow's (a bulk upload to it, or the tunnel an0081.proxyjack names); else the flow's own
 * (its first destination's), as for a finding about no destination or about the identity's other
 * flows. Per kill, never per datagram: a scan of the flow's legs.
 */
function ruleFor(flow: Flow, destination: FlowDestinationView | null): MatchedRule | null {
  if (flow.legs === null || destination === null) return flow.matchedRule;
  for (const leg of flow.legs) {
    const d = leg.destination;
    if (d === destination || (d.port === destination.port && d.host === destination.host && d.ip === destination.ip)) return leg.matchedRule;
  }
  return flow.matchedRule;
}

/** Where a byte budget is kept: a flow's, or one destination's of a flow that relays to several. */
interface Budgeted {
  bytesIn: number;
  budgetOut: number;
}

/**
 * The baselines persisted at `path`, or null (no file, or one that cannot be restored: logged). A
 * file that was read but holds no baselines this build restores (cut short, not JSON, another
 * version's) is renamed aside (`<path>.unreadable-<ms>`) before the gateway starts fresh: the next
 * persist would otherwise replace it, and what it held would be gone without a trace.
 */
async function loadBaselines(path: string, config: PolicySnapshot['config'], now: number, log: Logger): Promise<DetectionState | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // A directory (or a path through a file) can never be saved to either: the gateway started and
    // warned `could not persist detection state … rename` at every save. A start error instead.
    if (code === 'EISDIR' || code === 'ENOTDIR') throw new Error(`state.path: ${(err as Error).message}`, { cause: err });
    if (code !== 'ENOENT') log.warn({ path, err: String(err) }, 'detection state unreadable; starting fresh');
    return null;
  }
  let json: unknown;
  let problem: string | null;
  try {
    json = JSON.parse(text);
    problem = baselineJsonProblem(json);
  } catch (err) {
    problem = String(err);
  }
  if (problem === null) {
    const limits = { maxTrackedIdentities: config.detection.maxTrackedIdentities, maxTrackedDestinations: config.detection.maxTrackedDestinations };
    return DetectionState.fromJSON(json, { ...limits, now });
  }
  const movedTo = `${path}.unreadable-${now}`;
  try {
    await rename(path, movedTo);
    log.warn({ path, movedTo, err: problem }, 'detection state unreadable; kept aside, starting fresh');
  } catch (err) {
    log.warn({ path, err: problem, renameErr: String(err) }, 'detection state unreadable and could not be kept aside; starting fresh, the next persist replaces it');
  }
  return null;
}

/** Build the engine, load persisted baselines, and hang it off the flow table's sweep. */
export async function createDetectionEngine(opts: DetectionEngineOptions): Promise<DetectionEngine> {
  const { flows, policy, alerts, log } = opts;
  const config = policy.current().config;
  const now0 = flows.now();
  let state = DetectionState.forConfig(config, now0);
  if (opts.statePath) state = (await loadBaselines(opts.statePath, config, now0, log)) ?? state;
  const quarantine = new Quarantine();
  /**
   * Monitor mode's record of the quarantines enforce mode would have opened (a would-block or
   * would-kill): the identity's next connections are recorded would-block `quarantine`, as enforce
   * mode refuses them, and let through. Never read in enforce mode: nothing was refused.
   */
  const wouldQuarantine = new Quarantine();
  const groups = new AlertGroups();
  /** Live flows a monitored sweep finding would have killed or blocked: acted on by its next one once enforced. */
  const wouldActs = new WouldActs();
  /** Flows that ended (or never connected) since the last sweep: the sweep sees them once. */
  let ended: FlowView[] = [];
  /**
   * Each ended flow is folded into the detector state when it ends, not in the next sweep: the work
   * (a few µs per flow) is spread over the second instead of stalling every connection during the
   * sweep (~40 ms at 12,000 flows/s). What the folding changed waits here for the sweep to evaluate.
   */
  let folded: ObserveResult = emptyObserveResult();
  let alertSeq = 0;

  /**
   * The mode a finding about `identity` acts in: the one current when it fires, for the roles the
   * running policy gives its user and host (identity-resolver step 9), as a new flow of the same
   * identity would get. A live flow's roles are those it was admitted with: a reload moving its user
   * into a role in enforce mode (or out of it) applies to its later findings too. Called per finding,
   * never per chunk.
   */
  const modeOf = (identity: { readonly user: string | null; readonly host: string | null }): Mode => {
    const snapshot = policy.current();
    return snapshot.modeFor(snapshot.rolesFor(identity.user, identity.host), policy.modeOverride());
  };
  // What the would-killed flows are reviewed with before each sweep (would-acts.ts).
  const isEnforcedNow = (flow: Flow): boolean => modeOf(flow.identity) === 'enforce';
  const handBack = (key: string, flowId: string): void => state.handBack(key, flowId);

  /** Alert `f` unless its group is quiet; the id of its alert: this one, or the group's last. */
  const raise = (f: Finding, mode: Mode, now: number): string | null => {
    const alert = toAlert(f, mode, `al-${now.toString(36)}-${(alertSeq++).toString(36)}`, now);
    const sig = `${alert.action}/${alert.severity}`;
    if (!groups.shouldRaise(f.key, sig, now, repeatAlertMs(alert), alert.id)) return groups.lastAlertId(f.key);
    alerts.add(alert);
    log.warn({ alert: alert.id, detector: alert.detector, action: alert.action, severity: alert.severity, flowIds: alert.flowIds }, 'alert');
    return alert.id;
  };

  /** Monitor mode: a live flow enforce mode would have refused or killed is recorded would-block. */
  const markWouldBlock = (flow: Flow, f: Finding, mode: Mode): void => {
    if (flow.state !== 'active' || flow.verdict !== 'allow') return;
    flows.redecide(flow, { verdict: 'would-block', reason: 'detector', detector: f.detector, mode, matchedRule: ruleFor(flow, f.destination), reasons: [...f.reasons] }, false);
  };

  /**
   * Enforce mode: a live flow a detector kills is recorded as blocked by it (verdict block, reason
   * detector), as a quarantine kill and a connect-time refusal are; its record said allow before,
   * with only the closeReason naming the detector.
   */
  const markKilled = (flow: Flow, f: Finding): void => {
    if (flow.state !== 'active') return;
    flows.redecide(flow, { verdict: 'block', reason: 'detector', detector: f.detector, mode: 'enforce', matchedRule: ruleFor(flow, f.destination), reasons: [...f.reasons] }, true);
  };

  // An enforced block or kill opens a quarantine, monitor's would-block or would-kill notes the one
  // enforce mode would have opened: in both modes a new quarantine comes with its alert.
  const repeatAlertMs = (alert: Alert): number => {
    if (alert.action === 'flag') return REPEAT_ALERT_MS;
    const quarantineMs = policy.current().config.detection.quarantineSec * 1000;
    return quarantineMs > 0 ? Math.min(REPEAT_ALERT_MS, quarantineMs) : REPEAT_ALERT_MS;
  };

  const quarantineKey = (flow: Flow): string => identityKeyOf(flow.identity, flow.client.ip);
  /**
   * A refusing finding of `detector` (its alert `alertId`) in `mode`: enforce quarantines the
   * identity, monitor notes that it would have.
   */
  const putInQuarantine = (key: string, now: number, mode: Mode, detector: string, alertId: string | null): void => {
    const untilMs = now + policy.current().config.detection.quarantineSec * 1000;
    (mode === 'enforce' ? quarantine : wouldQuarantine).put(key, untilMs, { atMs: now, detector, alertId });
  };
  const viewOf = (key: string, entry: QuarantineEntry, isEnforced: boolean): QuarantineView => ({ key, ...identityKeyParts(key), ...entry, isEnforced });

  /**
   * The refusal of a flow whose identity is quarantined now (quarantine.ts), or null; in monitor
   * mode also one enforce mode would have quarantined (would-block). `matchedRule`: the allow entry
   * the policy admitted the flow (or the destination judged) by, which the refusal keeps.
   */
  const quarantineOf = (flow: Flow, mode: Mode, now: number, matchedRule: MatchedRule | null): Decision | null => {
    const key = quarantineKey(flow);
    const until = quarantine.quarantinedUntil(key, now);
    if (until !== 0) return quarantineDecision(until, mode, matchedRule);
    if (mode === 'enforce') return null;
    const wouldUntil = wouldQuarantine.quarantinedUntil(key, now);
    return wouldUntil === 0 ? null : quarantineDecision(wouldUntil, mode, matchedRule, true);
  };

  const onClose = (flow: Flow): void => {
    admitted.delete(flow.id);
    wouldActs.forget(flow.id);
    // A SOCKS5 login refused before its request named no destination: nothing for fan-out, scans or first-seen.
    if (!isRouted(flow)) return;
    // A flow that never connected counts as a failed attempt for the scan detector only when the
    // destination failed the dial, or policy refused the address itself (deny-range, an IP literal
    // not allowlisted: an internal sweep is refused before any dial). Not when the gateway or the
    // client ended it first (drain, admin, no descriptor, a parent proxy down, the client leaving).
    // A flow monitor mode relayed would-block by policy is enforce mode's refusal of it, connected
    // or not, and the sweeps never saw it open: `outcomeOfEnded`, which the replay shares.
    try {
      // The flow table closes a flow once: it is folded here once, and the sweep skips ended flows.
      // A flow that relayed to several destinations is folded per destination, on each one's bytes.
      if (flow.legs !== null) {
        for (const leg of flow.legs) if (!leg.isRefusedByPolicy) foldEnded(legView(flow, leg, 'closed'));
      } else {
        foldEnded(view(flow, outcomeOfEnded(flow, flow.isConnected)));
      }
    } catch (err) {
      log.error({ err: String(err) }, 'detector state update failed');
    }
  };
  const foldEnded = (v: FlowView): void => {
    ended.push(v);
    state.observeEnded(v, flows.now(), observeOptions(policy.current()), folded);
  };
  flows.on('close', onClose);

  // SPEC §7: an agent report that arrives after the flow started re-evaluates it. Connect-time
  // detectors (proxyware, scanner and exfil tools, lineage) see the process now; in enforce mode a
  // refusing finding kills the live flow and quarantines the identity.
  // Otherwise only flows past admission's detection step: local attribution emits 'attributed'
  // mid-admission, before the policy decision, and onConnect is about to judge that same process
  // itself (acting here closed the flow as verdict 'allow' and answered the client 'quarantine').
  // A Set, not a WeakSet: entries go at close, and weak collections cost every garbage collection.
  // Of ids, not flows: a long-lived Set's discarded tables would keep flows alive (live-flows.ts).
  const admitted = new Set<string>();
  const onAttributed = (flow: Flow): void => {
    if (flow.state !== 'active' || !isRouted(flow)) return;
    const mode = modeOf(flow.identity);
    // A flow whose name admission is looking up: in enforce mode a refusal it would meet at
    // admission's step 8 (quarantine, a connect-time detector) kills it now, as during its dial, so
    // its client is answered at once, not when the lookup ends (a name whose servers do not answer
    // held it for `resolver.timeoutMs`). Flags, and monitor mode's would-block, are left to step 8,
    // which judges the process on the flow's address (and raises them once).
    const isLookingUp = !admitted.has(flow.id);
    if (isLookingUp && (!flow.isLookingUp || mode !== 'enforce')) return;
    const snapshot = policy.current();
    const now = flows.now();
    // Quarantine first, as at admission: a new connection's process is unknown until its agent
    // reports it, so admission could not tell a quarantined process from its host's others.
    const quarantined = quarantineOf(flow, mode, now, flow.matchedRule);
    if (quarantined) {
      // A verdict after admission, as a detector's: the admission's stays the one /metrics counts.
      if (mode === 'enforce') {
        flows.redecide(flow, quarantined, true);
        flows.kill(flow.id, 'quarantine');
      } else if (flow.verdict === 'allow') {
        flows.redecide(flow, quarantined, false);
      }
      return;
    }
    const found = evaluateConnect(facts(flow), state, snapshot, now, flow.id);
    let refusing: Finding | null = null;
    let refusingAlertId: string | null = null;
    for (const f of found) {
      const isRefusing = f.action !== 'flag';
      const alertId = !isLookingUp || isRefusing ? raise(f, mode, now) : null;
      if (isRefusing && !refusing) {
        refusing = f;
        refusingAlertId = alertId;
      }
    }
    if (!refusing) {
      if (!isLookingUp) lowerBudgetFor(flow, snapshot, now);
      return;
    }
    putInQuarantine(quarantineKey(flow), now, mode, refusing.detector, refusingAlertId);
    if (mode === 'enforce') {
      markKilled(flow, refusing);
      flows.kill(flow.id, refusing.detector);
    } else {
      markWouldBlock(flow, refusing, mode);
    }
  };
  flows.on('attributed', onAttributed);

  /**
   * Quarantine, then the connect-time detectors, for a new flow or one more destination of an open
   * one (`f` names it; `matchedRule` is the allow entry the policy admitted it by, which a refusal
   * keeps). A refusing finding quarantines the identity in enforce mode.
   */
  const judgeConnect = (flow: Flow, f: ConnectFacts, snapshot: PolicySnapshot, mode: Mode, matchedRule: MatchedRule | null): Decision | null => {
    const now = flows.now();
    const quarantined = quarantineOf(flow, mode, now, matchedRule);
    if (quarantined) return quarantined;
    const found = evaluateConnect(f, state, snapshot, now, flow.id);
    // The refusing finding is the first one not a flag, as connectDecision takes it.
    let refusing: Finding | null = null;
    let refusingAlertId: string | null = null;
    for (const x of found) {
      const alertId = raise(x, mode, now);
      if (refusing === null && x.action !== 'flag') {
        refusing = x;
        refusingAlertId = alertId;
      }
    }
    const d = connectDecision(found, mode, matchedRule);
    if (d !== null && refusing !== null) putInQuarantine(quarantineKey(flow), now, mode, refusing.detector, refusingAlertId);
    return d;
  };

  /**
   * The bulk-upload byte budget towards `destination` (what `connect` names), kept on `target`: the
   * flow's own, or one destination's of a flow that relays to several (its bytes alone). `key` is
   * the sweep's for the same view, so one budget kill is one alert. Sets `target.onBudget`; null =
   * no budget.
   */
  const budgetFor = (
    flow: RoutedFlow,
    connect: ConnectFacts,
    destination: KnownDestination,
    key: string,
    target: Budgeted & { onBudget: ((t: never) => boolean) | null },
    snapshot: PolicySnapshot,
  ): number | null => {
    // `corroborate: true` without corroboration yet: the budget is kept all the same, and asked
    // again when reached (a second detector or a modifier may have come since the connect).
    const budget = uploadKillTrigger(connect, snapshot, flows.now(), state);
    if (budget === null) return null;
    let isCorroborated = uploadBudgetFor(connect, snapshot, flows.now(), state) !== null;
    target.onBudget = (): boolean => {
      const snap = policy.current();
      // Called exactly at target.budgetOut (the HTTP path's own counter may lag a chunk behind): the
      // configured budget first, then each point the budget moved to.
      const at = target.budgetOut;
      if (!isOverUploadBudget(at, target.bytesIn, budget, snap)) {
        // Not an upload yet (out:in short): the budget moves to where the rule could hold next.
        target.budgetOut = nextUploadBudget(at, target.bytesIn, budget, snap);
        return false;
      }
      if (!isCorroborated) {
        isCorroborated = uploadBudgetFor({ ...connect, identity: flow.identity }, snap, flows.now(), state) !== null;
        if (!isCorroborated) {
          // Alone it only flags (the sweep does); a corroboration after this is the sweep's to act on.
          target.budgetOut = Number.POSITIVE_INFINITY;
          return false;
        }
      }
      const mode = modeOf(flow.identity);
      const now = flows.now();
      // Scored and grouped as the sweep scores the same flow: the sweep that sees it over the
      // threshold next (killed, as it is folded; monitored, as it runs on) does not alert it again.
      const reason =
        at === budget
          ? `upload reached the ${budget}-byte budget to ${destination.host}`
          : `upload reached ${at} bytes to ${destination.host} at out:in ${(at / Math.max(target.bytesIn, 1)).toFixed(1)} (budget ${budget} bytes)`;
      // One destination of a flow that relays to several is its own view (`partKey`), as in the sweep.
      const atBudget: FlowView = { ...view(flow, 'open'), ...(key === flow.id ? {} : { partKey: key }), destination, bytesOut: at, bytesIn: target.bytesIn };
      const finding = budgetKillFinding(atBudget, budget, reason, state, snap, now);
      const alertId = raise(finding, mode, now);
      if (mode !== 'enforce') {
        // Monitor: would-kill is recorded once (alert and flow record); the flow runs on without a budget.
        putInQuarantine(quarantineKey(flow), now, mode, finding.detector, alertId);
        markWouldBlock(flow, finding, mode);
        // Grouped with the sweep's finding (budgetKillFinding): handed back to it should a change
        // put the flow's identity in enforce mode, as a sweep's would-kill is (would-acts.ts).
        wouldActs.note(flow.id, finding.key, policy);
        target.budgetOut = Number.POSITIVE_INFINITY;
        return false;
      }
      putInQuarantine(quarantineKey(flow), now, mode, finding.detector, alertId);
      markKilled(flow, finding);
      return true;
    };
    return budget;
  };

  /**
   * An agent named a live flow's process: the an0080.bulk-upload budget is judged again for it, as
   * admission would have judged it had the report come first (an exfil tool or an unusual lineage
   * is an untrusted uploader, its budget `storageBytesOut`). Only lowered: one the flow already
   * passed stands at what it sent, so its next chunk meets it (the record and the alert say what
   * went). Not for a flow that relays to several destinations: each destination's budget is its own.
   * Once per report, never per chunk.
   */
  const lowerBudgetFor = (flow: RoutedFlow, snapshot: PolicySnapshot, now: number): void => {
    if (flow.legs !== null) return;
    const trigger = uploadKillTrigger(facts(flow), snapshot, now, state);
    if (trigger === null || trigger >= flow.budgetOut) return;
    const budget = budgetFor(flow, facts(flow), flow.destination, flow.id, flow, snapshot);
    if (budget !== null) flow.budgetOut = Math.max(budget, flow.bytesOut);
  };

  const engine: DetectionEngine = {
    state,
    quarantine: quarantine.entries,
    lastSweepMs: 0,

    quarantines(now: number): QuarantineView[] {
      const byKey = (a: [string, QuarantineEntry], b: [string, QuarantineEntry]): number => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
      return [
        ...quarantine.live(now).sort(byKey).map(([key, entry]) => viewOf(key, entry, true)),
        ...wouldQuarantine.live(now).sort(byKey).map(([key, entry]) => viewOf(key, entry, false)),
      ];
    },

    release(key: string, now: number): QuarantineView[] {
      const released: QuarantineView[] = [];
      const enforced = quarantine.release(key, now);
      if (enforced) released.push(viewOf(key, enforced, true));
      const would = wouldQuarantine.release(key, now);
      if (would) released.push(viewOf(key, would, false));
      if (released.length > 0) groups.forgetIdentity(key);
      return released;
    },

    onConnect(flow: RoutedFlow, snapshot: PolicySnapshot, mode: Mode): Decision | null {
      const d = judgeConnect(flow, facts(flow), snapshot, mode, flow.matchedRule);
      if (d === null || (mode !== 'enforce' && d.reason !== 'quarantine')) admitted.add(flow.id);
      return d;
    },

    onDestination(flow: RoutedFlow, destination: KnownDestination, snapshot: PolicySnapshot, mode: Mode, matchedRule: MatchedRule | null): Decision | null {
      // Counted towards fan-out and judged on its bytes once relayed to (onRelayed).
      return judgeConnect(flow, { ...facts(flow), destHost: destination.host, destPort: destination.port, destIp: destination.ip }, snapshot, mode, matchedRule);
    },

    onRelayed(flow: RoutedFlow, leg: FlowLeg, snapshot: PolicySnapshot, destination: KnownDestination, judged: { readonly verdict: Verdict; readonly reason: ReasonCode | null }): void {
      // Monitor mode's would-block by policy: enforce mode refuses this destination before any
      // datagram, its refused record folded once as it closes (`outcomeOfRefusal`: an IP literal a
      // failed attempt at that address, a name nothing). Counted as that here, never as relayed to:
      // no fan-out, no budget, its leg not swept nor folded at the association's end.
      if (isRefusedByPolicy(judged)) {
        if (leg.destination === destination) leg.isRefusedByPolicy = true;
        const now = flows.now();
        foldEnded({
          ...view(flow, outcomeOfRefusal(judged.reason, destination)),
          partKey: `${leg.key} refused ${destination.host} ${destination.port}`,
          destination,
          startedAtMs: now,
          endedAtMs: now,
          lastActivityAtMs: now,
          bytesOut: 0,
          bytesIn: 0,
        });
        return;
      }
      // It counts towards the identity's fan-out and domains like a new flow, and its bytes are
      // judged apart from the other destinations' (each sweep, and at its own byte budget). A shared
      // leg (the gateway's bound on legs) already has its tracking and budget: fan-out only.
      if (leg.destination !== destination) {
        state.observeDestination({ ...view(flow, 'open'), destination, startedAtMs: flows.now() }, folded);
        return;
      }
      state.observeDestination(legView(flow, leg, 'open'), folded);
      const { host, ip, port } = leg.destination;
      const budget = budgetFor(flow, { ...facts(flow), destHost: host, destPort: port, destIp: ip }, leg.destination, leg.key, leg, snapshot);
      if (budget !== null) leg.budgetOut = budget;
    },

    uploadBudget(flow: RoutedFlow, snapshot: PolicySnapshot): number | null {
      return budgetFor(flow, facts(flow), flow.destination, flow.id, flow, snapshot);
    },

    onEnforcedWhileDialled(flow: RoutedFlow, f: ConnectFacts, snapshot: PolicySnapshot, matchedRule: MatchedRule | null): Decision | null {
      // As judgeConnect would have judged it at admission in enforce mode: monitor mode's would-be
      // quarantine is not read, and a would-be one may have hidden a detector's refusal. The refusal
      // names the entry the running policy admits it by, not the one admission found (a reload may
      // have moved or replaced it).
      return judgeConnect(flow, f, snapshot, 'enforce', matchedRule);
    },

    readOnly(): LiveDetection {
      return {
        quarantinedUntil: (key, now) => quarantine.peekUntil(key, now),
        wouldQuarantinedUntil: (key, now) => wouldQuarantine.peekUntil(key, now),
        state: state.readOnly(),
      };
    },

    onConnectFailed(): void {
      // The 'close' listener records every flow that never connected; nothing more to do here.
    },

    async close(): Promise<void> {
      flows.removeListener('close', onClose);
      flows.removeListener('attributed', onAttributed);
      flows.removeListener('sweep', onSweep);
      await persist();
    },
  };

  function onSweep(now: number, active: ReadonlyMap<string, Flow>): void {
    const t0 = performance.now();
    const views: FlowView[] = ended;
    ended = [];
    const changedSinceLastSweep = folded;
    folded = emptyObserveResult();
    const agents = agentSourcesOf(policy.current());
    for (const flow of active.values()) {
      if (!flow.isConnected || !isRouted(flow)) continue;
      // Monitor mode's would-block by policy: enforce mode refused it, its detectors never see it open.
      if (flow.legs === null && isRefusedByPolicy(flow)) continue;
      if (flow.legs === null) views.push(view(flow, 'open'));
      else pushActiveLegs(views, flow, flow.legs);
      if (agents && !flow.identity.process && !flow.isUnattributed && now - flow.startedAt >= AGENT_GRACE_MS) {
        const ip = flow.client.ip.startsWith('::ffff:') ? flow.client.ip.slice(7) : flow.client.ip;
        if (isAgentSource(agents, ip)) {
          flow.isUnattributed = true;
          log.warn({ flowId: flow.id, client: flow.client.ip }, 'flow from a host with an agent was never attributed');
        }
      }
    }
    // A change since the last sweep that put a would-killed flow's identity in enforce mode: this
    // sweep's finding about it is not held back as a repeat (would-acts.ts).
    wouldActs.review(policy, active, isEnforcedNow, handBack);
    let found: Finding[];
    try {
      found = evaluateSweep(views, state, policy.current(), now, changedSinceLastSweep);
    } catch (err) {
      log.error({ err: String(err) }, 'detector sweep failed');
      return;
    }
    for (const f of found) {
      const mode = modeOf(f.identity);
      const alertId = raise(f, mode, now);
      if (f.action === 'flag') continue;
      putInQuarantine(f.identity.key, now, mode, f.detector, alertId);
      if (mode !== 'enforce') {
        for (const id of f.flowIds) {
          const flow = active.get(id);
          if (!flow) continue;
          // would-kill: the flows enforce mode would have killed say so in their records.
          if (f.action === 'kill') markWouldBlock(flow, f, mode);
          // Acted on in enforce mode by the finding's next sweep, should a change put them there.
          wouldActs.note(id, f.key, policy);
        }
        continue;
      }
      if (f.action === 'kill') {
        for (const id of f.flowIds) {
          const flow = active.get(id);
          if (flow) markKilled(flow, f);
          flows.kill(id, f.detector);
        }
      }
    }
    engine.lastSweepMs = performance.now() - t0;
    if (opts.statePath && now - lastPersist >= (opts.persistEveryMs ?? 60_000)) {
      lastPersist = now;
      void persist();
    }
  }
  let lastPersist = now0;
  flows.on('sweep', onSweep);

  // Saves run one at a time: they share one temp file. A save asked for while one runs is queued
  // once (further asks join it) and serialises the state when it starts, so it writes the newest.
  let writing: Promise<void> | null = null;
  let queued: Promise<void> | null = null;
  function persist(): Promise<void> {
    const path = opts.statePath;
    if (!path) return Promise.resolve();
    if (queued) return queued;
    if (!writing) return startWrite(path);
    const next = writing.then(() => {
      queued = null;
      return startWrite(path);
    });
    queued = next;
    return next;
  }
  function startWrite(path: string): Promise<void> {
    const done = writeState(path).finally(() => {
      writing = null;
    });
    writing = done;
    return done;
  }
  async function writeState(path: string): Promise<void> {
    // Atomic: a crash mid-write leaves the previous file intact.
    const tmp = `${path}.${process.pid}.tmp`;
    try {
      await mkdir(dirname(path), { recursive: true });
      await writeFile(tmp, JSON.stringify(state.toJSON()));
      await rename(tmp, path);
    } catch (err) {
      log.warn({ path, err: String(err) }, 'could not persist detection state');
      // A save that failed after writing its temp file (the rename refused: state.path a directory,
      // another file system) leaves none behind beside state.path.
      await unlink(tmp).catch(() => undefined);
    }
  }

  return engine;
}
