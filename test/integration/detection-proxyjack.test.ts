/**
 * Live proof (issue 5): long symmetric CONNECT tunnels from one attributed process to several
 * relay peers trip `an0081.proxyjack` (relay symmetry, D4b) with small thresholds. The process is
 * named by an agent report through the real admin route (POST /v1/agents/reports) before the
 * client connects from the port the report names. Enforced, the relay flows are killed; monitored,
 * the alert says would-kill and the tunnels keep carrying bytes. Below the destination threshold,
 * nothing is raised.
 */
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import {
  type TcpOrigin,
  echoOrigin,
  echoRoundTrip,
  connectsReportedAhead,
  testAgent,
  waitForAlert,
  waitForSweeps,
} from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

const PEERS = ['peer-a.test', 'peer-b.test', 'peer-c.test'];
const PROXYJACK = { action: 'kill', windowSec: 60, minBytesOut: 320 * 1024, minRatio: 0.5, maxRatio: 2, minDistinctDestinations: 3 } as const;
const PER_TUNNEL = 128 * 1024;
const CLIENT_IP = '127.0.0.5';

let peers: TcpOrigin[] = [];
let gw: TestGateway | null = null;
let tunnels: Socket[] = [];

beforeAll(async () => {
  peers = await Promise.all(PEERS.map(() => echoOrigin('127.0.0.1')));
});
afterAll(async () => {
  await Promise.all(peers.map((p) => p.close()));
});
afterEach(async () => {
  for (const t of tunnels) t.destroy();
  tunnels = [];
  await gw?.stop();
  gw = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({
    mode,
    identity: { agents: [testAgent] },
    resolver: { hosts: Object.fromEntries(PEERS.map((h) => [h, '127.0.0.1'])) },
    detection: { sampleIntervalMs: 50, detectors: { 'an0081.proxyjack': PROXYJACK } },
  });
}

/** The agent names the relay process of each client connection before its CONNECT; the tunnels are then open. */
async function openRelayTunnels(g: TestGateway, count: number): Promise<Socket[]> {
  const { report, answers } = await connectsReportedAhead(
    g,
    CLIENT_IP,
    'ws-relay',
    PEERS.slice(0, count).map((peer, i) => ({
      target: `${peer}:${peers[i]!.port}`,
      process: {
        pid: 4242,
        name: 'relayd',
        exe: '/opt/relay/relayd',
        cmdline: `/opt/relay/relayd --peer ${peer}`,
        user: 'alice',
        uid: 1000,
        loginuid: 1000,
        ppid: 1,
        parentName: 'systemd',
      },
    })),
  );
  tunnels.push(...answers.map((a) => a.socket));
  expect(report).toEqual({ accepted: count, attributed: 0, pending: count, shed: 0, ignored: 0, udpRelayPorts: null });
  expect(answers.map((a) => a.status)).toEqual(Array.from({ length: count }, () => 200));
  return answers.map((a) => a.socket);
}

describe('an0081.proxyjack: symmetric relay tunnels from an attributed process', () => {
  it('enforce: alert with evidence, the relay flows are killed', async () => {
    gw = await start('enforce');
    const socks = await openRelayTunnels(gw, PEERS.length);
    // Relay traffic on every tunnel at once; the kill may land while echoes are still in flight.
    for (const s of socks) {
      s.resume();
      s.write(Buffer.alloc(PER_TUNNEL, 0x42));
    }
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.proxyjack');
    expect(alert.analytic).toBe('AN0081');
    expect(alert.action).toBe('kill');
    expect(alert.enforced).toBe(true);
    expect(alert.identity.process?.name).toBe('relayd');
    expect(alert.evidence['relaySymmetry']).toBe(true);
    expect(alert.evidence['distinctDestinations']).toBeGreaterThanOrEqual(PROXYJACK.minDistinctDestinations);
    expect(alert.evidence['bytesOut']).toBeGreaterThanOrEqual(PROXYJACK.minBytesOut);
    expect(alert.evidence['ratio']).toBeGreaterThanOrEqual(PROXYJACK.minRatio);
    expect(alert.evidence['ratio']).toBeLessThanOrEqual(PROXYJACK.maxRatio);
    // Every relay tunnel is named in the alert and closed by the detector.
    const g = gw;
    const recs = await Promise.all(
      peers.map((p) => g.waitForClosed((r) => r.client.ip === CLIENT_IP && r.destination.port === p.port)),
    );
    for (const r of recs) {
      expect(r.closeReason).toBe('an0081.proxyjack');
      expect([r.verdict, r.reason, r.detector]).toEqual(['block', 'detector', 'an0081.proxyjack']);
      expect(r.identity.process?.name).toBe('relayd');
      expect(alert.flowIds).toContain(r.id);
    }
    await Promise.all(socks.map((s) => (s.closed ? Promise.resolve() : new Promise((r) => s.once('close', r)))));
  });

  it('monitor: would-kill alert, the tunnels keep carrying bytes', async () => {
    gw = await start('monitor');
    const socks = await openRelayTunnels(gw, PEERS.length);
    for (const s of socks) await echoRoundTrip(s, Buffer.alloc(PER_TUNNEL, 0x42));
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.proxyjack');
    expect(alert.action).toBe('would-kill');
    expect(alert.enforced).toBe(false);
    await waitForSweeps(gw.flows, 2);
    for (const s of socks) await echoRoundTrip(s, Buffer.from('still relaying'));
    expect(gw.closed.filter((r) => r.client.ip === CLIENT_IP)).toEqual([]);
    // Regression: the records of flows monitor mode would have killed said verdict allow, reason
    // allowed, detector null; they say would-block by the detector, as a refused flow's would.
    for (const s of socks) s.end();
    const g = gw;
    const recs = await Promise.all(peers.map((p) => g.waitForClosed((r) => r.client.ip === CLIENT_IP && r.destination.port === p.port)));
    for (const r of recs.filter((x) => alert.flowIds.includes(x.id))) {
      expect([r.verdict, r.reason, r.detector, r.enforced, r.closeReason]).toEqual(['would-block', 'detector', 'an0081.proxyjack', false, 'closed']);
    }
    expect(recs.some((x) => alert.flowIds.includes(x.id))).toBe(true);
  });

  it('below minDistinctDestinations (2 peers) nothing is raised', async () => {
    gw = await start('enforce');
    const socks = await openRelayTunnels(gw, 2);
    // Same total volume as above, over two peers.
    for (const s of socks) await echoRoundTrip(s, Buffer.alloc((PER_TUNNEL * 3) / 2, 0x42));
    await waitForSweeps(gw.flows, 4);
    expect(gw.alerts.list()).toEqual([]);
    for (const s of socks) await echoRoundTrip(s, Buffer.from('alive'));
  });
});
