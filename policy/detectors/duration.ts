/**
 * Long-flow detectors (research D4a, AN0080 long sessions).
 *
 * - `an0081.sustained`: a flow open ≥ `minDurationSec` averaging ≥ `minBytesPerSec` in its
 *   dominant direction; low, one step more at 4 h and 8 h (RITA long-connection tiers).
 * - `an0080.long-session`: a flow open ≥ `minDurationSec` to a destination first seen within
 *   `rareWithinDays` (silent while the baseline is still learning).
 */
import type { DetectionContext } from './context.ts';
import { fmtBytes, viewKey } from './match.ts';
import type { SweepSignal } from './signal.ts';
import type { DetectionState } from './state.ts';
import type { FlowView } from './types.ts';

const HOUR_MS = 3_600_000;

/** Sustained-traffic signal for one flow, or null. */
export function sustainedSignal(f: FlowView, idKey: string, ctx: DetectionContext, now: number): SweepSignal | null {
  const s = ctx.settings('an0081.sustained');
  const durMs = (f.endedAtMs ?? now) - f.startedAtMs;
  const minDur = (s.n['minDurationSec'] ?? 3600) * 1000;
  if (durMs < minDur) return null;
  if (ctx.isSkipped('an0081.sustained', f.identity, f.destination.host, f.clientIp)) return null;
  const rate = Math.max(f.bytesOut, f.bytesIn) / (durMs / 1000);
  const minRate = s.n['minBytesPerSec'] ?? 8000;
  if (rate < minRate) return null;
  const tier = durMs >= 8 * HOUR_MS ? 2 : durMs >= 4 * HOUR_MS ? 1 : 0;
  return {
    detector: 'an0081.sustained',
    analytic: 'AN0081',
    idKey,
    identity: f.identity,
    clientIp: f.clientIp,
    baseLevel: tier,
    gate: 'config',
    destination: f.destination,
    flowIds: [f.id],
    evidence: { durationSec: Math.round(durMs / 1000), bytesPerSec: Math.round(rate), minDurationSec: minDur / 1000, minBytesPerSec: minRate },
    reason: `flow open ${(durMs / HOUR_MS).toFixed(1)} h at ${fmtBytes(Math.round(rate))}/s (≥ ${fmtBytes(minRate)}/s)`,
    key: `an0081.sustained|${viewKey(f)}`,
  };
}

/** Long session to a rare destination, or null. */
export function longSessionSignal(f: FlowView, idKey: string, state: DetectionState, ctx: DetectionContext, now: number): SweepSignal | null {
  const s = ctx.settings('an0080.long-session');
  const durMs = (f.endedAtMs ?? now) - f.startedAtMs;
  const minDur = (s.n['minDurationSec'] ?? 3600) * 1000;
  const days = s.n['rareWithinDays'] ?? 7;
  if (durMs < minDur || !state.isRare(f.destination.host, now, days)) return null;
  if (ctx.isSkipped('an0080.long-session', f.identity, f.destination.host, f.clientIp)) return null;
  return {
    detector: 'an0080.long-session',
    analytic: 'AN0080',
    idKey,
    identity: f.identity,
    clientIp: f.clientIp,
    baseLevel: 1,
    gate: 'config',
    exclude: ['rare'],
    destination: f.destination,
    flowIds: [f.id],
    evidence: { durationSec: Math.round(durMs / 1000), minDurationSec: minDur / 1000, rareWithinDays: days, bytesOut: f.bytesOut, bytesIn: f.bytesIn },
    reason: `session open ${(durMs / HOUR_MS).toFixed(1)} h to ${f.destination.host}, first seen within ${days} d`,
    key: `an0080.long-session|${viewKey(f)}`,
  };
}
