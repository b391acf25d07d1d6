/**
 * Business hours that wrap midnight (SPEC §3 `schedule`; `start` after `end`, e.g. a night shift
 * 22:00–06:00) belong to the day they start on, as policy/schedule.ts decides. The gateway's clock
 * (the `now` seam) is set to a moment of the shift, and a port fan-out from one identity raises an
 * `an0081.scan` flag through the real listeners: its alert must not carry the out-of-hours modifier.
 * Two moments outside the shift are the control. The time zones with DST are on their transition
 * night (Berlin springs forward 2026-03-29, New York falls back 2026-11-01).
 *
 * Regression: the detectors judged business hours with `start <= time < end` only, so a window that
 * wraps midnight was never business hours: a scan at Monday 23:00 UTC, inside a Monday 22:00–06:00
 * shift, was alerted with `+1 outside business hours` (one severity step up), in 4 of these 7 cases.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import { type TcpOrigin, echoOrigin, httpConnect, refusingPorts, waitForAlert } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

const SCAN = { action: 'flag', windowSec: 60, failedPortsOnOneHost: 4, failedDestinations: 50 } as const;
const OFF_HOURS = '+1 outside business hours';

type Days = Config['schedule']['businessHours']['days'];
const shift = (timezone: string, days: Days): Config['schedule'] => ({ timezone, businessHours: { days, start: '22:00', end: '06:00' } });

let good: TcpOrigin;
let gw: TestGateway | null = null;

beforeAll(async () => {
  good = await echoOrigin('127.0.0.1');
});
afterAll(async () => {
  await good?.close();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});

/** The an0081.scan alert of a fan-out to closed loopback ports, the gateway's clock set to `at`. */
async function scanAlertAt(schedule: Config['schedule'], at: string): Promise<{ reasons: readonly string[] }> {
  const offsetMs = Date.parse(at) - Date.now();
  gw = await startTestGateway(
    { mode: 'monitor', schedule, detection: { sampleIntervalMs: 50, detectors: { 'an0081.scan': SCAN } } },
    { now: () => Date.now() + offsetMs },
  );
  for (const port of await refusingPorts('127.0.0.1', SCAN.failedPortsOnOneHost + 2)) {
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${port}`, { localAddress: '127.0.0.7' });
    expect(a.status).toBe(502);
  }
  const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
  expect(alert.action).toBe('flag');
  return { reasons: alert.reasons };
}

describe('business hours across midnight, judged by the live detectors', () => {
  const cases: Array<[string, Config['schedule'], string, boolean]> = [
    ['UTC Monday shift, Monday 23:00', shift('UTC', ['mon']), '2026-03-02T23:00:00Z', true],
    ['UTC Monday shift, Tuesday 05:30', shift('UTC', ['mon']), '2026-03-03T05:30:00Z', true],
    ['UTC Monday shift, Monday 12:00 (control)', shift('UTC', ['mon']), '2026-03-02T12:00:00Z', false],
    ['UTC Monday shift, Monday 05:30 (Sunday night, not a shift)', shift('UTC', ['mon']), '2026-03-02T05:30:00Z', false],
    ['Berlin Saturday shift, Sunday 03:30 CEST (after spring-forward)', shift('Europe/Berlin', ['sat']), '2026-03-29T01:30:00Z', true],
    ['New York Saturday shift, Sunday 05:30 EST (after fall-back)', shift('America/New_York', ['sat']), '2026-11-01T10:30:00Z', true],
    ['New York Saturday shift, Sunday 06:30 EST (after it)', shift('America/New_York', ['sat']), '2026-11-01T11:30:00Z', false],
  ];
  it.each(cases)('%s', async (_name, schedule, at, isInHours) => {
    const { reasons } = await scanAlertAt(schedule, at);
    expect(reasons.includes(OFF_HOURS)).toBe(!isInHours);
  });
});
