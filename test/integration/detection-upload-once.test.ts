/**
 * One upload cut (or, monitored, marked) at its an0080.bulk-upload byte budget is one alert, scored
 * as the sweep scores the same flow.
 *
 * Regression: the budget's alert was always `high`, whatever the modifiers said; the sweep that next
 * saw the flow over the threshold (killed, as it was folded; monitored, as it ran on) scored it
 * `medium` for a destination long known (−1) on an unusual port (+1), took the other severity for an
 * escalation and alerted the same upload a second time, and the quarantine then named that second
 * alert. Through a real gateway: a 3 MiB CONNECT upload and a 1 MiB budget gave a kill `high` then a
 * kill `medium` in enforce mode, a would-kill `high` then a would-kill `medium` in monitor mode (the
 * same with the sink on port 443, where no modifier applies at all).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { MiB, type TcpOrigin, httpConnect, tcpOrigin, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { type TestGateway, adminGet, startTestGateway } from '../helpers/gateway.ts';

const BUDGET = 1 * MiB;
const UPLOAD = 3 * MiB;
const DAY_MS = 86_400_000;

let gw: TestGateway | null = null;
let sink: TcpOrigin | null = null;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'egw-upload-once-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
  await sink?.close();
  sink = null;
});

/**
 * A gateway whose baselines know 127.0.0.1 for 40 days (the `long-known` −1 offsets the sink's
 * unusual port), business hours all week (no off-hours +1): the upload scores `medium`.
 */
function start(mode: Mode, name: string): Promise<TestGateway> {
  const path = join(dir, `${name}.json`);
  const longAgo = Date.now() - 40 * DAY_MS;
  writeFileSync(path, JSON.stringify({ version: 1, learningStartedAtMs: longAgo, firstSeen: [['127.0.0.1', longAgo]], hourlyOut: [] }));
  return startTestGateway({
    mode,
    state: { path },
    schedule: { timezone: 'UTC', businessHours: { days: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'], start: '00:00', end: '24:00' } },
    detection: { sampleIntervalMs: 50, quarantineSec: 600, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: BUDGET, minRatio: 10 } } },
  });
}

/** Write `total` bytes with backpressure until done or the tunnel is cut; then half-close and wait for the close. */
async function upload(socket: Socket, total: number): Promise<void> {
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  let written = 0;
  let isClosed = false;
  socket.on('error', () => undefined);
  const closed = new Promise<void>((r) =>
    socket.once('close', () => {
      isClosed = true;
      r();
    }),
  );
  socket.resume();
  while (written < total && !isClosed) {
    written += chunk.length;
    if (!socket.write(chunk)) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
  }
  if (!isClosed) socket.end();
  await closed;
}

describe('an0080.bulk-upload at its byte budget: one alert per upload', () => {
  for (const mode of ['enforce', 'monitor'] as const) {
    it(`${mode}: scored as the sweep scores it (medium), not alerted again by the sweep; the quarantine names that alert`, async () => {
      gw = await start(mode, mode);
      sink = await tcpOrigin('127.0.0.1', (s) => {
        s.resume();
        s.on('end', () => s.end());
      });
      const t = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${sink.port}`);
      expect(t.status).toBe(200);
      await upload(t.socket, UPLOAD);
      const rec = await gw.waitForClosed((r) => r.destination.port === sink?.port);
      expect(rec.bytesOut).toBe(mode === 'enforce' ? BUDGET : UPLOAD);
      expect(rec.closeReason).toBe(mode === 'enforce' ? 'an0080.bulk-upload' : 'closed');
      const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
      expect([alert.action, alert.severity, alert.flowIds]).toEqual([mode === 'enforce' ? 'kill' : 'would-kill', 'medium', [rec.id]]);
      expect(alert.evidence['bytesOut']).toBe(BUDGET);
      expect(alert.reasons).toContain('+1 unusual port ' + String(sink.port));
      expect(alert.reasons).toContain('-1 long-known destination 127.0.0.1');
      // The sweeps after the close have seen the flow, over the threshold, folded or still counted.
      await waitForSweeps(gw.flows, 3);
      expect(gw.alerts.list().filter((a) => a.detector === 'an0080.bulk-upload').map((a) => `${a.action}/${a.severity}`)).toEqual([
        `${alert.action}/medium`,
      ]);
      const q = await adminGet(gw, '/v1/quarantines');
      expect(q.status).toBe(200);
      const list = (JSON.parse(q.text) as { quarantines: Array<{ key: string; alertId: string | null }> }).quarantines;
      expect(list.map((e) => [e.key, e.alertId])).toEqual([['127.0.0.1|-|-', alert.id]]);
    });
  }
});
