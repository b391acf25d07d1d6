/**
 * Live proof of research D3c's second rule: more than `distinctPortsOnOneHostPerHour` distinct ports
 * of one address connected to within 1 h by one identity is a port fan-out, flagged by `an0081.scan`
 * (flag only, in both modes) unless the process is a browser. Every port answers: loopback HTTP
 * origins reached a third each over CONNECT, SOCKS5 CONNECT and absolute-URI GET, and datagrams of a
 * SOCKS5 UDP association. Before, a sweep of ports that answer raised nothing (only failed attempts
 * and distinct destinations were counted).
 */
import { once } from 'node:events';
import { type Server, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Alert } from '../../policy/detectors/types.ts';
import type { Mode } from '../../policy/types.ts';
import { connectsReportedAhead, httpConnect, testAgent, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { adminGet, type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

/** A small threshold: more than 6 distinct ports of one address in 1 h. */
const LIMIT = 6;
const KIND = 'port-fan-out';

let origins: Server[] = [];
/** LIMIT + 1 loopback HTTP origins on 127.0.0.1, each answering 200. */
let ports: number[] = [];
let gw: TestGateway | null = null;
const cleanups: Cleanups = [];

beforeAll(async () => {
  for (let i = 0; i <= LIMIT; i++) {
    const s = createServer((_req, res) => res.end('ok'));
    s.listen(0, '127.0.0.1');
    await once(s, 'listening');
    origins.push(s);
  }
  ports = origins.map((s) => (s.address() as AddressInfo).port);
});
afterAll(async () => {
  for (const s of origins) s.closeAllConnections();
  await Promise.all(origins.map((s) => new Promise<void>((r) => s.close(() => r()))));
  origins = [];
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
  await gw?.stop();
  gw = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({
    mode,
    identity: { agents: [testAgent] },
    detection: { sampleIntervalMs: 50, detectors: { 'an0081.scan': { distinctPortsOnOneHostPerHour: LIMIT } } },
  });
}

async function viaConnect(g: TestGateway, from: string, port: number): Promise<string> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${port}`, { localAddress: from });
  a.socket.destroy();
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
    (info) => {
      info.socket.destroy();
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

/** One connection per port from `from`, rotating CONNECT, SOCKS5 and absolute-URI GET. */
async function sweep(g: TestGateway, from: string, which: number[]): Promise<string[]> {
  const answers: string[] = [];
  for (const [i, port] of which.entries()) answers.push(await [viaConnect, viaSocks, viaGet][i % 3]!(g, from, port));
  return answers;
}

/** The port fan-out alerts through the admin API (what an operator reads). */
async function portFanOuts(g: TestGateway): Promise<Alert[]> {
  const r = await adminGet(g, '/v1/alerts');
  expect(r.status).toBe(200);
  return (JSON.parse(r.text) as { alerts: Alert[] }).alerts.filter((a) => a.detector === 'an0081.scan' && a.evidence['kind'] === KIND);
}

describe('an0081.scan port fan-out over TCP (CONNECT, SOCKS5, absolute-URI)', () => {
  it(`enforce: ${LIMIT} ports raise nothing; the ${LIMIT + 1}th is a flag, never a block`, async () => {
    gw = await start('enforce');
    const scanner = '127.0.0.2';
    const first = await sweep(gw, scanner, ports.slice(0, LIMIT));
    expect(first).toEqual(['connect 200', 'socks ok', 'get 200', 'connect 200', 'socks ok', 'get 200']);
    const g = gw;
    await Promise.all(ports.slice(0, LIMIT).map((p) => g.waitForClosed((r) => r.client.ip === scanner && r.destination.port === p)));
    // At the threshold exactly (not over it): nothing, past several sweeps.
    await waitForSweeps(gw.flows, 3);
    expect(await portFanOuts(gw)).toEqual([]);

    expect(await sweep(gw, scanner, ports.slice(LIMIT))).toEqual(['connect 200']);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan' && a.evidence['kind'] === KIND);
    expect(alert.action).toBe('flag');
    expect(alert.enforced).toBe(false);
    expect(alert.reasons[0]).toBe(`port fan-out: ${LIMIT + 1} distinct ports on 127.0.0.1 in 1 h, > ${LIMIT}`);
    expect(alert.evidence).toMatchObject({ address: '127.0.0.1', distinctPorts: LIMIT + 1, windowSec: 3600, threshold: LIMIT });
    expect((await portFanOuts(gw)).map((a) => a.action)).toEqual(['flag']);

    // Never a block: the identity is not quarantined, and every one of its flows was allowed.
    await waitForSweeps(gw.flows, 2);
    expect(await sweep(gw, scanner, ports.slice(0, 3))).toEqual(['connect 200', 'socks ok', 'get 200']);
    await g.waitForClosed((r) => r.client.ip === scanner && r.protocol === 'http' && r.destination.port === ports[2]! && r.id !== alert.flowIds[0]);
    const mine = gw.closed.filter((r) => r.client.ip === scanner);
    expect(mine.length).toBeGreaterThanOrEqual(LIMIT + 1 + 2);
    expect(new Set(mine.map((r) => r.verdict))).toEqual(new Set(['allow']));
    expect(gw.alerts.list({}).filter((a) => a.action !== 'flag')).toEqual([]);
  });

  it('a browser raises none; a named non-browser process on the same ports does', async () => {
    gw = await start('enforce');
    const proc = (name: string) => ({ pid: 4242, name, exe: `/usr/bin/${name}`, user: 'alice', uid: 1000, loginuid: 1000, ppid: 1, parentName: 'bash' });
    const browser = await connectsReportedAhead(gw, '127.0.0.5', 'ws-browser', ports.map((p) => ({ target: `127.0.0.1:${p}`, process: proc('firefox') })));
    const script = await connectsReportedAhead(gw, '127.0.0.6', 'ws-script', ports.map((p) => ({ target: `127.0.0.1:${p}`, process: proc('python3') })));
    for (const a of [...browser.answers, ...script.answers]) {
      expect(a.status).toBe(200);
      a.socket.destroy();
    }
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.scan' && a.evidence['kind'] === KIND);
    expect(alert.identity.process?.name).toBe('python3');
    expect(alert.reasons[0]).toBe(`port fan-out: ${LIMIT + 1} distinct ports on 127.0.0.1 in 1 h, > ${LIMIT} (non-browser python3)`);
    const g = gw;
    await Promise.all(browser.answers.map((a) => g.waitForClosed((r) => r.client.port === a.localPort)));
    await waitForSweeps(gw.flows, 3);
    const records = gw.closed.filter((r) => r.client.ip === '127.0.0.5');
    expect(records.map((r) => r.identity.process?.name)).toEqual(ports.map(() => 'firefox'));
    expect((await portFanOuts(gw)).map((a) => a.identity.process?.name)).toEqual(['python3']);
  });
});

/** `n` UDP ports of 127.0.0.1 nothing listens on: bound on port 0, then closed. */
async function closedUdpPorts(n: number): Promise<number[]> {
  const socks = await Promise.all(Array.from({ length: n }, () => udpSocket([])));
  const found = socks.map((s) => s.address().port);
  await Promise.all(socks.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return found;
}

describe('an0081.scan port fan-out over a SOCKS5 UDP association', () => {
  let echo: UdpEcho;
  beforeAll(async () => {
    echo = await startUdpEcho('udp4');
  });
  afterAll(async () => {
    await echo.close();
  });

  it(`monitor: datagrams to ${LIMIT} ports raise nothing; one more port is a flag (not would-block)`, async () => {
    gw = await start('monitor');
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    // Closed UDP ports take datagrams; the echo goes last, its answer proving the ones before it
    // were relayed (the relay handles destinations in order). LIMIT - 1 closed + the echo = LIMIT.
    const closed = await closedUdpPorts(LIMIT);
    const upTo = async (list: number[]): Promise<void> => {
      for (const p of list) await sendTo(client, udpFrame('127.0.0.1', p, Buffer.from(`probe ${p}`)), a.relay);
      const reply = nextReply(client);
      await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('sync')), a.relay);
      expect((await reply).port).toBe(echo.port);
    };
    await upTo(closed.slice(0, LIMIT - 1));
    await waitForSweeps(gw.flows, 3);
    expect(await portFanOuts(gw)).toEqual([]);

    await upTo(closed.slice(LIMIT - 1));
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.scan' && x.evidence['kind'] === KIND);
    expect(alert.action).toBe('flag');
    expect(alert.reasons[0]).toBe(`port fan-out: ${LIMIT + 1} distinct ports on 127.0.0.1 in 1 h, > ${LIMIT}`);

    a.control.destroy();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(rec.verdict).toBe('allow');
    expect(rec.reasons.join('\n')).toMatch(new RegExp(`${LIMIT + 1} destinations relayed, 0 refused`));
  });
});
