/**
 * The one interface the admin API (control plane) sees of the gateway (STYLE: "admin/ sees the
 * gateway through one small interface"). `admin/` imports only types from here; main.ts builds
 * the implementation with `createControlPort()` (gateway/control-port.ts) and hands it over.
 *
 * Every method is synchronous or returns a value describing the outcome: a refused write (invalid
 * policy, stale If-Match, unknown version) is a result, not a thrown error, so the HTTP layer maps
 * outcomes to statuses in one place.
 */
import type { Registry } from 'prom-client';
import type { AdminTokenConfig, AgentTokenConfig, Config } from '../policy/config.ts';
import type { Decision, Mode, Protocol } from '../policy/types.ts';
import type { AlertLike, AlertEvent } from './alerts/alert-store.ts';
import type { AuditEntry, AuditQuery } from './audit-log.ts';
import type { DryRunDetectors, DryRunFinding } from './detection/dry-run.ts';
import type { FlowPage, FlowPageQuery } from './flow/flow-table.ts';
import type { FlowRecord } from './flow/flow.ts';
import type { AdminListenerStats } from './stats.ts';

/** One configuration error, with the path of the offending value (`roles.dev.allow[2].ports`). */
/** The caller's condition on a policy about to be swapped in: issues refuse it (nothing changes). */
export type PolicyCheck = (config: Readonly<Config>) => readonly ConfigIssue[];

export interface ConfigIssue {
  path: string;
  message: string;
}

/** The running policy as the admin API shows it. */
export interface PolicyView {
  version: number;
  config: Config;
  author: string | null;
  /** When this version became current (ISO 8601). */
  time: string | null;
  /** The global mode in force (runtime override, else the config's). */
  mode: Mode;
}

export interface PolicyVersionInfo {
  version: number;
  author: string | null;
  time: string | null;
  /** How it arrived: startup, admin PUT, SIGHUP reload, rollback… (free text from the store). */
  source: string | null;
  current: boolean;
}

export type ValidateOutcome = { ok: true; summary: string } | { ok: false; errors: ConfigIssue[] };

export type WriteOutcome =
  | { ok: true; policy: PolicyView; previousVersion: number }
  | { ok: false; code: 'invalid'; errors: ConfigIssue[] }
  | { ok: false; code: 'version-mismatch'; currentVersion: number }
  | { ok: false; code: 'unknown-version'; message: string };

/** A dry-run connection (SPEC §6 `POST /v1/policy/evaluate`). */
export interface EvaluateQuery {
  /** `host:port`, `[v6]:port`. */
  dest: string;
  user?: string;
  /** Client address: selects the host inventory entry (identity.hosts). */
  source?: string;
  /** Process name, as local attribution or an agent would report it. */
  process?: string;
  /** The dialled address, when the caller wants deny ranges and CIDR entries checked for a name. */
  ip?: string;
  /** How the connection arrives (allow entries may name tcp or udp); default connect. */
  protocol?: Protocol;
}

export type EvaluateOutcome =
  | {
      ok: true;
      version: number;
      decision: Decision;
      identity: { user: string | null; host: string | null; roles: readonly string[]; process: string | null };
      destination: { host: string; ip: string | null; port: number };
      protocol: Protocol;
      /** The connect-time findings the connection would raise (gateway/detection/dry-run.ts). */
      findings: DryRunFinding[];
      /** Which detectors were judged, skipped or not judged, and the quarantine read. */
      detectors: DryRunDetectors;
    }
  | { ok: false; message: string };

export interface ModeView {
  /** The global mode in force. */
  mode: Mode;
  /** The config file's own mode. */
  configMode: Mode;
  /** The runtime override set through the API, or null. */
  override: Mode | null;
  /** Roles whose own `mode` differs from the global one (they keep it). */
  roleModes: Record<string, Mode>;
}

/**
 * Who sends a report batch: an identity.agents entry ('agent', bound to its sources), another
 * agent-scope token ('token': admin.tokens or an extra token, bound to the address it reports from),
 * or an admin-scope token ('admin', any address).
 */
export type Reporter = 'agent' | 'token' | 'admin';

export type IngestOutcome =
  /**
   * `shed`: reports neither kept nor tried, the agent's or the total budget of waiting reports being
   * full; `ignored`: `udp` reports whose remote port is no live SOCKS5 UDP relay's, neither kept nor tried;
   * `udpRelayPorts`: limits.udpRelayPorts in force (null: relays on ephemeral ports), for the agent.
   */
  | { ok: true; accepted: number; attributed: number; pending: number; shed: number; ignored: number; udpRelayPorts: string | null }
  /** `boundTo`: what the reporter may name, its configured sources or the address it reports from. */
  | { ok: false; code: 'refused'; boundTo: 'sources' | 'source-address'; refused: Array<{ index: number; localIp: string }> }
  | { ok: false; code: 'invalid'; errors: ConfigIssue[] };

