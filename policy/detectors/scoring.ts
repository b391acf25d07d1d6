/**
 * Risk scoring (SPEC §4, research §4.14): modifiers raise or lower a detector's base severity one
 * step each; `corroborate` makes the configured action wait for a corroborating modifier or a
 * second detector of another kind. Out-of-hours raises severity but never corroborates, so it is
 * never by itself a reason to block.
 */
import type { Identity } from '../types.ts';
import type { DetectionContext } from './context.ts';
import type { DetectorSettings } from './defaults.ts';
import { baseName, isIpLiteral, severityOf } from './match.ts';
import { BROWSERS, lineageReason, serviceContext } from './process-signals.ts';
import { isWithinBusinessHours } from './hours.ts';
import type { DetectionReader } from './state.ts';
import type { BehaviourDetector, FindingAction, FlowDestinationView } from './types.ts';
import type { Severity } from '../types.ts';

export type ModifierName = 'rare' | 'context' | 'off-hours' | 'port' | 'beacon' | 'lineage' | 'approved' | 'known';

export interface Modifier {
  readonly name: ModifierName;
  readonly delta: 1 | -1;
  /** Counts as corroboration for `corroborate: true` detectors (off-hours never does). */
  readonly corroborates: boolean;
  readonly reason: string;
}

const SSH_FAMILY = /^(ssh|scp|sftp|rsync|git|git-remote-.*|mosh.*)$/;

/** Ports that are "standard" for this process (D13): 80/443, DNS, and 22 for the SSH family. */
function isStandardPort(port: number, processName: string): boolean {
  if (port === 80 || port === 443 || port === 53 || port === 853) return true;
  return port === 22 && SSH_FAMILY.test(processName);
}

export interface ModifierInput {
  readonly identity: Identity;
  readonly idKey: string;
  readonly destination: FlowDestinationView | null;
  readonly now: number;
  readonly state: DetectionReader;
  readonly ctx: DetectionContext;
  /** Modifiers the detector already used as its own signal (not counted twice). */
  readonly exclude?: readonly ModifierName[];
}

/** The modifiers that apply to one finding. */
export function modifiersFor(input: ModifierInput): Modifier[] {
  const { identity, destination, now, state, ctx } = input;
  const out: Modifier[] = [];
  const p = identity.process;
  const rareDays = ctx.settings('an0080.long-session').n['rareWithinDays'] ?? 7;
  if (destination) {
    const browser = p !== null && BROWSERS.has(p.name);
    if (state.isRare(destination.host, now, rareDays)) {
      out.push({ name: 'rare', delta: 1, corroborates: true, reason: `rare destination ${destination.host} (first seen ≤ ${rareDays} d)` });
    } else if (isIpLiteral(destination.host) && p !== null && !browser) {
      out.push({ name: 'rare', delta: 1, corroborates: true, reason: `IP-literal destination ${destination.host} from ${baseName(p.name)}` });
    }
    if (!isStandardPort(destination.port, baseName(p?.name ?? ''))) {
      out.push({ name: 'port', delta: 1, corroborates: true, reason: `unusual port ${destination.port}` });
    }
    if (state.isBeacon(input.idKey, destination.host)) {
      out.push({ name: 'beacon', delta: 1, corroborates: true, reason: `beacon-like regular connections to ${destination.host}` });
    }
    if (ctx.isApprovedDestination(destination.host)) {
      out.push({ name: 'approved', delta: -1, corroborates: false, reason: `approved destination ${destination.host}` });
    }
    if (state.isLongKnown(destination.host, now)) {
      out.push({ name: 'known', delta: -1, corroborates: false, reason: `long-known destination ${destination.host}` });
    }
  }
  if (p) {
    const why = serviceContext(p);
    if (why) out.push({ name: 'context', delta: 1, corroborates: true, reason: why });
    const lin = lineageReason(p);
    if (lin) out.push({ name: 'lineage', delta: 1, corroborates: true, reason: `unusual lineage ${lin}` });
  }
  if (!isWithinBusinessHours(ctx.config.schedule, now)) {
    out.push({ name: 'off-hours', delta: 1, corroborates: false, reason: 'outside business hours' });
  }
  const skip = new Set(input.exclude ?? []);
  return out.filter((m) => !skip.has(m.name));
}

type Family = 'process' | 'volume' | 'duration' | 'fanout';
const FAMILY: Record<BehaviourDetector, Family> = {
  'an0081.proxyware': 'process',
  'an0081.scanner-tool': 'process',
  'an0080.exfil-tool': 'process',
  'an0080.lineage': 'process',
  'an0080.bulk-upload': 'volume',
  'an0080.split-upload': 'volume',
  'an0081.sustained': 'duration',
  'an0080.long-session': 'duration',
  'an0081.scan': 'fanout',
  'an0081.proxyjack': 'fanout',
};

/** Other detectors that corroborate `detector`: ones of a different kind (volume ≠ volume). */
export function corroboratingDetectors(detector: BehaviourDetector, fired: readonly BehaviourDetector[]): BehaviourDetector[] {
  return fired.filter((d) => d !== detector && FAMILY[d] !== FAMILY[detector]);
}

/**
 * How the configured action is gated for this signal:
 * - `config`: the configured action, held back to `flag` when the config says `corroborate: true`
 *   and nothing corroborates;
 * - `corroborate`: always needs corroboration (behaviour-only signals the research lets only flag);
 * - `flag`: only ever flags.
 */
export type Gate = 'config' | 'corroborate' | 'flag';

export interface ScoreInput {
  readonly detector: BehaviourDetector;
  readonly baseLevel: number;
  readonly modifiers: readonly Modifier[];
  readonly settings: DetectorSettings;
  readonly otherDetectors: readonly BehaviourDetector[];
  readonly gate: Gate;
  /** The action also waits until severity reaches this level (lineage: high). */
  readonly minLevelForAction?: number;
  /** Connect-time findings turn `kill` into `block`: there is no live flow yet. */
  readonly connectTime: boolean;
}

export interface Score {
  readonly level: number;
  readonly severity: Severity;
  readonly action: FindingAction;
  readonly reasons: string[];
}

/** Severity after modifiers and the action after corroboration. */
export function score(input: ScoreInput): Score {
  const reasons: string[] = [];
  let level = input.baseLevel;
  for (const m of input.modifiers) {
    level += m.delta;
    reasons.push(`${m.delta > 0 ? '+1' : '-1'} ${m.reason}`);
  }
  // Keep an internal "critical" (3) for gating, show it as high.
  level = Math.max(0, Math.min(3, level));
  const others = corroboratingDetectors(input.detector, input.otherDetectors);
  const corroborated = input.modifiers.some((m) => m.delta > 0 && m.corroborates) || others.length > 0;
  if (others.length > 0) reasons.push(`corroborated by ${others.join(', ')}`);
  let action: FindingAction = input.settings.action;
  if (input.gate === 'flag') action = 'flag';
  else if ((input.gate === 'corroborate' || input.settings.corroborate) && !corroborated && action !== 'flag') {
    action = 'flag';
    reasons.push(`${input.settings.action} held back: corroboration required (no modifier or second detector)`);
  }
  if (input.minLevelForAction !== undefined && level < input.minLevelForAction && action !== 'flag') {
    action = 'flag';
    reasons.push(`${input.settings.action} held back: severity below high`);
  }
  if (input.connectTime && action === 'kill') action = 'block';
  return { level, severity: severityOf(level), action, reasons };
}
