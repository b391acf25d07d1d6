/**
 * Live proof (issue 5): a port fan-out to closed loopback ports through the real listeners trips
 * `an0081.scan`; enforced, the identity is quarantined (its next CONNECT to a good origin is 403
 * `quarantine`) while another identity is not; monitored, the alert says would-block and nothing
 * is refused. The same fan-out over SOCKS5 (the `socks` client) is caught too.
 */
import { request } from 'node:http';
import { SocksClient } from 'socks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { type TcpOrigin, echoOrigin, echoRoundTrip, httpConnect, refusingPorts, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

/** Small thresholds: 6 failed ports on one host within 60 s is a port scan. */
const SCAN = { action: 'block', windowSec: 60, failedPortsOnOneHost: 6, failedDestinations: 50 } as const;
const FANOUT = 10;

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

/** A SOCKS5 CONNECT to the good origin, from `localAddress` when given. */
function socksToGood(g: TestGateway, localAddress?: string): ReturnType<typeof SocksClient.createConnection> {
  return SocksClient.createConnection({
    proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
    command: 'connect',
    destination: { host: '127.0.0.1', port: good.port },
    timeout: 5000,
    // The socks client overrides host and port with the proxy's; only the source address is ours.
    ...(localAddress ? { socket_options: { host: g.socksHost, port: g.socksPort, localAddress } } : {}),
  });
}

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({ mode, detection: { sampleIntervalMs: 50, quarantineSec: 60, detectors: { 'an0081.scan': SCAN } } });
}

/**
 * CONNECT to each closed port from `localAddress`. Every answer is 502 connection-refused until the
 * identity is quarantined (enforce: the sweep may act mid-fan-out), then 403 quarantine. Returns
 * the reasons in order.
 */
async function connectFanOut(g: TestGateway, localAddress: string, ports: number[]): Promise<string[]> {
  const reasons: string[] = [];
  for (const port of ports) {
    const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${port}`, { localAddress });
    const reason = String((JSON.parse(a.body) as { reason?: unknown }).reason);
    expect([a.status, reason]).toEqual(reasons.includes('quarantine') || reason === 'quarantine' ? [403, 'quarantine'] : [502, 'connection-refused']);
    reasons.push(reason);
  }
  return reasons;
}

/** A CONNECT to the good echo origin from `localAddress` that must be established and carry bytes. */
async function goodTunnel(g: TestGateway, localAddress: string): Promise<void> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${good.port}`, { localAddress });
  expect(a.status).toBe(200);
  await echoRoundTrip(a.socket, Buffer.from('still allowed'));
  a.socket.destroy();
}

describe('an0081.scan over HTTP CONNECT', () => {
  it('enforce: port fan-out → alert with evidence, identity quarantined (403 quarantine), other identities unaffected', async () => {
    gw = await start('enforce');
    const scanner = '127.0.0.2';
    await goodTunnel(gw, scanner);
    const ports = await refusingPorts('127.0.0.1', FANOUT);
    const reasons = await connectFanOut(gw, scanner, ports);
    expect(reasons.filter((r) => r === 'connection-refused').length).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);

    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert.analytic).toBe('AN0081');
    expect(alert.action).toBe('block');
    expect(alert.enforced).toBe(true);
    expect(alert.evidence['kind']).toBe('port-scan');
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeLessThanOrEqual(FANOUT);
    expect(alert.evidence['windowSec']).toBe(SCAN.windowSec);
    expect(alert.flowIds.length).toBeGreaterThan(0);
    const failedIds = new Set(gw.closed.filter((r) => r.closeReason === 'connection-refused').map((r) => r.id));
    for (const id of alert.flowIds) expect(failedIds.has(id)).toBe(true);

    // The scanning identity's next CONNECT to a good origin is refused: quarantine.
    const q = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: scanner });
    expect(q.status).toBe(403);
    expect(q.headers['x-egress-verdict']).toBe('block');
    expect(JSON.parse(q.body)).toMatchObject({ error: 'egress denied', reason: 'quarantine' });
    const rec = await gw.waitForClosed((r) => r.client.ip === scanner && r.destination.port === good.port && r.verdict === 'block');
    expect(rec.reason).toBe('quarantine');
    expect(rec.bytesOut).toBe(0);

    // The quarantine is the identity's, not the listener's: SOCKS5 from the same client is refused.
    const g = gw;
    await expect(socksToGood(g, scanner)).rejects.toThrow(/NotAllowed/);
    const viaSocks = await g.waitForClosed((r) => r.protocol === 'socks5' && r.client.ip === scanner);
    expect(viaSocks.reason).toBe('quarantine');

    // Quarantine is per identity: another client address still gets through.
    await goodTunnel(gw, '127.0.0.3');
  });

  it('monitor: the same fan-out → would-block alert, nothing refused afterwards (recorded would-block quarantine)', async () => {
    gw = await start('monitor');
    const scanner = '127.0.0.2';
    const ports = await refusingPorts('127.0.0.1', FANOUT);
    const reasons = await connectFanOut(gw, scanner, ports);
    expect(reasons).toEqual(ports.map(() => 'connection-refused'));
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert.action).toBe('would-block');
    expect(alert.enforced).toBe(false);
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    // Past more sweeps, the scanner still reaches a good origin, recorded as enforce mode would
    // have refused it: the quarantine it would have opened.
    await waitForSweeps(gw.flows, 2);
    await goodTunnel(gw, scanner);
    const tunnel = await gw.waitForClosed((r) => r.client.ip === scanner && r.destination.port === good.port);
    expect(tunnel).toMatchObject({ verdict: 'would-block', enforced: false, reason: 'quarantine' });
    expect(tunnel.bytesOut).toBeGreaterThan(0);
  });

  it('below the threshold nothing is raised (the test can fail)', async () => {
    gw = await start('enforce');
    const ports = await refusingPorts('127.0.0.1', SCAN.failedPortsOnOneHost - 2);
    await connectFanOut(gw, '127.0.0.4', ports);
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0081.scan')).toEqual([]);
    await goodTunnel(gw, '127.0.0.4');
  });
});

