/**
 * Every Prometheus metric of the gateway, declared once (STYLE: Envoy names, kind suffixes).
 * Each GatewayStats owns its own Registry (never prom-client's global one), so tests and replay can
 * build several side by side. Label values come only from the closed sets below; anything else is
 * counted as "other" — hostnames and user names go to logs, never to labels.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { DETECTOR_NAMES, GATEWAY_REFUSAL_REASONS, type Protocol, type ReasonCode, type Verdict } from '../policy/types.ts';
import type { FlowTable } from './flow/flow-table.ts';
import type { Flow } from './flow/flow.ts';
import type { IdentityStats } from './identity/identity-resolver.ts';
import type { PendingReportStats } from './pending-reports.ts';
import { ERROR_REASONS } from './reject.ts';
import type { SourceLimitStats } from './listeners/source-limit.ts';
import type { UdpRelayStats } from './listeners/socks5-udp-ledger.ts';

export const LISTENER_LABELS = ['http', 'https', 'socks', 'admin'] as const;
export type ListenerLabel = (typeof LISTENER_LABELS)[number];
export const CONNECT_FAIL_TYPES = ['timeout', 'refused', 'unreachable', 'dns', 'reset', 'upstream-proxy', 'other'] as const;
export type ConnectFailType = (typeof CONNECT_FAIL_TYPES)[number];
export const VERDICT_LABELS = ['allow', 'block', 'would-block'] as const satisfies readonly Verdict[];
export const REASON_LABELS = [
  'allowed',
  'not-allowlisted',
  'deny-range',
  'rate-limit',
  'auth-required',
  'quarantine',
  'detector',
  ...GATEWAY_REFUSAL_REASONS,
] as const satisfies readonly ReasonCode[];
export const PROTOCOL_LABELS = ['http', 'connect', 'socks5', 'socks5-udp'] as const satisfies readonly Protocol[];
/**
 * A record's closeReason, as gw_flows_closed_total labels it: how flows end (tunnel, listeners, kills),
 * every refusal by policy, detector or quarantine, and every coded refusal or failure (reject.ts).
 */
export const CLOSE_REASON_LABELS: readonly string[] = [
  ...new Set([
    'closed',
    'client-reset',
    'upstream-reset',
    'idle-timeout',
    'admin',
    'shutdown',
    'killed',
    'refused-destinations',
    'relay-error',
    'udp-upstream-unsupported',
    ...REASON_LABELS.filter((r) => r !== 'allowed'),
    ...DETECTOR_NAMES,
    ...ERROR_REASONS,
  ]),
];
export const ALERT_ACTION_LABELS = ['flag', 'block', 'kill', 'would-block', 'would-kill'] as const;
export const RELOAD_RESULTS = ['success', 'failure'] as const;
export type ReloadResult = (typeof RELOAD_RESULTS)[number];

