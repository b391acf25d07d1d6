/**
 * Business hours in an IANA time zone (SPEC §3 `schedule`), computed with Intl only. Out-of-hours
 * activity raises a detector's severity; it never blocks by itself (SPEC §4).
 */
import type { Config } from './config.ts';
import type { PolicySnapshot } from './types.ts';

export type ScheduleConfig = Config['schedule'];
type Day = ScheduleConfig['businessHours']['days'][number];

const DAYS: readonly Day[] = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const WEEKDAY_INDEX: Readonly<Record<string, number>> = { Sun: 0, Mon: 1, Tue: 2, Wed: 3, Thu: 4, Fri: 5, Sat: 6 };

// Building a DateTimeFormat costs tens of µs; one per zone is enough.
const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (f === undefined) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  return f;
}

/** Local weekday and minute of the day at `now` (ms since epoch) in `timeZone`. */
export function localTime(timeZone: string, now: number): { day: Day; minutes: number } {
  let weekday = 0;
  let hour = 0;
  let minute = 0;
  for (const p of formatter(timeZone).formatToParts(now)) {
    if (p.type === 'weekday') weekday = WEEKDAY_INDEX[p.value] ?? 0;
    else if (p.type === 'hour') hour = Number(p.value) % 24;
    else if (p.type === 'minute') minute = Number(p.value);
  }
  return { day: DAYS[weekday]!, minutes: hour * 60 + minute };
}

function toMinutes(hhmm: string): number {
  return Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));
}

/**
 * True when `now` falls in business hours: a listed day and start <= local time < end. A window
 * that wraps midnight (start after end, e.g. 22:00–06:00) belongs to the day it starts on.
 * Accepts a snapshot or the `schedule` section itself.
 */
export function isBusinessHours(source: PolicySnapshot | ScheduleConfig, now: number): boolean {
  const schedule = 'config' in source ? source.config.schedule : source;
  const { days, start, end } = schedule.businessHours;
  const { day, minutes } = localTime(schedule.timezone, now);
  const s = toMinutes(start);
  const e = toMinutes(end);
  if (s < e) return days.includes(day) && minutes >= s && minutes < e;
  if (s === e) return false;
  const yesterday = DAYS[(DAYS.indexOf(day) + 6) % 7]!;
  return (days.includes(day) && minutes >= s) || (days.includes(yesterday) && minutes < e);
}
