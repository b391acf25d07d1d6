/**
 * Business hours (SPEC §3 `schedule`) for the detectors' out-of-hours modifier: policy/schedule.ts
 * decides (the days listed, `start` ≤ local time < `end`, a window that wraps midnight belonging to
 * the day it starts on); this adds a per-minute cache, as a sweep asks once per finding.
 */
import type { Config } from '../config.ts';
import { isBusinessHours } from '../schedule.ts';

// Intl formatting is the expensive part; the answer only changes per minute and schedule.
const minuteCache = new WeakMap<Config['schedule'], Map<number, boolean>>();

/** True when `now` falls inside the configured business hours in the schedule's time zone. */
export function isWithinBusinessHours(schedule: Config['schedule'], now: number): boolean {
  const minute = Math.floor(now / 60_000);
  let m = minuteCache.get(schedule);
  if (!m) {
    m = new Map();
    minuteCache.set(schedule, m);
  }
  const hit = m.get(minute);
  if (hit !== undefined) return hit;
  if (m.size >= 4096) m.clear();
  const v = compute(schedule, now);
  m.set(minute, v);
  return v;
}

function compute(schedule: Config['schedule'], now: number): boolean {
  try {
    return isBusinessHours(schedule, now);
  } catch {
    // A zone Intl does not know (the schema refuses one; a config built in code may not be checked).
    return isBusinessHours({ ...schedule, timezone: 'UTC' }, now);
  }
}
