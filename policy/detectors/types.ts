/**
 * Inputs and outputs of the AN0081 / AN0080 detectors (SPEC §4, §5; research/detections.md §4).
 *
 * Detectors are pure: they read a `FlowView` list, the `DetectionState` windows and a frozen
 * `PolicySnapshot`, with `now` (ms since epoch) as an explicit argument, and return `Finding`s.
 * The gateway turns a Finding into an `Alert` (see `toAlert`) and acts on it.
 */
import type { AlertAction, Identity, Protocol, Severity } from '../types.ts';

/**
 * Where a flow stands, as the detectors see it.
 * - `open`: connected and carrying data; `closed`: finished normally.
 * - `failed`: the upstream dial failed (timeout, unreachable; SOCKS 0x03/0x04/0x05), or the destination
 *   reset the connection before any data either way, during the dial or after it (`isResetBeforeData`).
 * - `refused`: the destination refused the connection (TCP RST to the SYN).
 * - `denied`: the gateway refused it by policy at admission, to an address it knows (`deny-range`, or
 *   an IP literal not allowlisted): never dialled, but an attempt at that address, which the scan
 *   detector counts as a failed one (see `outcomeOfRefusal`); nothing else reads it.
 * - `blocked`: any other refusal by the gateway (a name not allowlisted, detector, quarantine, rate
 *   limit, authentication): never dialled, and not an attempt at an address; so is a flow the gateway
 *   or the client ended before the destination answered its dial (a parent proxy's own failure, a
 *   drain, an admin DELETE, the client leaving, no descriptor left): see `outcomeOfUnconnected`.
 */
export type FlowOutcome = 'open' | 'closed' | 'failed' | 'refused' | 'denied' | 'blocked';

export interface FlowDestinationView {
  /** As the client named it: lower-case host name or IP literal. */
  readonly host: string;
  /** The address dialled, or null when unknown (DNS failed). */
  readonly ip: string | null;
  readonly port: number;
}

/** A read-only snapshot of one flow, live or just closed, handed to `evaluateSweep`. */
export interface FlowView {
  /** The flow's id: what findings name, and what a kill applies to. */
  readonly id: string;
  /**
   * Set for one destination of a flow that relays to several (a SOCKS5 UDP association, one view
   * per destination, each with that destination's bytes): what tells these views apart where `id`
   * cannot (the windows' byte deltas, the per-flow findings' grouping; match.ts, `viewKey`).
   */
  readonly partKey?: string;
  readonly protocol: Protocol;
  /** Client address: the host key when the identity has no host name. */
  readonly clientIp?: string;
  readonly identity: Identity;
  readonly destination: FlowDestinationView;
  readonly startedAtMs: number;
  readonly endedAtMs: number | null;
  readonly lastActivityAtMs: number;
  /** Payload bytes sent to the destination so far. */
  readonly bytesOut: number;
  /** Payload bytes received from the destination so far. */
  readonly bytesIn: number;
  readonly outcome: FlowOutcome;
}

export type Analytic = 'AN0081' | 'AN0080';

/** Names of the behaviour detectors (the SPEC §4 names minus policy.* and quarantine). */
export type BehaviourDetector =
  | 'an0081.proxyware'
  | 'an0081.scanner-tool'
  | 'an0081.scan'
  | 'an0081.sustained'
  | 'an0081.proxyjack'
  | 'an0080.bulk-upload'
  | 'an0080.split-upload'
  | 'an0080.long-session'
  | 'an0080.lineage'
  | 'an0080.exfil-tool';

/** Action a detector asks for, before the mode is applied (monitor turns block/kill into would-*). */
export type FindingAction = 'flag' | 'block' | 'kill';

/** Who a finding is about: the identity as seen on the flow plus the key its windows are counted under. */
export interface FindingIdentity {
  readonly user: string | null;
  readonly host: string | null;
  readonly roles: readonly string[];
  readonly process: Identity['process'];
  /** `host|user|process` key of the per-identity windows. */
  readonly key: string;
}

export interface Finding {
  readonly detector: BehaviourDetector;
  readonly analytic: Analytic;
  readonly severity: Severity;
  readonly action: FindingAction;
  /** Flows the finding is about; a kill applies to these. Empty for a connect-time finding. */
  readonly flowIds: readonly string[];
  readonly identity: FindingIdentity;
  /** The destination concerned, or null for fan-out findings over many destinations. */
  readonly destination: FlowDestinationView | null;
  /** The numbers that crossed, and their thresholds. */
  readonly evidence: Readonly<Record<string, number | string | boolean>>;
  /** Human-readable lines: what fired, which modifiers moved the severity, why the action. */
  readonly reasons: readonly string[];
  /** Internal grouping key: repeats with the same key and no escalation are suppressed. */
  readonly key: string;
}

/** The SPEC §5 alert record. */
export interface Alert {
  readonly id: string;
  /** ISO 8601. */
  readonly time: string;
  readonly detector: string;
  readonly analytic: Analytic | null;
  readonly severity: Severity;
  readonly action: AlertAction;
  readonly enforced: boolean;
  readonly flowIds: readonly string[];
  readonly identity: {
    readonly user: string | null;
    readonly host: string | null;
    readonly roles: readonly string[];
    readonly process: Identity['process'];
  };
  readonly destination: FlowDestinationView | null;
  readonly evidence: Readonly<Record<string, number | string | boolean>>;
  readonly reasons: readonly string[];
}
