/**
 * The adapter main.ts hands to the admin API: it implements ControlPort (gateway/control.ts) over
 * the flow table, the policy store, the alert store, the stats, the audit log and the agent registry.
 * It owns no state of its own beyond what those hold.
 */
import { normalizeIp } from '../agent/attribution.ts';
import { validateReportBatch } from '../agent/report.ts';
import type { Config } from '../policy/config.ts';
import { type LoadResult, loadConfig, validateConfig } from '../policy/load-config.ts';
import type { Mode, PolicySnapshot, ProcessInfo } from '../policy/types.ts';
import { AgentRegistry } from './agent-registry.ts';
import { type AgentSources, compileAgentSources, isAgentSource } from './identity/agent-sources.ts';
import { keptProcessInfo, type PendingReportLimits, PendingReportBudget, processBytes } from './pending-reports.ts';
import type { AlertLike, AlertStore } from './alerts/alert-store.ts';
import type { AuditLog } from './audit-log.ts';
import type { Logger } from './context.ts';
import { evaluateConnection, type SelfDial } from './control-evaluate.ts';
import type { DetectionEngine, QuarantineView } from './detection/detection-engine.ts';
import type {
  AgentView,
  ConfigIssue,
  ControlPort,
  CredentialSet,
  IngestOutcome,
  ModeView,
  PolicyVersionInfo,
  PolicyView,
  QuarantineInfo,
  ValidateOutcome,
  WriteOutcome,
} from './control.ts';
import type { FlowTable } from './flow/flow-table.ts';
import type { IdentityStats } from './identity/identity-resolver.ts';
import type { ConfigCheck } from './policy-store.ts';
import { GatewayStats } from './stats.ts';
import { formatAuthority } from './protocol/authority.ts';

/** One entry of the policy store's history. */
export interface PolicyHistoryEntry {
  version: number;
  author: string | null;
  /** ms since epoch or ISO 8601. */
  time: number | string | null;
  source?: string | null;
}

export type StoreWriteResult = { ok: true } | { ok: false; errors: readonly ConfigIssue[] };

/** What the control port needs of the policy store (gateway/policy-store.ts). */
export interface PolicyStoreLike {
  current(): PolicySnapshot;
  modeOverride(): Mode | null;
  setMode(mode: Mode | null, author?: string): void;
  reload(input: string | object, meta: { author: string; source: string; check?: ConfigCheck }): StoreWriteResult | Promise<StoreWriteResult>;
  rollback(version: number, meta: { author: string; check?: ConfigCheck }): StoreWriteResult | Promise<StoreWriteResult>;
  history(): readonly PolicyHistoryEntry[];
  /** Call `fn` after every policy swap (a reload, a PUT, a rollback); returns the unsubscribe. */
  onChange(fn: () => void): () => void;
}

/** Parse + validate a draft without applying it: text through loadConfig, an object through validateConfig. */
function checkConfig(input: string | object): LoadResult {
  return typeof input === 'string' ? loadConfig(input) : validateConfig(input);
}

export interface ControlPortDeps<A extends AlertLike = AlertLike> {
  flows: FlowTable;
  policy: PolicyStoreLike;
  alerts: AlertStore<A>;
  /** Metrics; a fresh GatewayStats following `flows` when not given. */
  stats?: GatewayStats;
  /** The identity resolver, whose counters the default GatewayStats exports (gw_identity_*). */
  identity?: { stats(): IdentityStats };
  audit: AuditLog;
  /** Agent sightings; a fresh registry when not given. */
  agents?: AgentRegistry;
  /** Listeners bound and policy loaded. */
  isReady: () => boolean;
  /** The bound HTTP proxy address ("host:port"); defaults to the config's listen.http. */
  proxyAddress?: () => string;
  now?: () => number;
  /** Budgets of agent reports waiting for their flow (tests shrink them). */
  pendingReports?: Partial<PendingReportLimits>;
  /** Where shed agent reports are logged (once per agent per 10 s). */
  log?: Logger;
  /**
   * The detection engine: read by the policy dry run (quarantine, detector state), its quarantines
   * listed and released; none: not consulted, no quarantine listed.
   */
  detection?: Pick<DetectionEngine, 'readOnly' | 'quarantines' | 'release'> | null;
  /** Whether a destination is the gateway's own listener (admission's self-dial guard), for the dry run. */
  selfDial?: SelfDial | null;
  /**
   * The ports of the live SOCKS5 UDP relays (ctx.udpRelays): a `udp` report about a socket whose
   * remote port is none of them names no association and is ignored. None: not checked.
   */
  udpRelayPorts?: { hasPort(port: number): boolean } | null;
}