/** An absolute-URI request through the HTTP listener from `localAddress`: its status. */
function proxiedStatus(g: TestGateway, localAddress: string, method: string, url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: g.httpHost, port: g.httpPort, localAddress, method, path: url, headers, agent: false }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode ?? 0));
    });
    req.once('error', reject);
    req.end();
  });
}

describe('an0081.scan and requests the gateway answers itself', () => {
  // Regression: an OPTIONS or TRACE with Max-Forwards 0, answered by the gateway (RFC 9110 §7.6.2)
  // without dialling, was folded into the detectors as a failed connect (the flow never connected):
  // ten of them to ten ports tripped an0081.scan and quarantined the client.
  it('enforce: OPTIONS and TRACE with Max-Forwards 0 to many ports are no failed attempts', async () => {
    gw = await start('enforce');
    const client = '127.0.0.5';
    const ports = await refusingPorts('127.0.0.1', FANOUT);
    const statuses: number[] = [];
    for (const [i, port] of ports.entries()) {
      statuses.push(await proxiedStatus(gw, client, i % 2 === 0 ? 'OPTIONS' : 'TRACE', `http://127.0.0.1:${port}/`, { 'max-forwards': '0' }));
    }
    expect(statuses).toEqual(ports.map(() => 200));
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0081.scan')).toEqual([]);
    await goodTunnel(gw, client);
  });
});

/**
 * SOCKS5 CONNECT to each closed port with the `socks` client: reply 0x05 (ConnectionRefused) until
 * the identity is quarantined, then 0x02 (NotAllowed). Returns the reply names in order.
 */
async function socksFanOut(g: TestGateway, ports: number[]): Promise<string[]> {
  const replies: string[] = [];
  for (const port of ports) {
    const err = await SocksClient.createConnection({
      proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port },
      timeout: 5000,
    }).then(
      (info) => {
        info.socket.destroy();
        return new Error('connected to a closed port');
      },
      (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
    );
    const reply = /NotAllowed/.test(err.message) ? 'NotAllowed' : /ConnectionRefused/.test(err.message) ? 'ConnectionRefused' : err.message;
    expect(reply).toBe(replies.includes('NotAllowed') || reply === 'NotAllowed' ? 'NotAllowed' : 'ConnectionRefused');
    replies.push(reply);
  }
  return replies;
}

describe('an0081.scan over SOCKS5', () => {
  it('enforce: fan-out with the socks client → alert, then SOCKS reply 0x02 (quarantine)', async () => {
    gw = await start('enforce');
    const g = gw;
    const ports = await refusingPorts('127.0.0.1', FANOUT);
    const replies = await socksFanOut(g, ports);
    expect(replies.filter((r) => r === 'ConnectionRefused').length).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert.analytic).toBe('AN0081');
    expect(alert.action).toBe('block');
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    const socksFlows = new Set(g.closed.filter((r) => r.protocol === 'socks5').map((r) => r.id));
    expect(alert.flowIds.length).toBeGreaterThan(0);
    for (const id of alert.flowIds) expect(socksFlows.has(id)).toBe(true);
    await expect(socksToGood(g)).rejects.toThrow(/NotAllowed/);
    const rec = await g.waitForClosed((r) => r.protocol === 'socks5' && r.destination.port === good.port);
    expect(rec.reason).toBe('quarantine');
  });

  it('monitor: fan-out over SOCKS5 → would-block, the good origin still answers', async () => {
    gw = await start('monitor');
    const g = gw;
    const ports = await refusingPorts('127.0.0.1', FANOUT);
    const replies = await socksFanOut(g, ports);
    expect(replies).toEqual(ports.map(() => 'ConnectionRefused'));
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert.action).toBe('would-block');
    await waitForSweeps(g.flows, 2);
    const { socket } = await SocksClient.createConnection({
      proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: good.port },
      timeout: 5000,
    });
    await echoRoundTrip(socket, Buffer.from('ok'));
    socket.destroy();
  });
});

