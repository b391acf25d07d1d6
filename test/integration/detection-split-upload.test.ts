/**
 * Live proof of `an0080.split-upload` (research D6a): uploads each under any per-flow budget, spread
 * over many flows to one destination, add up in the identity's window however they travel — CONNECT
 * and SOCKS5, and the spellings of one address (`127.0.0.1`, `[::ffff:127.0.0.1]`, `::ffff:7f00:1`)
 * — and the alert names the flows and bytes that crossed. The same spellings count as one host's
 * ports for `an0081.scan`.
 */
import { once } from 'node:events';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import type { DetectorConfig } from '../../policy/config.ts';
import type { Mode } from '../../policy/types.ts';
import { type TcpOrigin, httpConnect, refusingPorts, tcpOrigin, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

/** 40,000 bytes to one domain within the hour is a split upload; each flow sends 12,000. */
const SPLIT = { action: 'block', windowSec: 3600, bytesOut: 40_000 } as const;
const PART = 12_000;

let gw: TestGateway | null = null;
let sink: (TcpOrigin & { received: () => number }) | null = null;

afterEach(async () => {
  await gw?.stop();
  gw = null;
  await sink?.close();
  sink = null;
});

function start(mode: Mode, detectors: Record<string, Partial<DetectorConfig>> = { 'an0080.split-upload': SPLIT }): Promise<TestGateway> {
  return startTestGateway({ mode, detection: { sampleIntervalMs: 50, quarantineSec: 60, detectors } });
}

/** A TCP sink on 127.0.0.1 that counts what it reads and closes when the client does. */
async function startSink(): Promise<TcpOrigin & { received: () => number }> {
  let received = 0;
  const origin = await tcpOrigin('127.0.0.1', (s) => {
    s.on('data', (c: Buffer) => {
      received += c.length;
    });
    s.on('end', () => s.end());
  });
  return { ...origin, received: () => received };
}

/** `n` bytes through a CONNECT tunnel to `target`, then the client's FIN; resolves when the tunnel closed. */
async function connectUpload(g: TestGateway, target: string, n: number): Promise<void> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, target);
  expect(a.status).toBe(200);
  a.socket.resume();
  a.socket.end(Buffer.alloc(n, 0x41));
  await once(a.socket, 'close');
}

/** `n` bytes through a SOCKS5 CONNECT to `host`:`port` (the socks client sends an IPv6 address as ATYP 4). */
async function socksUpload(g: TestGateway, host: string, port: number, n: number): Promise<void> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
    command: 'connect',
    destination: { host, port },
    timeout: 5000,
  });
  socket.resume();
  socket.end(Buffer.alloc(n, 0x42));
  await once(socket, 'close');
}