function defaultStats<A extends AlertLike>(deps: ControlPortDeps<A>): GatewayStats {
  const stats = new GatewayStats();
  stats.attachFlowTable(deps.flows);
  stats.attachAlerts(deps.alerts);
  if (deps.identity) stats.attachIdentity(deps.identity);
  return stats;
}

function quarantineInfo(q: QuarantineView): QuarantineInfo {
  return {
    key: q.key,
    host: q.host,
    user: q.user,
    process: q.process,
    since: new Date(q.sinceMs).toISOString(),
    until: new Date(q.untilMs).toISOString(),
    detector: q.detector,
    alertId: q.alertId,
    enforced: q.isEnforced,
  };
}

function iso(t: number | string | null | undefined): string | null {
  if (t === null || t === undefined) return null;
  return typeof t === 'number' ? new Date(t).toISOString() : t;
}

/** The first report of a batch that named another process than its live flow already had (logged). */
interface ConflictNote {
  flowId: string;
  client: string;
  kept: { pid: number | null; name: string | null; source: string | null };
  reported: { pid: number; name: string };
}

/** Build the ControlPort main.ts passes to `buildAdmin`. */
export function createControlPort<A extends AlertLike>(deps: ControlPortDeps<A>): ControlPort {
  const now = deps.now ?? Date.now;
  const stats = deps.stats ?? defaultStats(deps);
  const agents = deps.agents ?? new AgentRegistry();
  const pending = new PendingReportBudget(deps.pendingReports);
  stats.attachPendingReports(() => pending.stats(now()));
  const shedLoggedAt = new Map<string, number>();
  const conflictLoggedAt = new Map<string, number>();
  let sourcesCache: { version: number; lists: Map<string, AgentSources | null> } | null = null;
  let agentTokensCache: { version: number; names: ReadonlySet<string> } | null = null;

  const policyView = (): PolicyView => {
    const snap = deps.policy.current();
    const meta = deps.policy.history().find((h) => h.version === snap.version);
    return {
      version: snap.version,
      config: snap.config as Config,
      author: meta?.author ?? null,
      time: iso(meta?.time),
      mode: deps.policy.modeOverride() ?? snap.config.mode,
    };
  };

  /**
   * Run one write through the store. Its previous version and the view it answers with are read in
   * its own turn: the check `run` hands the store runs just before the swap, the change listener
   * just after it, with nothing between them. Read around the queue instead (before the write
   * waited its turn, after it was done), a reload queued ahead or behind could have swapped between,
   * and the audit's `version A -> B` named another write's version.
   */
  const write = async (
    run: (check: ConfigCheck) => StoreWriteResult | Promise<StoreWriteResult>,
    check?: ConfigCheck,
    /** A refusal that is no failed reload (If-Match moved meanwhile): answered as it is, not counted. */
    refusal?: () => WriteOutcome | null,
  ): Promise<WriteOutcome> => {
    const before = deps.policy.current().version;
    let previous: number | null = null;
    let view: PolicyView | null = null;
    const inTurn: ConfigCheck = (c) => {
      const refused = check?.(c) ?? [];
      if (refused.length === 0) previous = deps.policy.current().version;
      return refused;
    };
    const off = deps.policy.onChange(() => {
      if (previous !== null && view === null) view = policyView();
    });
    let res: StoreWriteResult;
    try {
      res = await run(inTurn);
    } finally {
      off();
    }
    const refused = res.ok ? null : (refusal?.() ?? null);
    if (refused) return refused;
    stats.configReloaded(res.ok ? 'success' : 'failure');
    if (!res.ok) return { ok: false, code: 'invalid', errors: [...res.errors] };
    // A store that swaps without calling the check or the listener (none of ours) is read now.
    return { ok: true, policy: view ?? policyView(), previousVersion: previous ?? before };
  };

  /** Agent name → its sources (absent: admin tokens of scope agent, bound to their own address). */
  const agentSources = (): Map<string, AgentSources | null> => {
    const snap = deps.policy.current();
    if (sourcesCache?.version === snap.version) return sourcesCache.lists;
    const lists = new Map<string, AgentSources | null>();
    for (const a of snap.config.identity.agents) {
      lists.set(a.name, compileAgentSources(a.sources));
    }
    sourcesCache = { version: snap.version, lists };
    return lists;
  };

  /** The names of admin.tokens' agent-scope entries in the running policy (compiled once per version). */
  const agentTokenNames = (): ReadonlySet<string> => {
    const snap = deps.policy.current();
    if (agentTokensCache?.version === snap.version) return agentTokensCache.names;
    const names = new Set<string>();
    for (const t of snap.config.admin.tokens) if (t.scope === 'agent') names.add(t.name);
    agentTokensCache = { version: snap.version, names };
    return names;
  };

  /** Whether identity.agents' `name`, in the running policy, still speaks for `ip`. */
  const isStillSource = (name: string, ip: string): boolean => {
    const sources = agentSources().get(name);
    return sources !== undefined && sources !== null && isAgentSource(sources, ip);
  };

  const modeView = (): ModeView => {
    const cfg = deps.policy.current().config;
    const override = deps.policy.modeOverride();
    const roleModes: Record<string, Mode> = {};
    for (const [name, role] of Object.entries(cfg.roles)) if (role.mode) roleModes[name] = role.mode;
    return { mode: override ?? cfg.mode, configMode: cfg.mode, override, roleModes };
  };

  return {
    isReady: deps.isReady,

    listFlows: (query) => deps.flows.page(query),
    getFlow: (id) => deps.flows.get(id)?.toRecord(deps.flows.now()) ?? null,
    killFlow: (id) => deps.flows.kill(id, 'admin'),

    getPolicy: policyView,
    policyHistory: (): PolicyVersionInfo[] => {
      const current = deps.policy.current().version;
      // Newest first: the version an operator wants to roll back to is usually a recent one.
      return [...deps.policy.history()]
        .reverse()
        .map((h) => ({ version: h.version, author: h.author, time: iso(h.time), source: h.source ?? null, current: h.version === current }));
    },
    validatePolicy: (input, check): ValidateOutcome => {
      const res = checkConfig(input);
      if (!res.ok) return { ok: false, errors: [...res.errors] };
      const c = res.config;
      const refused = check?.(c) ?? [];
      if (refused.length > 0) return { ok: false, errors: [...refused] };
      const roles = Object.keys(c.roles).length;
      return { ok: true, summary: `valid: mode ${c.mode}, ${roles} role(s), ${c.identity.users.length} user(s), ${c.identity.hosts.length} host(s)` };
    },
    evaluate: (query) => evaluateConnection(deps.policy.current(), deps.policy.modeOverride(), query, now(), deps.detection?.readOnly() ?? null, deps.selfDial ?? null),
    replacePolicy: async (input, meta) => {
      const before = deps.policy.current().version;
      const wanted = meta.ifMatchVersion ?? null;
      if (wanted !== null && wanted !== before) return { ok: false, code: 'version-mismatch', currentVersion: before };
      // A store may read files before its swap (policy-writer.ts: tls), and another write may swap
      // meanwhile: If-Match is checked again by the check the store runs at the swap.
      const moved = { to: null as number | null };
      const check: ConfigCheck = (c) => {
        const now = deps.policy.current().version;
        if (wanted === null || now === wanted) return meta.check?.(c) ?? [];
        moved.to = now;
        return [{ path: '(If-Match)', message: `the policy is version ${now} now` }];
      };
      // The store validates (same function as start-up and SIGHUP) and keeps the text in history.
      return write(
        (inTurn) => deps.policy.reload(input, { author: meta.author, source: 'api', check: inTurn }),
        check,
        () => (moved.to === null ? null : { ok: false, code: 'version-mismatch', currentVersion: moved.to }),
      );
    },
    rollbackPolicy: async (version, author, check) => {
      if (!deps.policy.history().some((h) => h.version === version)) {
        return { ok: false, code: 'unknown-version', message: `no policy version ${version} in the history` };
      }
      return write((inTurn) => deps.policy.rollback(version, { author, check: inTurn }), check);
    },

    getMode: modeView,
    setMode: (mode, author) => {
      deps.policy.setMode(mode, author);
      return modeView();
    },

    listQuarantines: () => ({ mode: modeView().mode, quarantines: (deps.detection?.quarantines(now()) ?? []).map(quarantineInfo) }),
    releaseQuarantine: (key) => (deps.detection?.release(key, now()) ?? []).map(quarantineInfo),

    listAlerts: (query) => ({ alerts: deps.alerts.list(query), lastEventId: deps.alerts.lastEventId }),
    alertsAfter: (afterEventId, detector) => deps.alerts.after(afterEventId, detector),
    subscribeAlerts: (fn) => deps.alerts.subscribe(fn),

    ingestReports: (body, agentName, sourceIp, reporter): IngestOutcome => {
      const parsed = validateReportBatch(body);
      if (!parsed.ok) return { ok: false, code: 'invalid', errors: [...parsed.errors] };
      const batch = parsed.value;
      // Sources are an identity.agents entry's, looked up for such a reporter only: an admin.tokens
      // entry may bear the same name, and with it it spoke for those sources from anywhere.
      const sources = reporter === 'agent' ? (agentSources().get(agentName) ?? null) : null;
      // Each report's address in the form flows are known by (plain IPv4 for an IPv4-mapped one,
      // compressed lower-case IPv6, no zone), checked and joined as such: an IPv4 client's report
      // in the mapped form names its flow, and is checked against IPv4 sources only.
      const localIps = batch.reports.map((r) => normalizeIp(r.localIp));
      // An agent reports for its own host (SPEC §7): an agent-scope token bound to no sources
      // (admin.tokens) speaks for the address it reports from only, or any holder of it could name
      // the process of another host's flow. Behind NAT that address is not the clients': such an
      // agent needs identity.agents with its sources.
      const ownAddress = sources === null && reporter !== 'admin' ? normalizeIp(sourceIp) : null;
      // All or nothing: an agent speaking for an address it does not own is suspect as a whole.
      const refused: Array<{ index: number; localIp: string }> = [];
      if (sources) {
        batch.reports.forEach((r, index) => {
          if (!isAgentSource(sources, localIps[index] ?? '')) refused.push({ index, localIp: r.localIp });
        });
      } else if (ownAddress !== null) {
        batch.reports.forEach((r, index) => {
          if (localIps[index] !== ownAddress) refused.push({ index, localIp: r.localIp });
        });
      }
      const t = now();
      if (refused.length > 0) {
        agents.seen(agentName, { host: batch.host, sourceIp, reports: 0, attributed: 0, refused: batch.reports.length }, t);
        return { ok: false, code: 'refused', boundTo: sources ? 'sources' : 'source-address', refused };
      }
      let attributed = 0;
      let shed = 0;
      let waiting = 0;
      let ignored = 0;
      let conflicts = 0;
      let firstConflict: ConflictNote | null = null;
      const relayPorts = deps.udpRelayPorts ?? null;
      for (const [index, r] of batch.reports.entries()) {
        // A datagram socket whose remote port is no live relay's (a DNS or NTP socket to the
        // gateway's address) belongs to no association: kept, it would only wait out the 30 s.
        if (r.proto === 'udp' && relayPorts !== null && !relayPorts.hasPort(r.remotePort)) {
          ignored++;
          continue;
        }
        const process: ProcessInfo = keptProcessInfo({
          pid: r.pid,
          name: r.name,
          exe: r.exe,
          cmdline: r.cmdline,
          user: r.user,
          uid: r.uid,
          loginuid: r.loginuid,
          ppid: r.ppid,
          parentName: r.parentName,
          parentExe: r.parentExe,
          source: 'agent',
        });
        const bytes = processBytes(process);
        // A report the flow table would have to keep must fit the agent's and the total budget.
        // Whether its flow is live is known only by trying, so one that does not fit is not tried.
        if (!pending.hasRoom(agentName, bytes, t)) {
          pending.shed(agentName);
          shed++;
          continue;
        }
        // The report's proto says which port space localPort is in: a TCP report must never name
        // the process of a UDP association from the same port number, nor the other way round.
        // A report left waiting is checked again when its flow opens: a reload meanwhile may have
        // taken the address out of this agent's sources (or the agent out of identity.agents), or
        // taken the agent-scope admin.tokens entry that sent it out (or its agent scope away).
        const ip = localIps[index] ?? '';
        const stillValid = sources !== null ? () => isStillSource(agentName, ip) : reporter === 'token' ? () => agentTokenNames().has(agentName) : null;
        const flow = deps.flows.attribute(ip, r.localPort, r.proto, process, stillValid, { ip: normalizeIp(r.remoteIp), port: r.remotePort });
        const kept = flow?.identity.process;
        if (flow === null) {
          pending.add(agentName, bytes, t);
          waiting++;
        } else if (kept === process || (kept?.pid === process.pid && kept.name === process.name)) attributed++;
        else {
          // The flow's process was named already (an earlier report, local attribution): the first
          // stands, a report naming another process is told of, not taken (SPEC §7).
          conflicts++;
          firstConflict ??= { flowId: flow.id, client: formatAuthority(ip, r.localPort), kept: { pid: kept?.pid ?? null, name: kept?.name ?? null, source: kept?.source ?? null }, reported: { pid: process.pid, name: process.name } };
        }
      }
      if (firstConflict !== null && (conflictLoggedAt.get(agentName) ?? Number.NEGATIVE_INFINITY) <= t - 10_000) {
        conflictLoggedAt.set(agentName, t);
        deps.log?.warn({ agent: agentName, conflicts, ...firstConflict }, 'agent report names another process than the live flow already has: kept the first');
      }
      if (shed > 0 && (shedLoggedAt.get(agentName) ?? Number.NEGATIVE_INFINITY) <= t - 10_000) {
        shedLoggedAt.set(agentName, t);
        const left = pending.agentStats(agentName, t);
        deps.log?.warn({ agent: agentName, shed, waitingReports: left.reports, waitingBytes: left.bytes }, 'agent reports shed: too many waiting for their flows');
      }
      agents.seen(agentName, { host: batch.host, sourceIp, reports: batch.reports.length, attributed, refused: 0 }, t);
      const udpRelayPorts = deps.policy.current().config.limits.udpRelayPorts;
      return { ok: true, accepted: batch.reports.length - shed - ignored, attributed, pending: waiting, shed, ignored, udpRelayPorts };
    },
    listAgents: (): AgentView[] => {
      const cfg = deps.policy.current().config;
      const out: AgentView[] = [];
      const seen = new Set<string>();
      const view = (name: string, configured: boolean, sources: string[]): AgentView => {
        const s = agents.get(name);
        seen.add(name);
        return {
          name,
          configured,
          sources,
          host: s?.host ?? null,
          lastSeenAt: s ? new Date(s.lastSeenAt).toISOString() : null,
          lastSourceIp: s?.lastSourceIp ?? null,
          reports: s?.reports ?? 0,
          attributed: s?.attributed ?? 0,
          refused: s?.refused ?? 0,
        };
      };
      for (const a of cfg.identity.agents) out.push(view(a.name, true, [...a.sources]));
      for (const s of agents.all()) if (!seen.has(s.name)) out.push(view(s.name, false, []));
      return out;
    },

    credentials: (): CredentialSet => {
      const snap = deps.policy.current();
      return { version: snap.version, adminTokens: snap.config.admin.tokens, agents: snap.config.identity.agents };
    },
    subscribeCredentials: (fn) => deps.policy.onChange(fn),
    adminSettings: () => deps.policy.current().config.admin,
    attachAdminStats: (read) => stats.attachAdmin(read),
    proxyAddress: () => deps.proxyAddress?.() ?? deps.policy.current().config.listen.http,

    metrics: () => stats.registry,
    audit: (entry) => deps.audit.record(entry),
    listAudit: (query) => deps.audit.list(query),
  };
}