/** A counter whose value is a running total kept elsewhere, read at scrape time. */
function scrapedCounter(registers: Registry[], name: string, help: string, read: () => number): Counter {
  return new Counter({
    name,
    help,
    registers,
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

/** A gauge read at scrape time. */
function scrapedGauge(registers: Registry[], name: string, help: string, read: () => number): Gauge {
  return new Gauge({
    name,
    help,
    registers,
    collect() {
      this.set(read());
    },
  });
}

/** Add one to `outer` → `inner` in a two-level count (no key string built). */
function countIn(counts: Map<string, Map<string | null, number>>, outer: string, inner: string | null): void {
  let m = counts.get(outer);
  if (m === undefined) {
    m = new Map();
    counts.set(outer, m);
  }
  m.set(inner, (m.get(inner) ?? 0) + 1);
}

/**
 * Whether a live flow's verdict is the one its record will carry, but for a detector's (counted
 * before it, 'redecide'): not while admission has yet to judge it (its name being looked up, its
 * process attributed: reason still null), nor while it is being dialled (a reload or mode switch
 * meanwhile judges it again and may refuse it: admission.ts refuseDialsAfterChange), nor while a
 * SOCKS5 UDP association is allowed (a later destination the policy would block makes it
 * would-block, socks5-udp-admissions.ts admitLater).
 */
function isVerdictFinal(flow: Flow): boolean {
  if (flow.reason === null) return false;
  if (flow.dialling !== null && !flow.isConnected) return false;
  return !(flow.protocol === 'socks5-udp' && flow.verdict === 'allow');
}

/** A label value from a closed set, else "other". */
export function closedLabel(value: string | null | undefined, set: readonly string[]): string {
  return value && set.includes(value) ? value : 'other';
}

/** The admin listener's own counters (admin/), read at scrape time. Monotonic except `streamsActive`. */
export interface AdminListenerStats {
  /** Requests answered 401. */
  authFailuresTotal: number;
  /** Requests answered 429 unchecked: their source was locked out after repeated bad tokens. */
  authLockedOutTotal: number;
  /** Times a source was locked out. */
  authLockoutsTotal: number;
  /** Connections closed on arrival: admin.maxConnectionsPerSource open from that address. */
  connectionsRefusedTotal: number;
  /** Requests answered 421: a Host name the listener does not answer to. */
  hostRefusedTotal: number;
  /** Read-token policy validations answered 429: no place in the validation budget's queue. */
  validateRefusedTotal: number;
  /** SSE streams refused, by the limit reached. */
  streamsRefusedPerToken: number;
  streamsRefusedTotal: number;
  streamsActive: number;
}

const NO_ADMIN_STATS: AdminListenerStats = Object.freeze({
  authFailuresTotal: 0,
  authLockedOutTotal: 0,
  authLockoutsTotal: 0,
  connectionsRefusedTotal: 0,
  hostRefusedTotal: 0,
  validateRefusedTotal: 0,
  streamsRefusedPerToken: 0,
  streamsRefusedTotal: 0,
  streamsActive: 0,
});

export interface GatewayStatsOptions {
  /** Also export Node process metrics (event loop lag, heap, …) on this registry. */
  processMetrics?: boolean;
}

export class GatewayStats {
  readonly registry = new Registry();
  readonly downstreamCxTotal: Counter<'listener'>;
  readonly downstreamCxActive: Gauge<'listener'>;
  readonly upstreamCxConnectFailTotal: Counter<'type'>;
  readonly flowsActive: Gauge;
  readonly flowBytesTotal: Counter<'direction'>;
  readonly flowsClosedTotal: Counter<'protocol' | 'close_reason'>;
  readonly policyDecisionsTotal: Counter<'verdict' | 'reason'>;
  readonly detectorAlertsTotal: Counter<'detector' | 'action'>;
  readonly sweepDurationMs: Histogram;
  readonly configReloadTotal: Counter<'result'>;
  readonly flowLogFailing: Gauge;
  readonly flowRecordsHeld: Gauge;
  readonly flowRecordsDroppedTotal: Counter;
  readonly downstreamCxSourceLimitedTotal: Counter;
  private flowLogStatusFn: () => { failing: boolean; backlogRecords: number; droppedRecords: number } = () => ({ failing: false, backlogRecords: 0, droppedRecords: 0 });
  private activeFlowsFn: () => number = () => 0;
  private skippedRecordsFn: () => number = () => 0;
  private sourceLimitFn: () => SourceLimitStats = () => ({ refusedTotal: 0, sources: 0 });
  private adminFn: () => AdminListenerStats = () => NO_ADMIN_STATS;
  private socksUdpFn: () => UdpRelayStats = () => ({ heldBytes: 0, heldDroppedTotal: 0, repliesDroppedTotal: 0, otherUserDroppedTotal: 0, ownerUnlistedDroppedTotal: 0, ownerUnknownDroppedTotal: 0 });
  /**
   * Hot-path counts (every connection, every flow) are plain numbers, handed to prom-client only at
   * scrape time (`collect`): a prom-client inc() hashes and validates its label object each call.
   */
  private readonly cxTotal = new Map<string, number>();
  private readonly cxActive = new Map<string, number>();
  /** verdict → reason → count, raw values (mapped to closed label sets at scrape time). */
  private readonly decisions = new Map<string, Map<string | null, number>>();
  /** protocol → closeReason → flows closed, raw values (closed label sets at scrape time): one per record. */
  private readonly closedFlows = new Map<string, Map<string | null, number>>();
  private bytesOut = 0;
  private bytesIn = 0;
  /**
   * Bytes already counted per live flow that a sweep has seen, so the next sweep adds only the
   * delta, and whether its verdict is counted yet; dropped at close. A flow that closes before any
   * sweep saw it or a detector re-judged it never gets an entry.
   */
  private readonly counted = new Map<Flow, { out: number; in: number; isDecisionCounted: boolean }>();

  constructor(opts: GatewayStatsOptions = {}) {
    const registers = [this.registry];
    const stats = this;
    // Every closed label value exists from the start, so dashboards see each series at 0.
    for (const l of LISTENER_LABELS) {
      this.cxTotal.set(l, 0);
      this.cxActive.set(l, 0);
    }
    this.downstreamCxTotal = new Counter({
      name: 'gw_downstream_cx_total',
      help: 'Downstream (client) connections accepted, by listener',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const [listener, n] of stats.cxTotal) this.inc({ listener }, n);
      },
    });
    this.downstreamCxActive = new Gauge({
      name: 'gw_downstream_cx_active',
      help: 'Downstream (client) connections open now, by listener',
      labelNames: ['listener'],
      registers,
      collect() {
        for (const [listener, n] of stats.cxActive) this.set({ listener }, n);
      },
    });
    this.upstreamCxConnectFailTotal = new Counter({
      name: 'gw_upstream_cx_connect_fail_total',
      help: 'Upstream dials that failed, by failure type',
      labelNames: ['type'],
      registers,
    });
    this.flowsActive = new Gauge({
      name: 'gw_flows_active',
      help: 'Flows open now',
      registers,
      collect() {
        this.set(stats.activeFlowsFn());
      },
    });
    this.flowBytesTotal = new Counter({
      name: 'gw_flow_bytes_total',
      help: 'Payload bytes carried, by direction (out = to the destination)',
      labelNames: ['direction'],
      registers,
      collect() {
        this.reset();
        this.inc({ direction: 'out' }, stats.bytesOut);
        this.inc({ direction: 'in' }, stats.bytesIn);
      },
    });
    this.flowsClosedTotal = new Counter({
      name: 'gw_flows_closed_total',
      help: 'Flows ended, one per flow record (refusals and failed dials included), by protocol and the record\'s closeReason',
      labelNames: ['protocol', 'close_reason'],
      registers,
      collect() {
        this.reset();
        for (const [protocol, reasons] of stats.closedFlows) {
          for (const [reason, n] of reasons) this.inc({ protocol: closedLabel(protocol, PROTOCOL_LABELS), close_reason: closedLabel(reason, CLOSE_REASON_LABELS) }, n);
        }
      },
    });
    this.policyDecisionsTotal = new Counter({
      name: 'gw_policy_decisions_total',
      help: 'Admission verdicts of new flows, by verdict and reason code',
      labelNames: ['verdict', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const [verdict, reasons] of stats.decisions) {
          for (const [reason, n] of reasons) this.inc({ verdict: closedLabel(verdict, VERDICT_LABELS), reason: closedLabel(reason, REASON_LABELS) }, n);
        }
      },
    });
    this.detectorAlertsTotal = new Counter({
      name: 'gw_detector_alerts_total',
      help: 'Alerts raised, by detector and action',
      labelNames: ['detector', 'action'],
      registers,
    });
    this.sweepDurationMs = new Histogram({
      name: 'gw_sweep_duration_ms',
      help: 'Duration of one detector sweep over the live flows, in milliseconds',
      buckets: [0.1, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000],
      registers,
    });
    this.configReloadTotal = new Counter({
      name: 'gw_config_reload_total',
      help: 'Policy reloads (file, admin API, rollback), by result',
      labelNames: ['result'],
      registers,
    });
    this.flowLogFailing = scrapedGauge(registers, 'gw_flow_log_failing', '1 while the flow log cannot be written (records are held in memory), else 0', () =>
      stats.flowLogStatusFn().failing ? 1 : 0,
    );
    this.flowRecordsHeld = scrapedGauge(registers, 'gw_flow_records_held', 'Flow records held in memory because the flow log cannot take them', () => stats.flowLogStatusFn().backlogRecords);
    this.flowRecordsDroppedTotal = scrapedCounter(registers, 'gw_flow_records_dropped_total', 'Flow records lost: the flow log failed and its in-memory backlog was full', () => stats.flowLogStatusFn().droppedRecords);
    scrapedCounter(
      registers,
      'gw_flow_refusals_unrecorded_total',
      'Refusals for want of a flow log (503 flow-log-unavailable) counted instead of recorded: the backlog already held 10,000 records, kept for flows that carried traffic',
      () => stats.skippedRecordsFn(),
    );
    this.downstreamCxSourceLimitedTotal = scrapedCounter(
      registers,
      'gw_downstream_cx_source_limited_total',
      'Client connections closed on arrival: their source address had limits.maxConnectionsPerSource open',
      () => stats.sourceLimitFn().refusedTotal,
    );
    scrapedGauge(registers, 'gw_downstream_sources_active', 'Source addresses with client connections open', () => stats.sourceLimitFn().sources);
    scrapedCounter(registers, 'gw_admin_auth_failures_total', 'Admin API requests answered 401: no token, or one that matched none', () => stats.adminFn().authFailuresTotal);
    scrapedCounter(
      registers,
      'gw_admin_auth_locked_out_total',
      'Admin API requests answered 429 without their token checked: the source had admin.maxAuthFailuresPerSource bad tokens within a minute',
      () => stats.adminFn().authLockedOutTotal,
    );
    scrapedCounter(registers, 'gw_admin_auth_lockouts_total', 'Source addresses locked out of the admin API for admin.authLockoutSec after repeated bad tokens', () => stats.adminFn().authLockoutsTotal);
    scrapedCounter(
      registers,
      'gw_admin_cx_source_limited_total',
      'Admin API connections answered 429 and closed on arrival: their source address had admin.maxConnectionsPerSource open',
      () => stats.adminFn().connectionsRefusedTotal,
    );
    scrapedCounter(registers, 'gw_admin_host_refused_total', 'Admin API requests answered 421: a Host name it does not answer to (admin.allowedHosts; DNS rebinding)', () => stats.adminFn().hostRefusedTotal);
    scrapedCounter(
      registers,
      'gw_admin_validate_refused_total',
      'Policy validations of read tokens answered 429: no place in the queue of the validation budget (one at a time, at most a fifth of the event loop)',
      () => stats.adminFn().validateRefusedTotal,
    );
    new Counter({
      name: 'gw_admin_streams_refused_total',
      help: 'Alert streams (SSE) refused with 429, by the limit reached: admin.maxStreamsPerToken (token) or admin.maxStreams (total)',
      labelNames: ['limit'],
      registers,
      collect() {
        const st = stats.adminFn();
        this.reset();
        this.inc({ limit: 'token' }, st.streamsRefusedPerToken);
        this.inc({ limit: 'total' }, st.streamsRefusedTotal);
      },
    });
    scrapedGauge(registers, 'gw_admin_streams_active', 'Alert streams (SSE) open on the admin API', () => stats.adminFn().streamsActive);
    scrapedGauge(registers, 'gw_socks_udp_held_bytes', 'Bytes of SOCKS5 UDP client datagrams held while their destination is being admitted', () => stats.socksUdpFn().heldBytes);
    scrapedCounter(
      registers,
      'gw_socks_udp_held_dropped_total',
      'SOCKS5 UDP client datagrams dropped while their destination was being admitted: its queue, the association\'s or the gateway\'s held bytes, or the destinations waiting were at their limit',
      () => stats.socksUdpFn().heldDroppedTotal,
    );
    scrapedCounter(
      registers,
      'gw_socks_udp_replies_dropped_total',
      'SOCKS5 UDP replies from destinations dropped: too large for a UDP datagram once the SOCKS UDP header is added',
      () => stats.socksUdpFn().repliesDroppedTotal,
    );
    scrapedCounter(
      registers,
      'gw_socks_udp_other_user_dropped_total',
      'SOCKS5 UDP client datagrams not relayed before an association locked its port (named or not): local attribution found the socket they came from owned by another user than the control connection',
      () => stats.socksUdpFn().otherUserDroppedTotal,
    );
    scrapedCounter(
      registers,
      'gw_socks_udp_owner_unlisted_dropped_total',
      'SOCKS5 UDP client datagrams not relayed before an association locked its port: local attribution found no socket listed on the port they came from (closed right after sending, or a raw socket), so no owner; asked again at its next datagram',
      () => stats.socksUdpFn().ownerUnlistedDroppedTotal,
    );
    scrapedCounter(
      registers,
      'gw_socks_udp_owner_unknown_dropped_total',
      'SOCKS5 UDP client datagrams not relayed before an association locked its port: local attribution did not tell within its wait whose socket they came from (the lookup goes on and its answer decides), or found their port shared by sockets of several users (SO_REUSEADDR)',
      () => stats.socksUdpFn().ownerUnknownDroppedTotal,
    );
    // Zero the closed label sets so dashboards see every series from the start.
    for (const r of RELOAD_RESULTS) this.configReloadTotal.inc({ result: r }, 0);
    if (opts.processMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'gw_process_' });
  }

  downstreamOpened(listener: ListenerLabel): void {
    const l = closedLabel(listener, LISTENER_LABELS);
    this.cxTotal.set(l, (this.cxTotal.get(l) ?? 0) + 1);
    this.cxActive.set(l, (this.cxActive.get(l) ?? 0) + 1);
  }

  downstreamClosed(listener: ListenerLabel): void {
    const l = closedLabel(listener, LISTENER_LABELS);
    this.cxActive.set(l, (this.cxActive.get(l) ?? 0) - 1);
  }

  upstreamConnectFailed(type: ConnectFailType): void {
    this.upstreamCxConnectFailTotal.inc({ type: closedLabel(type, CONNECT_FAIL_TYPES) });
  }

  decision(verdict: Verdict, reason: ReasonCode | null): void {
    countIn(this.decisions, verdict, reason);
  }

  /** Add a flow's bytes beyond what was already counted. */
  private addBytes(flow: Flow, countedOut: number, countedIn: number): void {
    if (flow.bytesOut > countedOut) this.bytesOut += flow.bytesOut - countedOut;
    if (flow.bytesIn > countedIn) this.bytesIn += flow.bytesIn - countedIn;
  }

  alert(detector: string, action: string): void {
    this.detectorAlertsTotal.inc({
      detector: closedLabel(detector, DETECTOR_NAMES),
      action: closedLabel(action, ALERT_ACTION_LABELS),
    });
  }

  sweepObserved(durationMs: number): void {
    this.sweepDurationMs.observe(durationMs);
  }

  /** Read the flow log's state at scrape time. */
  attachFlowLog(status: () => { failing: boolean; backlogRecords: number; droppedRecords: number }): void {
    this.flowLogStatusFn = status;
  }

  attachSourceLimit(stats: () => SourceLimitStats): void {
    this.sourceLimitFn = stats;
  }

  /** Read the SOCKS listener's UDP relay counts at scrape time. */
  attachSocksUdp(stats: () => UdpRelayStats): void {
    this.socksUdpFn = stats;
  }

  /** Export the agent reports waiting for their flow (gateway/pending-reports.ts), read at scrape time. */
  attachPendingReports(read: () => PendingReportStats): void {
    const registers = [this.registry];
    scrapedGauge(registers, 'gw_agent_reports_pending', 'Agent reports kept waiting for their flow (bounded per agent and in all)', () => read().reports);
    scrapedGauge(registers, 'gw_agent_reports_pending_bytes', 'Bytes of agent reports kept waiting for their flow, about (bounded per agent and in all)', () => read().bytes);
    scrapedCounter(registers, 'gw_agent_reports_shed_total', 'Agent reports shed: their agent, or all agents, had as many waiting as allowed', () => read().shedTotal);
  }

  configReloaded(result: ReloadResult): void {
    this.configReloadTotal.inc({ result });
  }

  /**
   * Follow a flow table: the active gauge reads it at scrape time; bytes are counted per sweep as
   * deltas (and the remainder at close), so long tunnels show up before they end; each flow's
   * admission verdict is counted once, when it is final: at the first sweep that sees it so (see
   * isVerdictFinal), before a detector changes it, or at its close, where the flow is also counted
   * by its closeReason. So the counters add up to the flow records (their verdict, reason,
   * closeReason, bytes), but for a detector's later verdict (the record's, not counted here).
   * Returns a function that detaches the listeners.
   */
  attachFlowTable(flows: FlowTable): () => void {
    this.activeFlowsFn = () => flows.activeCount;
    this.skippedRecordsFn = () => flows.skippedRecords;
    const onSweep = (_now: number, active: ReadonlyMap<string, Flow>): void => {
      for (const flow of active.values()) {
        let c = this.counted.get(flow);
        if (!c) {
          c = { out: 0, in: 0, isDecisionCounted: false };
          this.counted.set(flow, c);
        }
        // Not final yet (see isVerdictFinal): counted when it is, or at its close.
        if (!c.isDecisionCounted && isVerdictFinal(flow)) {
          c.isDecisionCounted = true;
          this.decision(flow.verdict, flow.reason);
        }
        this.addBytes(flow, c.out, c.in);
        c.out = flow.bytesOut;
        c.in = flow.bytesIn;
      }
    };
    // A detector's later verdict is not an admission verdict: count the admission's first.
    const onRedecide = (flow: Flow): void => {
      const c = this.counted.get(flow);
      if (c?.isDecisionCounted === true) return;
      if (c) c.isDecisionCounted = true;
      else this.counted.set(flow, { out: 0, in: 0, isDecisionCounted: true });
      this.decision(flow.verdict, flow.reason);
    };
    const onClose = (flow: Flow): void => {
      countIn(this.closedFlows, flow.protocol, flow.closeReason);
      const c = this.counted.get(flow);
      if (c) this.counted.delete(flow);
      if (c?.isDecisionCounted !== true) this.decision(flow.verdict, flow.reason);
      this.addBytes(flow, c?.out ?? 0, c?.in ?? 0);
    };
    flows.on('sweep', onSweep);
    flows.on('redecide', onRedecide);
    flows.on('close', onClose);
    return () => {
      flows.off('sweep', onSweep);
      flows.off('redecide', onRedecide);
      flows.off('close', onClose);
      this.counted.clear();
      this.activeFlowsFn = () => 0;
    };
  }

  /** Export the admin listener's counters (admin/app.ts, through the ControlPort); the last one attached counts. */
  attachAdmin(read: () => AdminListenerStats): void {
    this.adminFn = read;
  }

  /** Count every alert added to a store (detector and action labels from closed sets). */
  attachAlerts(store: { subscribe(fn: (ev: { alert: { detector: string } }) => void): () => void }): () => void {
    return store.subscribe((ev) => {
      const action = (ev.alert as { action?: unknown }).action;
      this.alert(ev.alert.detector, typeof action === 'string' ? action : 'other');
    });
  }

  /**
   * Export the identity resolver's counters (gateway/identity): read at scrape time from
   * `source.stats()`, so the resolver keeps plain numbers and never imports prom-client.
   */
  attachIdentity(source: { stats(): IdentityStats }): void {
    const registers = [this.registry];
    const counter = (name: string, help: string, read: (st: IdentityStats) => number): void => {
      scrapedCounter(registers, name, help, () => read(source.stats()));
    };
    new Counter({
      name: 'gw_identity_auth_failures_total',
      help: 'Connections refused by identity resolution, by reason (bad-credentials, auth-required)',
      labelNames: ['reason'],
      registers,
      collect() {
        const st = source.stats();
        this.reset();
        this.inc({ reason: 'bad-credentials' }, st.badCredentialsTotal);
        this.inc({ reason: 'auth-required' }, st.authRequiredTotal);
      },
    });
    counter('gw_identity_spoof_attempts_total', 'Identity headers sent from untrusted sources (ignored)', (st) => st.spoofAttemptsTotal);
    counter('gw_identity_signed_tokens_accepted_total', 'Signed identity tokens verified and believed', (st) => st.signedTokensAcceptedTotal);
    counter('gw_identity_auth_throttled_total', 'Credential checks delayed by the per-source failure throttle', (st) => st.throttle.delayedTotal);
    counter('gw_identity_auth_shed_total', 'Credential checks refused unchecked: too many already waiting from that source', (st) => st.throttle.shedTotal);
    counter('gw_identity_scrypt_runs_total', 'scrypt password derivations run (cache misses)', (st) => st.credentials.scryptRuns);
    counter('gw_identity_credential_cache_hits_total', 'Password checks answered from the short-lived cache', (st) => st.credentials.cacheHits);
    counter('gw_identity_auth_user_throttled_total', 'Password checks delayed by the per-user failure budget (guessing one account from many addresses)', (st) => st.userThrottle.delayedTotal);
    counter('gw_identity_auth_user_shed_total', 'Password checks refused unchecked: too many already waiting for that user name', (st) => st.userThrottle.shedTotal);
    counter('gw_identity_scrypt_shed_total', 'Password checks refused unchecked: the scrypt queue was full', (st) => st.credentials.scryptShed);
    scrapedGauge(registers, 'gw_identity_throttle_sources_active', 'Source addresses with recent authentication failures or checks in flight being tracked', () => source.stats().throttle.sourcesTracked);
    scrapedGauge(registers, 'gw_identity_throttle_users_active', 'User names with recent authentication failures being tracked', () => source.stats().userThrottle.sourcesTracked);
    scrapedGauge(registers, 'gw_identity_scrypt_waiting', 'scrypt derivations waiting for a thread-pool slot (bounded)', () => source.stats().scryptWaiting);
  }

  /** Prometheus text exposition. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}
