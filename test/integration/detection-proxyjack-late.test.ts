/**
 * `an0081.proxyjack` for relay tunnels an agent names after they opened (the usual order: the agent
 * reports a socket it found established). Each tunnel counts wholly for the process once named —
 * its destination and the bytes it carried before the report as well as after — so relay symmetry
 * over three peers is caught whether the report came before the connect or half-way through.
 */
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type TcpOrigin,
  echoOrigin,
  echoRoundTrip,
  httpConnect,
  reportProcesses,
  testAgent,
  waitForAlert,
  waitForSweeps,
} from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway, until } from '../helpers/gateway.ts';

const PEERS = ['peer-a.test', 'peer-b.test', 'peer-c.test'];
/** 320 KiB out, symmetric, to 3 domains within a minute; the tunnels carry 384 KiB in all, half before the report. */
const PROXYJACK = { action: 'kill', windowSec: 60, minBytesOut: 320 * 1024, minRatio: 0.5, maxRatio: 2, minDistinctDestinations: 3 } as const;
const HALF = 64 * 1024;
const CLIENT_IP = '127.0.0.6';

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

describe('an0081.proxyjack: relay tunnels attributed after they opened', () => {
  it('monitor: the bytes and destinations before the report count for the process; would-kill names the three tunnels', async () => {
    gw = await startTestGateway({
      mode: 'monitor',
      identity: { agents: [testAgent] },
      resolver: { hosts: Object.fromEntries(PEERS.map((h) => [h, '127.0.0.1'])) },
      detection: { sampleIntervalMs: 50, detectors: { 'an0081.proxyjack': PROXYJACK } },
    });
    const g = gw;
    const ports: number[] = [];
    for (const [i, peer] of peers.entries()) {
      // From a source port the kernel picks; the agent names it later.
      const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `${PEERS[i]}:${peer.port}`, { localAddress: CLIENT_IP });
      expect(a.status).toBe(200);
      a.socket.on('error', () => undefined);
      tunnels.push(a.socket);
      ports.push(a.socket.localPort as number);
    }
    // Half the relaying before any process is known: the identity is the client address alone.
    for (const s of tunnels) await echoRoundTrip(s, Buffer.alloc(HALF, 0x42));
    await waitForSweeps(g.flows, 2);
    const ans = await reportProcesses(
      g.adminUrl,
      'ws-relay',
      ports.map((localPort, i) => ({
        localIp: CLIENT_IP,
        localPort,
        remoteIp: g.httpHost,
        remotePort: g.httpPort,
        pid: 4343,
        name: 'relayd',
        exe: '/opt/relay/relayd',
        cmdline: `/opt/relay/relayd --peer ${PEERS[i]}`,
        user: 'alice',
        uid: 1000,
        loginuid: 1000,
        ppid: 1,
        parentName: 'systemd',
      })),
    );
    expect(ans.attributed).toBe(PEERS.length);
    await until('the tunnels are attributed', () => [...g.flows.activeFlows().values()].filter((f) => f.identity.process?.name === 'relayd').length === PEERS.length);
    await waitForSweeps(g.flows, 2);
    expect(g.alerts.list({ detector: 'an0081.proxyjack' })).toEqual([]);
    // The other half, attributed: 192 KiB out alone would be under 320 KiB.
    for (const s of tunnels) await echoRoundTrip(s, Buffer.alloc(HALF, 0x42));

    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0081.proxyjack');
    expect(alert.action).toBe('would-kill');
    expect(alert.identity.process?.name).toBe('relayd');
    expect(alert.evidence).toMatchObject({ relaySymmetry: true, distinctDestinations: PEERS.length, bytesOut: 2 * HALF * PEERS.length, bytesIn: 2 * HALF * PEERS.length });
    const ids = [...g.flows.activeFlows().values()].filter((f) => f.client.ip === CLIENT_IP).map((f) => f.id);
    expect([...alert.flowIds].sort()).toEqual(ids.sort());
  });
});

/**
 * A relay that keeps its connections to the sites it fetches from open past the window: a domain
 * counts while its flows carry bytes in the window, not only in the window after their connect.
 * The gateway's clock is moved two windows on between the connects and the relaying.
 */
describe('an0081.proxyjack: relay tunnels older than the window', () => {
  it('monitor: three tunnels opened two windows ago that relay now are three domains in the window', async () => {
    let offsetMs = 0;
    gw = await startTestGateway(
      {
        mode: 'monitor',
        resolver: { hosts: Object.fromEntries(PEERS.map((h) => [h, '127.0.0.1'])) },
        detection: { sampleIntervalMs: 50, detectors: { 'an0081.proxyjack': PROXYJACK } },
      },
      { now: () => Date.now() + offsetMs },
    );
    const g = gw;
    for (const [i, peer] of peers.entries()) {
      const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `${PEERS[i]}:${peer.port}`, { localAddress: CLIENT_IP });
      expect(a.status).toBe(200);
      a.socket.on('error', () => undefined);
      tunnels.push(a.socket);
    }
    for (const s of tunnels) await echoRoundTrip(s, Buffer.from('hello'));
    await waitForSweeps(g.flows, 2);
    offsetMs = 2 * PROXYJACK.windowSec * 1000;
    for (const s of tunnels) await echoRoundTrip(s, Buffer.alloc(2 * HALF, 0x42));

    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0081.proxyjack');
    expect(alert.action).toBe('would-kill');
    expect(alert.evidence).toMatchObject({ relaySymmetry: true, distinctDestinations: PEERS.length, bytesOut: 2 * HALF * PEERS.length });
    expect(alert.flowIds).toHaveLength(PEERS.length);
  });
});