export interface AgentView {
  name: string;
  /** Configured in identity.agents (false = an admin-token agent or one since removed). */
  configured: boolean;
  sources: string[];
  host: string | null;
  lastSeenAt: string | null;
  lastSourceIp: string | null;
  reports: number;
  attributed: number;
  refused: number;
}

/** One live quarantine (SPEC §3 `detection.quarantineSec`), as `GET /v1/quarantines` lists it. */
export interface QuarantineInfo {
  /** The identity key as the detection engine keys it, `host|user|process` (`-`: not known). */
  key: string;
  host: string;
  user: string | null;
  process: string | null;
  /** ISO 8601: when it began, and when it ends unless released. */
  since: string;
  until: string;
  /** The detector whose finding put it there (the latest, when another extended it), and its alert (null: none known). */
  detector: string;
  alertId: string | null;
  /**
   * true: opened by an enforced block or kill; false: monitor mode's record of one enforce mode
   * would have opened (the identity's connections are recorded would-block, not refused).
   */
  enforced: boolean;
}

export interface QuarantineList {
  /** The global mode in force: in monitor, quarantines are what enforce mode would refuse. */
  mode: Mode;
  quarantines: QuarantineInfo[];
}

/** Tokens the auth layer accepts, read from the live policy (a PUT can add or revoke one). */
export interface CredentialSet {
  version: number;
  adminTokens: readonly AdminTokenConfig[];
  agents: readonly AgentTokenConfig[];
}

export interface Actor {
  /** Token name, or null for an unauthenticated request. */
  name: string | null;
  sourceIp: string;
}

/** What the admin API may do to the gateway. */
export interface ControlPort {
  /** Listeners bound and a policy loaded. */
  isReady(): boolean;

  /** A page of flows and the cursor of the next (FlowTable.page); refused when `after` is no cursor of this gateway's. */
  listFlows(query: FlowPageQuery): FlowPage;
  getFlow(id: string): FlowRecord | null;
  /** Kill a live flow (closeReason "admin"); false when it is not live. */
  killFlow(id: string): boolean;

  getPolicy(): PolicyView;
  policyHistory(): PolicyVersionInfo[];
  /** Validate a draft: YAML/JSON text or a parsed object. Changes nothing. */
  /** Validate a draft as a write would (`check`: what the admin API refuses besides, e.g. a repeated outside token); changes nothing. */
  validatePolicy(input: string | object, check?: PolicyCheck): ValidateOutcome;
  evaluate(query: EvaluateQuery): EvaluateOutcome;
  /** Replace the policy; `ifMatchVersion` guards against lost updates; `check` may refuse the validated config. */
  replacePolicy(input: string | object, meta: { author: string; ifMatchVersion?: number | null; check?: PolicyCheck }): Promise<WriteOutcome>;
  rollbackPolicy(version: number, author: string, check?: PolicyCheck): Promise<WriteOutcome>;

  getMode(): ModeView;
  /** Set the global mode at run time; null returns to the config's mode. */
  setMode(mode: Mode | null, author: string): ModeView;

  /** The live quarantines, enforced ones first. */
  listQuarantines(): QuarantineList;
  /**
   * Release the identity `key`'s quarantine now (and monitor mode's record of one): its next
   * connection is admitted again. What was released; empty when nothing was live.
   */
  releaseQuarantine(key: string): QuarantineInfo[];

  listAlerts(query: { since?: string; detector?: string; limit?: number }): { alerts: AlertLike[]; lastEventId: number };
  /** Alerts with an event id greater than `afterEventId` (SSE Last-Event-ID resume). */
  alertsAfter(afterEventId: number, detector?: string): AlertEvent[];
  subscribeAlerts(fn: (event: AlertEvent) => void): () => void;

  /**
   * Validate a SPEC §7 report batch, check whose flows the reporter may name, attribute flows.
   * An agent in identity.agents (`reporter` 'agent') names its `sources`; another agent-scope token
   * ('token': admin.tokens) only the address it reports from, `sourceIp`; an admin-scope token
   * ('admin') any. The reporter's kind decides, never its name: an admin.tokens entry may share
   * its name with an identity.agents entry, whose sources are not its own.
   */
  ingestReports(body: unknown, agentName: string, sourceIp: string, reporter: Reporter): IngestOutcome;
  listAgents(): AgentView[];

  credentials(): CredentialSet;
  /**
   * Call `fn` once the credentials may have changed (after every policy swap: SIGHUP, a PUT, a
   * rollback; the tokens live only in the policy, besides the env and generated ones that never
   * change); returns the unsubscribe.
   */
  subscribeCredentials(fn: () => void): () => void;
  /** The live `admin` settings of the policy: Host names, connection, lockout and stream limits. */
  adminSettings(): Readonly<Config['admin']>;
  /** Export the admin listener's own counters (read at scrape time) on the gateway's /metrics. */
  attachAdminStats(read: () => AdminListenerStats): void;
  /** Where the HTTP proxy listener is bound ("host:port"), for the PAC file. */
  proxyAddress(): string;

  metrics(): Registry;
  audit(entry: AuditEntry): void;
  listAudit(query: AuditQuery): AuditEntry[];
}
