/**
 * Regression: attempts the gateway refuses at admission did not count towards `an0081.scan`. 30
 * CONNECTs to 10.255.0.1..30:80 (deny-range) got 30 × 403 and no alert, in enforce and monitor
 * mode alike; so did 20 ports of 169.254.169.254 and, enforced, 30 IP literals not allowlisted.
 * Now a refusal of the address itself (deny-range; an IP literal not allowlisted) is a failed
 * attempt for the scan detector, with the refused count in the evidence; names refused by the
 * allowlist and 429s are not.
 *
 * Nothing leaves loopback: the 10.255.0.0/16 and 169.254.169.254 attempts are refused by deny-range
 * before any dial in every mode (each answer is asserted 403 / SOCKS 0x02), and the not-allowlisted
 * addresses are in 127.0.0.0/8.
 */
import { SocksClient } from 'socks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import type { Alert } from '../../policy/detectors/types.ts';
import type { Mode } from '../../policy/types.ts';
import { type TcpOrigin, echoOrigin, echoRoundTrip, httpConnect, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { type DeepPartial, type TestGateway, adminGet, startTestGateway } from '../helpers/gateway.ts';

/** Small thresholds: 12 failed destinations within 60 s is an address scan, 8 ports of one address a port scan. */
const SCAN = { action: 'block', windowSec: 60, failedDestinations: 12, failedPortsOnOneHost: 8 } as const;

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

function start(mode: Mode, over: DeepPartial<Config> = {}, opts: { now?: () => number } = {}): Promise<TestGateway> {
  return startTestGateway({ mode, ...over, detection: { sampleIntervalMs: 50, quarantineSec: 60, detectors: { 'an0081.scan': SCAN } } }, opts);
}

/** CONNECT to `target` from `from`: the status and the refusal's reason (null on 200, the tunnel closed). */
async function connectReason(g: TestGateway, target: string, from: string): Promise<[number, string | null]> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, target, { localAddress: from });
  if (a.status === 200) {
    a.socket.destroy();
    return [200, null];
  }
  return [a.status, String((JSON.parse(a.body) as { reason?: unknown }).reason)];
}

/** `n` distinct addresses of 10.255.x.0/24 on port 80 (deny-range: private). */
function privateSweep(n: number, x = 0): string[] {
  return Array.from({ length: n }, (_, i) => `10.255.${x}.${i + 1}:80`);
}

/** The scan alerts through the admin API (what an operator reads). */
async function scanAlerts(g: TestGateway): Promise<Alert[]> {
  const r = await adminGet(g, '/v1/alerts');
  expect(r.status).toBe(200);
  return (JSON.parse(r.text) as { alerts: Alert[] }).alerts.filter((a) => a.detector === 'an0081.scan');
}