describe('an0080.split-upload over many flows', () => {
  it('monitor: four 12,000-byte uploads to one address under three spellings and two protocols add up; the alert names all four flows', async () => {
    sink = await startSink();
    gw = await start('monitor');
    const p = sink.port;
    const g = gw;
    // A sweep between flows: each flow is folded on its own, as uploads spread over time are.
    await connectUpload(g, `127.0.0.1:${p}`, PART);
    await waitForSweeps(g.flows, 2);
    await connectUpload(g, `[::ffff:127.0.0.1]:${p}`, PART);
    await waitForSweeps(g.flows, 2);
    await socksUpload(g, '::ffff:127.0.0.1', p, PART);
    await waitForSweeps(g.flows, 2);
    expect(g.alerts.list({ detector: 'an0080.split-upload' })).toEqual([]);
    await connectUpload(g, `[::ffff:7f00:1]:${p}`, PART);

    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0080.split-upload');
    expect(sink.received()).toBe(4 * PART);
    const records = g.closed.filter((r) => r.destination.port === p);
    expect(records.map((r) => [r.bytesOut, r.verdict])).toEqual([
      [PART, 'allow'],
      [PART, 'allow'],
      [PART, 'allow'],
      [PART, 'allow'],
    ]);
    expect(alert.action).toBe('would-block');
    expect(alert.enforced).toBe(false);
    expect(alert.evidence).toMatchObject({ bytesOut: 4 * PART, bytesIn: 0, thresholdBytesOut: SPLIT.bytesOut, domain: '127.0.0.1', flows: 4 });
    // Every flow whose bytes are in the window, not only the one folded by the sweep that crossed.
    expect(alert.flowIds).toEqual(records.map((r) => r.id));
    await waitForSweeps(g.flows, 3);
    expect(g.alerts.list({ detector: 'an0080.split-upload' })).toHaveLength(1);
  });

  it('enforce: the upload that crosses the window quarantines the identity (its next CONNECT is 403 quarantine)', async () => {
    sink = await startSink();
    gw = await start('enforce');
    const p = sink.port;
    const g = gw;
    for (const target of [`127.0.0.1:${p}`, `[::ffff:127.0.0.1]:${p}`, `127.0.0.1:${p}`, `[::ffff:7f00:1]:${p}`]) {
      await connectUpload(g, target, PART);
      await waitForSweeps(g.flows, 2);
    }
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0080.split-upload');
    expect(alert).toMatchObject({ action: 'block', enforced: true });
    expect(alert.evidence['bytesOut']).toBe(4 * PART);
    expect(alert.flowIds).toEqual(g.closed.filter((r) => r.destination.port === p).map((r) => r.id));
    const q = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${p}`);
    expect(q.status).toBe(403);
    expect(JSON.parse(q.body)).toMatchObject({ reason: 'quarantine' });
    expect(sink.received()).toBe(4 * PART);
  });
});

describe('an0080.split-upload next to an approved upload destination of the same domain', () => {
  it('monitor: uploads to up.sink.test each followed by one byte to the approved backup.sink.test are caught, with only their own bytes', async () => {
    sink = await startSink();
    gw = await startTestGateway({
      mode: 'monitor',
      approvedUploadDestinations: ['backup.sink.test'],
      resolver: { hosts: { 'up.sink.test': '127.0.0.1', 'backup.sink.test': '127.0.0.1' } },
      detection: { sampleIntervalMs: 50, detectors: { 'an0080.split-upload': SPLIT } },
    });
    const p = sink.port;
    const g = gw;
    for (let i = 0; i < 4; i++) {
      await connectUpload(g, `up.sink.test:${p}`, PART);
      // The approved destination's flow ends last, in the same sweep.
      await connectUpload(g, `backup.sink.test:${p}`, 1);
      await waitForSweeps(g.flows, 2);
    }
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0080.split-upload');
    expect(sink.received()).toBe(4 * PART + 4);
    expect(alert.action).toBe('would-block');
    expect(alert.destination?.host).toBe('up.sink.test');
    // Only the non-approved destination's bytes and flows: the approved uploads are not the alert's.
    expect(alert.evidence).toMatchObject({ bytesOut: 4 * PART, domain: 'sink.test', flows: 4 });
    const up = g.closed.filter((r) => r.destination.host === 'up.sink.test').map((r) => r.id);
    expect(up).toHaveLength(4);
    expect(alert.flowIds).toEqual(up);
  });

  it('monitor: large uploads to the approved host and two bytes elsewhere in its domain raise nothing', async () => {
    sink = await startSink();
    gw = await startTestGateway({
      mode: 'monitor',
      approvedUploadDestinations: ['backup.sink.test'],
      resolver: { hosts: { 'up.sink.test': '127.0.0.1', 'backup.sink.test': '127.0.0.1' } },
      detection: { sampleIntervalMs: 50, detectors: { 'an0080.split-upload': SPLIT } },
    });
    const p = sink.port;
    const g = gw;
    for (let i = 0; i < 4; i++) await connectUpload(g, `backup.sink.test:${p}`, PART);
    await waitForSweeps(g.flows, 2);
    await connectUpload(g, `up.sink.test:${p}`, 1);
    await connectUpload(g, `up.sink.test:${p}`, 1);
    await waitForSweeps(g.flows, 4);
    expect(sink.received()).toBe(4 * PART + 2);
    expect(g.alerts.list({ detector: 'an0080.split-upload' })).toEqual([]);
  });
});

describe('an0080.split-upload: the identity’s 24 h upload total', () => {
  it('monitor: three 12,000-byte uploads to three domains cross dayBytesOut 30,000; the alert names the three flows', async () => {
    sink = await startSink();
    const names = ['one.example', 'two.example', 'three.example'];
    gw = await startTestGateway({
      mode: 'monitor',
      resolver: { hosts: Object.fromEntries(names.map((n) => [n, '127.0.0.1'])) },
      detection: { sampleIntervalMs: 50, detectors: { 'an0080.split-upload': { action: 'block', bytesOut: 1_000_000, dayBytesOut: 30_000 } } },
    });
    const g = gw;
    for (const n of names) {
      await connectUpload(g, `${n}:${sink.port}`, PART);
      await waitForSweeps(g.flows, 2);
    }
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0080.split-upload');
    expect(alert.action).toBe('would-block');
    expect(alert.evidence).toMatchObject({ windowSec: 86_400, bytesOut: 3 * PART, thresholdBytesOut: 30_000 });
    expect(alert.flowIds).toEqual(g.closed.filter((r) => r.destination.port === sink?.port).map((r) => r.id));
    expect(alert.flowIds).toHaveLength(3);
  });
});

describe('an0081.scan over the spellings of one address', () => {
  it('monitor: refused ports of 127.0.0.1 named as 127.0.0.1 and as ::ffff:127.0.0.1 are one host’s port scan', async () => {
    gw = await start('monitor', { 'an0081.scan': { action: 'block', windowSec: 60, failedPortsOnOneHost: 6, failedDestinations: 50 } });
    const g = gw;
    const ports = await refusingPorts('127.0.0.1', 8);
    for (const [i, port] of ports.entries()) {
      const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, i % 2 === 0 ? `127.0.0.1:${port}` : `[::ffff:127.0.0.1]:${port}`);
      expect(a.status).toBe(502);
    }
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert.action).toBe('would-block');
    expect(alert.evidence).toMatchObject({ kind: 'port-scan' });
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeGreaterThanOrEqual(6);
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeLessThanOrEqual(8);
  });
});
