/**
 * An alert stream resumed with Last-Event-ID across a restart of the gateway, through the real
 * listeners: scan alerts raised by CONNECT sweeps of 10.255.9.1-6:80 (deny-range: refused before any
 * dial, nothing leaves loopback), each from its own loopback address. The event ids started at 1
 * again in every run, so the id a reader held from the run before skipped the new run's first
 * alerts: with 1 alert raised before it reconnected (its id 2 beyond the newest, 1) the stream
 * started from now and lost it; with 3 raised, it replayed only the 3rd. Now a run's ids start above
 * its start time (ms), above every id an earlier run gave out, and the reader gets every alert the
 * new run raised, in order, once.
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { httpConnect } from '../helpers/detection-live.ts';
import { adminGet, startTestGateway, type TestGateway, TEST_ADMIN_TOKEN, until } from '../helpers/gateway.ts';

const SCAN = { action: 'flag', windowSec: 60, failedDestinations: 4, failedPortsOnOneHost: 100 } as const;

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

function start(): Promise<TestGateway> {
  return startTestGateway({ mode: 'monitor', detection: { sampleIntervalMs: 50, quarantineSec: 0, detectors: { 'an0081.scan': SCAN } } });
}

interface Stream {
  /** Each event's id and its alert's id, in the order they came. */
  events(): Array<{ eventId: number; alertId: string }>;
}

/** GET /v1/alerts/stream over a raw socket, resuming from `lastEventId` if given. */
async function openStream(gw: TestGateway, lastEventId?: number): Promise<Stream> {
  const at = gw.admin.lastIndexOf(':');
  const s: Socket = connect(Number(gw.admin.slice(at + 1)), gw.admin.slice(0, at));
  s.on('error', () => undefined);
  cleanups.push(() => s.destroy());
  let text = '';
  s.on('data', (b: Buffer) => {
    text += b.toString('utf8');
  });
  const resume = lastEventId === undefined ? '' : `Last-Event-ID: ${lastEventId}\r\n`;
  s.write(`GET /v1/alerts/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TEST_ADMIN_TOKEN}\r\n${resume}\r\n`);
  await until('the stream is open', () => text.includes(': connected'));
  return {
    events: () =>
      [...text.matchAll(/^id: (\d+)\nevent: alert\ndata: (.*)$/gm)].map((m) => ({ eventId: Number(m[1]), alertId: (JSON.parse(m[2] as string) as { id: string }).id })),
  };
}

/** The alert ids /v1/alerts lists, oldest first. */
async function listed(gw: TestGateway): Promise<string[]> {
  return (JSON.parse((await adminGet(gw, '/v1/alerts?limit=1000')).text) as { alerts: Array<{ id: string }> }).alerts.map((a) => a.id);
}

/** One scan alert: 6 refused CONNECTs from `from`, waited for in /v1/alerts. */
async function raiseAlert(gw: TestGateway, from: string): Promise<void> {
  const before = (await listed(gw)).length;
  for (let i = 1; i <= 6; i++) {
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `10.255.9.${i}:80`, { localAddress: from });
    expect(a.status).toBe(403);
    a.socket.destroy();
  }
  await until('the scan alert', async () => (await listed(gw)).length > before, 10_000);
}

describe('alert stream: Last-Event-ID from before a restart', () => {
  it('resumes with every alert the new run raised, before and after the reconnect', async () => {
    // Run 1: a reader sees two alerts, then the gateway stops.
    const first = await start();
    const reader = await openStream(first);
    await raiseAlert(first, '127.0.0.2');
    await raiseAlert(first, '127.0.0.3');
    await until('the reader has both', () => reader.events().length === 2);
    const held = Math.max(...reader.events().map((e) => e.eventId));
    await first.stop();

    // Run 2: one alert before the first reader reconnects, two more before the second does, one after.
    const second = await start();
    cleanups.push(() => second.stop());
    await raiseAlert(second, '127.0.0.4');
    const early = await openStream(second, held);
    await raiseAlert(second, '127.0.0.5');
    await raiseAlert(second, '127.0.0.6');
    const late = await openStream(second, held);
    await raiseAlert(second, '127.0.0.7');
    const all = await listed(second);
    expect(all).toHaveLength(4);
    await until('the readers have had the last alert', () => [early, late].every((r) => r.events().some((e) => e.alertId === all[3])));
    for (const r of [early, late]) {
      expect(r.events().map((e) => e.alertId)).toEqual(all);
      const ids = r.events().map((e) => e.eventId);
      expect(ids.every((id, i) => id > held && (i === 0 || id > (ids[i - 1] as number)))).toBe(true);
    }
  });
});
