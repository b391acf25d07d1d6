/**
 * Live proof: a port scan of a host whose ports accept and then reset before any data (a firewall
 * or load balancer answering for every port, research D3's "reset before any data") is a scan.
 * Each attempt goes through the real listeners, a third each over HTTP CONNECT, SOCKS5 CONNECT and
 * an absolute-URI GET; each port is its own loopback server that resets what it accepts. Before the
 * fix, these `upstream-reset` flows (0 bytes either way) counted as connections, not failed
 * attempts: 9 such ports raised no `an0081.scan`, where 9 refusing ports raised a port scan. A
 * destination that sent a byte before its reset is a connection, and stays uncounted.
 */
import { request } from 'node:http';
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { type TcpOrigin, closedOf, echoOrigin, echoRoundTrip, httpConnect, tcpOrigin, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

/** Small thresholds: 6 failed ports on one host within 60 s is a port scan. */
const SCAN = { action: 'block', windowSec: 60, failedPortsOnOneHost: 6, failedDestinations: 50 } as const;
const PORTS = 9;

let gw: TestGateway | null = null;
const origins: TcpOrigin[] = [];
afterEach(async () => {
  await gw?.stop();
  gw = null;
  for (const o of origins.splice(0)) await o.close();
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({ mode, detection: { sampleIntervalMs: 50, quarantineSec: 60, detectors: { 'an0081.scan': SCAN } } });
}

/**
 * `n` loopback ports whose server accepts, then after `delayMs` sends `first` (if any) and resets:
 * with a delay the gateway's dial has connected (200 / SOCKS 0x00) before the reset comes.
 */
async function resettingPorts(n: number, delayMs: number, first: Buffer | null = null): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < n; i++) {
    const o = await tcpOrigin('127.0.0.1', (s) => {
      const t = setTimeout(() => {
        if (first) s.write(first, () => s.resetAndDestroy());
        else s.resetAndDestroy();
      }, delayMs);
      s.once('close', () => clearTimeout(t));
    });
    origins.push(o);
    ports.push(o.port);
  }
  return ports;
}

/** Waits (bounded) for a tunnel the destination ends; swallows the reset it gets. */
async function heldUntilClosed(socket: Socket): Promise<void> {
  socket.on('error', () => undefined);
  socket.resume();
  const timer = setTimeout(() => socket.destroy(), 5000);
  await closedOf(socket);
  clearTimeout(timer);
}

async function viaConnect(g: TestGateway, from: string, port: number): Promise<string> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${port}`, { localAddress: from });
  if (a.status === 200) await heldUntilClosed(a.socket);
  return `connect ${a.status}`;
}

async function viaSocks(g: TestGateway, from: string, port: number): Promise<string> {
  return SocksClient.createConnection({
    proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
    command: 'connect',
    destination: { host: '127.0.0.1', port },
    timeout: 5000,
    socket_options: { host: g.socksHost, port: g.socksPort, localAddress: from },
  }).then(
    async (info) => {
      await heldUntilClosed(info.socket);
      return 'socks ok';
    },
    (e: unknown) => `socks ${String(e).replace(/^.* - /, '')}`,
  );
}

function viaGet(g: TestGateway, from: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: g.httpHost, port: g.httpPort, localAddress: from, method: 'GET', path: `http://127.0.0.1:${port}/`, agent: false }, (res) => {
      res.resume();
      res.once('end', () => resolve(`get ${res.statusCode ?? 0}`));
    });
    req.setTimeout(5000, () => req.destroy(new Error('GET: no answer in 5 s')));
    req.once('error', reject);
    req.end();
  });
}

/** One attempt per port, rotating CONNECT, SOCKS5 and absolute-URI GET; stops at the first quarantine. */
async function scan(g: TestGateway, from: string, ports: number[]): Promise<string[]> {
  const answers: string[] = [];
  for (const [i, port] of ports.entries()) {
    const via = [viaConnect, viaSocks, viaGet][i % 3]!;
    const a = await via(g, from, port);
    answers.push(a);
    if (/403|NotAllowed/.test(a)) break;
  }
  return answers;
}

describe('an0081.scan: ports that accept and reset before any data', () => {
  it('enforce: a port scan over CONNECT, SOCKS5 and absolute-URI is one port scan; the identity is quarantined', async () => {
    gw = await start('enforce');
    const good = await echoOrigin('127.0.0.1');
    origins.push(good);
    const scanner = '127.0.0.2';
    const ports = await resettingPorts(PORTS, 20);
    const answers = await scan(gw, scanner, ports);
    // Each destination reset before anything moved: a failed attempt, recorded `upstream-reset` (the
    // attempts after the quarantine are refused `quarantine`).
    const records = gw.closed.filter((r) => r.client.ip === scanner && ports.includes(r.destination.port ?? 0) && r.verdict === 'allow');
    expect(records.length).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    for (const r of records) expect([r.closeReason, r.bytesOut, r.bytesIn]).toEqual(['upstream-reset', 0, 0]);
    expect(new Set(records.map((r) => r.protocol))).toEqual(new Set(['connect', 'socks5', 'http']));

    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert).toMatchObject({ analytic: 'AN0081', action: 'block', enforced: true });
    expect(alert.evidence['kind']).toBe('port-scan');
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
    const ids = new Set(records.map((r) => r.id));
    for (const id of alert.flowIds) expect(ids.has(id)).toBe(true);
    expect(answers.length).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);

    // Quarantined: the scanner's next CONNECT to a good origin is refused; another client's is not.
    const q = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: scanner });
    expect(q.status).toBe(403);
    expect(JSON.parse(q.body)).toMatchObject({ error: 'egress denied', reason: 'quarantine' });
    const other = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: '127.0.0.3' });
    expect(other.status).toBe(200);
    await echoRoundTrip(other.socket, Buffer.from('still allowed'));
    other.socket.destroy();
  });

  it('monitor: the same scan, the dial itself reset, is a would-block port scan and nothing is refused', async () => {
    gw = await start('monitor');
    const scanner = '127.0.0.4';
    // Reset as accepted: the gateway's dial may see the reset before its connect (502 / SOCKS 0x01).
    const ports = await resettingPorts(PORTS, 0);
    const answers = await scan(gw, scanner, ports);
    expect(answers.filter((a) => /403|NotAllowed/.test(a))).toEqual([]);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan');
    expect(alert).toMatchObject({ action: 'would-block', enforced: false });
    expect(alert.evidence['maxFailedPortsOnOneHost']).toBeGreaterThanOrEqual(SCAN.failedPortsOnOneHost);
  });

  it('a destination that sent a byte before its reset is a connection: no scan', async () => {
    gw = await start('enforce');
    const client = '127.0.0.5';
    const ports = await resettingPorts(PORTS, 0, Buffer.from('x'));
    const answers = await scan(gw, client, ports);
    expect(answers.filter((a) => /403|NotAllowed/.test(a))).toEqual([]);
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0081.scan')).toEqual([]);
  });
});
