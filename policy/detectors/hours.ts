/**
 * Business hours (SPEC §3 `schedule`) as a pure function of `now`. Private to the detectors so they
 * do not wait on policy/schedule.ts; same semantics: the days listed, `start` ≤ local time < `end`.
 */
import type { Config } from '../config.ts';

const DAY_NAMES = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  return f;
}

function minutesOf(hhmm: string): number {
  const [h, m] = hhmm.split(':');
  return Number(h) * 60 + Number(m ?? 0);
}

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
  let parts: Intl.DateTimeFormatPart[];
  try {
    parts = formatter(schedule.timezone).formatToParts(new Date(now));
  } catch {
    parts = formatter('UTC').formatToParts(new Date(now));
  }
  let day = '';
  let hour = 0;
  let minute = 0;
  for (const p of parts) {
    if (p.type === 'weekday') day = p.value.slice(0, 3).toLowerCase();
    else if (p.type === 'hour') hour = Number(p.value) % 24;
    else if (p.type === 'minute') minute = Number(p.value);
  }
  if (!DAY_NAMES.includes(day as (typeof DAY_NAMES)[number])) return true;
  if (!schedule.businessHours.days.includes(day as (typeof schedule.businessHours.days)[number])) return false;
  const t = hour * 60 + minute;
  return t >= minutesOf(schedule.businessHours.start) && t < minutesOf(schedule.businessHours.end);
}