/** A CONNECT to the good echo origin from `from` that must be established and carry bytes. */
async function goodTunnel(g: TestGateway, from: string): Promise<void> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${good.port}`, { localAddress: from });
  expect(a.status).toBe(200);
  await echoRoundTrip(a.socket, Buffer.from('still allowed'));
  a.socket.destroy();
}

describe('an0081.scan counts attempts refused at admission', () => {
  it('enforce: a sweep of private addresses (deny-range) → scan alert with the refused count; the identity is quarantined', async () => {
    gw = await start('enforce');
    const scanner = '127.0.0.2';
    const targets = privateSweep(SCAN.failedDestinations + 2);
    for (const t of targets) expect(await connectReason(gw, t, scanner)).toEqual([403, 'deny-range']);
    const refused = gw.closed.filter((r) => r.client.ip === scanner && r.reason === 'deny-range');
    expect(refused).toHaveLength(targets.length);
    for (const r of refused) expect([r.verdict, r.bytesOut, r.bytesIn]).toEqual(['block', 0, 0]);

    await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    const [alert, ...more] = await scanAlerts(gw);
    expect(more).toEqual([]);
    expect(alert).toMatchObject({ analytic: 'AN0081', action: 'block', enforced: true });
    expect(alert!.evidence['kind']).toBe('address-scan');
    const counted = Number(alert!.evidence['failedDestinations']);
    expect(counted).toBeGreaterThanOrEqual(SCAN.failedDestinations);
    expect(counted).toBeLessThanOrEqual(targets.length);
    expect(alert!.evidence['refusedDestinations']).toBe(counted);
    expect(alert!.evidence['slowFailedInternal']).toBe(counted);
    expect(alert!.reasons[0]).toMatch(/refused by policy/);
    const refusedIds = new Set(refused.map((r) => r.id));
    expect(alert!.flowIds.length).toBeGreaterThan(0);
    for (const id of alert!.flowIds) expect(refusedIds.has(id)).toBe(true);

    // The configured action (block) quarantines the identity, as a scan of failed dials does: its
    // next CONNECT to an allowed origin is refused; another client is not.
    expect(await connectReason(gw, `127.0.0.1:${good.port}`, scanner)).toEqual([403, 'quarantine']);
    await goodTunnel(gw, '127.0.0.3');
  });

  it('monitor: the same sweep → would-block alert with the count, the scanner still reaches an allowed origin (recorded would-block quarantine)', async () => {
    gw = await start('monitor');
    const scanner = '127.0.0.2';
    const targets = privateSweep(SCAN.failedDestinations + 2, 1);
    for (const t of targets) expect(await connectReason(gw, t, scanner)).toEqual([403, 'deny-range']);
    await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    await waitForSweeps(gw.flows, 2);
    const [alert, ...more] = await scanAlerts(gw);
    expect(more).toEqual([]);
    expect(alert).toMatchObject({ action: 'would-block', enforced: false });
    // The sweep may run mid-sweep: the alert counts what it had then, at least the threshold.
    expect(alert!.evidence['kind']).toBe('address-scan');
    const counted = Number(alert!.evidence['failedDestinations']);
    expect(counted).toBeGreaterThanOrEqual(SCAN.failedDestinations);
    expect(counted).toBeLessThanOrEqual(targets.length);
    expect(alert!.evidence['refusedDestinations']).toBe(counted);
    // Relayed, and recorded as enforce mode would have refused it: the quarantine it would have opened.
    await goodTunnel(gw, scanner);
    const tunnel = await gw.waitForClosed((r) => r.client.ip === scanner && r.destination.port === good.port);
    expect(tunnel).toMatchObject({ verdict: 'would-block', enforced: false, reason: 'quarantine', bytesOut: 'still allowed'.length });
  });

  it('enforce: a port scan of the metadata address over SOCKS5 (0x02 each) → port-scan alert', async () => {
    gw = await start('enforce');
    const g = gw;
    const ports = Array.from({ length: SCAN.failedPortsOnOneHost + 1 }, (_, i) => 8000 + i);
    for (const port of ports) {
      const err = await SocksClient.createConnection({
        proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
        command: 'connect',
        destination: { host: '169.254.169.254', port },
        timeout: 5000,
      }).then(
        (info) => {
          info.socket.destroy();
          return new Error('connected');
        },
        (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
      );
      expect(err.message).toMatch(/NotAllowed/);
    }
    expect(g.closed.filter((r) => r.protocol === 'socks5' && r.reason === 'deny-range')).toHaveLength(ports.length);
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert).toMatchObject({ action: 'block', enforced: true });
    expect(alert.evidence['kind']).toBe('port-scan');
    expect(Number(alert.evidence['maxFailedPortsOnOneHost'])).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    expect(alert.reasons[0]).toMatch(/on 169\.254\.169\.254/);
  });

  it('enforce: IP literals not allowlisted count; names the allowlist refuses do not', async () => {
    const names: Record<string, string> = {};
    for (let i = 1; i <= SCAN.failedDestinations + 2; i++) names[`n${i}.refused.test`] = `127.0.2.${i}`;
    // Only the good origin is allowlisted; loopback is in allowRanges, so these are not deny-range.
    gw = await start('enforce', { roles: { any: { allow: [{ cidr: '127.0.0.1/32', ports: [good.port] }] } }, resolver: { hosts: names } });
    for (const name of Object.keys(names)) expect(await connectReason(gw, `${name}:9`, '127.0.0.4')).toEqual([403, 'not-allowlisted']);
    await waitForSweeps(gw.flows, 3);
    expect(await scanAlerts(gw)).toEqual([]);

    const literals = Array.from({ length: SCAN.failedDestinations + 2 }, (_, i) => `127.0.1.${i + 1}:9`);
    for (const t of literals) expect(await connectReason(gw, t, '127.0.0.5')).toEqual([403, 'not-allowlisted']);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert.evidence['kind']).toBe('address-scan');
    expect(Number(alert.evidence['refusedDestinations'])).toBeGreaterThanOrEqual(SCAN.failedDestinations);
    const fromLiterals = new Set(gw.closed.filter((r) => r.client.ip === '127.0.0.5').map((r) => r.id));
    // The alert names the refused flows, all of them this client's (an empty list would name none).
    expect(alert.flowIds.length).toBeGreaterThan(0);
    for (const id of alert.flowIds) expect(fromLiterals.has(id)).toBe(true);
    // The names' client was never the scanner: it still reaches the allowed origin.
    await goodTunnel(gw, '127.0.0.4');
  });

  it('below the threshold nothing is raised (the test can fail)', async () => {
    gw = await start('enforce');
    for (const t of privateSweep(SCAN.failedDestinations - 1, 2)) expect(await connectReason(gw, t, '127.0.0.6')).toEqual([403, 'deny-range']);
    await waitForSweeps(gw.flows, 3);
    expect(await scanAlerts(gw)).toEqual([]);
    await goodTunnel(gw, '127.0.0.6');
  });

  it('rate-limited attempts (429) count for nothing: the alert comes at exactly the threshold of refusals that were judged', async () => {
    let offsetMs = 0;
    gw = await start('monitor', { limits: { maxNewFlowsPerSecPerIdentity: 3 } }, { now: () => Date.now() + offsetMs });
    const scanner = '127.0.0.7';
    // A burst of 40 at once: at most a few are judged (deny-range), the rest are 429.
    const burst = await Promise.all(privateSweep(40, 3).map((t) => connectReason(gw!, t, scanner)));
    const judged = burst.filter(([s, r]) => s === 403 && r === 'deny-range').length;
    const limited = burst.filter(([s, r]) => s === 429 && r === 'rate-limit').length;
    expect(judged + limited).toBe(40);
    expect(limited).toBeGreaterThan(20);
    await waitForSweeps(gw.flows, 3);
    expect(await scanAlerts(gw)).toEqual([]);
    // Then one judged attempt a (gateway) second, until the alert: it comes with the judged ones only.
    let paced = 0;
    for (const t of privateSweep(SCAN.failedDestinations, 4)) {
      offsetMs += 1000;
      expect(await connectReason(gw, t, scanner)).toEqual([403, 'deny-range']);
      paced++;
      await waitForSweeps(gw.flows, 2);
      if ((await scanAlerts(gw)).length > 0) break;
    }
    const [alert] = await scanAlerts(gw);
    expect(alert?.evidence['failedDestinations']).toBe(SCAN.failedDestinations);
    expect(judged + paced).toBe(SCAN.failedDestinations);
  });
});