/**
 * Regression: alerts were grouped by finding key for ever, so the same identity scanning again a
 * day later was quarantined again (403) with no alert, and in monitor mode left no trace at all.
 * A repeat is alerted again once its last alert is an hour old (or the quarantine, if shorter).
 * The gateway's clock is moved 26 h on between the two scans.
 */
describe('an0081.scan repeated a day later', () => {
  let offsetMs = 0;
  const startClocked = (mode: Mode): Promise<TestGateway> =>
    // No business hours at all: both scans are off-hours whatever the time of day, so their alerts
    // have the same severity and only the repeat window can tell them apart.
    startTestGateway(
      { mode, schedule: { businessHours: { days: [] } }, detection: { sampleIntervalMs: 50, quarantineSec: 600, detectors: { 'an0081.scan': SCAN } } },
      { now: () => Date.now() + offsetMs },
    );
  afterEach(() => {
    offsetMs = 0;
  });

  it('enforce: the second scan is quarantined again and alerted again', async () => {
    gw = await startClocked('enforce');
    const scanner = '127.0.0.5';
    await connectFanOut(gw, scanner, await refusingPorts('127.0.0.1', FANOUT));
    await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0081.scan')).toHaveLength(1);
    expect((await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: scanner })).status).toBe(403);

    offsetMs = 26 * 3_600_000;
    await goodTunnel(gw, scanner); // the quarantine has run out
    const reasons = await connectFanOut(gw, scanner, await refusingPorts('127.0.0.1', FANOUT));
    expect(reasons.filter((r) => r === 'connection-refused').length).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    const second = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan' && Date.parse(a.time) >= Date.now() + offsetMs - 60_000);
    expect(second).toMatchObject({ action: 'block', enforced: true });
    const q = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: scanner });
    expect([q.status, (JSON.parse(q.body) as { reason: string }).reason]).toEqual([403, 'quarantine']);
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0081.scan')).toHaveLength(2);
  });

  it('monitor: the second scan raises a second would-block alert', async () => {
    gw = await startClocked('monitor');
    const scanner = '127.0.0.5';
    await connectFanOut(gw, scanner, await refusingPorts('127.0.0.1', FANOUT));
    await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0081.scan')).toHaveLength(1);

    offsetMs = 26 * 3_600_000;
    await connectFanOut(gw, scanner, await refusingPorts('127.0.0.1', FANOUT));
    const second = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan' && Date.parse(a.time) >= Date.now() + offsetMs - 60_000);
    expect(second).toMatchObject({ action: 'would-block', enforced: false });
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0081.scan')).toHaveLength(2);
  });
});

/**
 * The alert's flowIds are the failed attempts its count is made of: an identity's three refused
 * connects an hour before a port scan are not named with it (the alert named the identity's last 32
 * failures whenever they were made). The gateway's clock is moved an hour on between the two.
 */
describe('an0081.scan flowIds', () => {
  it('monitor: a port scan names its own failed attempts, not older ones outside the window', async () => {
    let offsetMs = 0;
    gw = await startTestGateway({ mode: 'monitor', detection: { sampleIntervalMs: 50, detectors: { 'an0081.scan': SCAN } } }, { now: () => Date.now() + offsetMs });
    const scanner = '127.0.0.6';
    await connectFanOut(gw, scanner, await refusingPorts('127.0.0.1', 3));
    await waitForSweeps(gw.flows, 2);
    expect(gw.alerts.list()).toEqual([]);
    const before = new Set(gw.closed.map((r) => r.id));

    offsetMs = 3_600_000;
    await connectFanOut(gw, scanner, await refusingPorts('127.0.0.1', FANOUT));
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert.evidence['kind']).toBe('port-scan');
    const scan = gw.closed.filter((r) => r.client.ip === scanner && !before.has(r.id)).map((r) => r.id);
    expect(scan).toHaveLength(FANOUT);
    expect(alert.flowIds.length).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    for (const id of alert.flowIds) expect(scan).toContain(id);
  });
});
