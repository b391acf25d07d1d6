import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../policy/compile.ts';
import { defaultConfig } from '../../../policy/config.ts';
import { isBusinessHours, localTime, type ScheduleConfig } from '../../../policy/schedule.ts';

const WEEKDAYS: ScheduleConfig['businessHours']['days'] = ['mon', 'tue', 'wed', 'thu', 'fri'];
const sched = (timezone: string, start = '08:00', end = '18:00', days = WEEKDAYS): ScheduleConfig => ({ timezone, businessHours: { days, start, end } });
const t = (iso: string) => Date.parse(iso);

describe('isBusinessHours', () => {
  const table: Array<[string, ScheduleConfig, string, boolean]> = [
    ['UTC start is inclusive', sched('UTC'), '2026-03-04T08:00:00Z', true],
    ['UTC end is exclusive', sched('UTC'), '2026-03-04T18:00:00Z', false],
    ['UTC one minute before start', sched('UTC'), '2026-03-04T07:59:59Z', false],
    ['UTC saturday', sched('UTC'), '2026-03-07T12:00:00Z', false],
    // New York: EST (UTC-5) until 2026-03-08 07:00Z, EDT (UTC-4) after.
    ['NY friday before DST, 07:30 EST', sched('America/New_York'), '2026-03-06T12:30:00Z', false],
    ['NY friday before DST, 08:00 EST', sched('America/New_York'), '2026-03-06T13:00:00Z', true],
    ['NY monday after DST, 08:30 EDT', sched('America/New_York'), '2026-03-09T12:30:00Z', true],
    ['NY monday after DST, 07:59 EDT', sched('America/New_York'), '2026-03-09T11:59:00Z', false],
    ['NY monday after DST, 17:59 EDT', sched('America/New_York'), '2026-03-09T21:59:00Z', true],
    ['NY monday after DST, 18:00 EDT', sched('America/New_York'), '2026-03-09T22:00:00Z', false],
    ['NY DST sunday is not a weekday', sched('America/New_York'), '2026-03-08T14:00:00Z', false],
    // New York falls back 2026-11-01: Monday 2026-11-02 08:00 EST = 13:00Z.
    ['NY after fall-back, 07:30 EST', sched('America/New_York'), '2026-11-02T12:30:00Z', false],
    ['NY after fall-back, 08:00 EST', sched('America/New_York'), '2026-11-02T13:00:00Z', true],
    // Berlin: CET (UTC+1) until 2026-03-29 01:00Z, CEST (UTC+2) after.
    ['Berlin friday before DST, 08:00 CET', sched('Europe/Berlin'), '2026-03-27T07:00:00Z', true],
    ['Berlin friday before DST, 07:30 CET', sched('Europe/Berlin'), '2026-03-27T06:30:00Z', false],
    ['Berlin monday after DST, 08:30 CEST', sched('Europe/Berlin'), '2026-03-30T06:30:00Z', true],
    ['Berlin monday after DST, 18:00 CEST', sched('Europe/Berlin'), '2026-03-30T16:00:00Z', false],
    ['Berlin monday after fall-back, 08:00 CET', sched('Europe/Berlin'), '2026-10-26T07:00:00Z', true],
    ['Berlin monday after fall-back, 07:00 CET', sched('Europe/Berlin'), '2026-10-26T06:00:00Z', false],
    // Day boundary differs by zone: Friday 23:30Z is Saturday morning in Tokyo.
    ['Tokyo saturday morning', sched('Asia/Tokyo', '08:00', '18:00'), '2026-03-06T23:30:00Z', false],
    ['Tokyo friday morning', sched('Asia/Tokyo'), '2026-03-05T23:30:00Z', true],
    ['Kolkata half-hour offset 08:00', sched('Asia/Kolkata'), '2026-03-04T02:30:00Z', true],
    ['Kolkata half-hour offset 07:59', sched('Asia/Kolkata'), '2026-03-04T02:29:00Z', false],
    // Windows across midnight belong to the day they start on.
    ['night shift monday 23:00', sched('UTC', '22:00', '06:00', ['mon']), '2026-03-02T23:00:00Z', true],
    ['night shift tuesday 05:59', sched('UTC', '22:00', '06:00', ['mon']), '2026-03-03T05:59:00Z', true],
    ['night shift monday 05:00 belongs to sunday', sched('UTC', '22:00', '06:00', ['mon']), '2026-03-02T05:00:00Z', false],
    ['all day 00:00-24:00', sched('UTC', '00:00', '24:00'), '2026-03-04T23:59:00Z', true],
  ];
  it.each(table)('%s', (_name, schedule, iso, want) => {
    expect(isBusinessHours(schedule, t(iso))).toBe(want);
  });

  it('reads the schedule from a snapshot', () => {
    const c = defaultConfig();
    c.schedule = sched('Europe/Berlin');
    const snap = compilePolicy(c);
    expect(isBusinessHours(snap, t('2026-03-30T06:30:00Z'))).toBe(true);
    expect(isBusinessHours(snap, t('2026-03-29T06:30:00Z'))).toBe(false);
  });

  it('localTime gives weekday and minutes', () => {
    expect(localTime('America/New_York', t('2026-03-09T12:30:00Z'))).toEqual({ day: 'mon', minutes: 8 * 60 + 30 });
    expect(localTime('UTC', t('2026-03-08T00:00:00Z'))).toEqual({ day: 'sun', minutes: 0 });
  });
});
