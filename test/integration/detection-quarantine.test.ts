/**
 * Quarantine on hosts that run an agent (SPEC §3 `quarantineSec`, §7 re-evaluation).
 *
 * Regression: the quarantine key is `host|user|process`, and a new connection's process is unknown
 * until the agent reports it. A bulk upload by `uploader` (user alice) on 127.0.0.7 was killed and
 * `127.0.0.7|alice|uploader` quarantined, but the same process's next CONNECT was admitted as
 * `127.0.0.7|-|-` and, when the agent's report named it, only the detectors ran again: the
 * quarantined uploader carried on through a 200 tunnel.
 *
 * Regression: an upload killed before the agent's report quarantined `127.0.0.7|-|-` (all the
 * gateway knew), and a connection whose process the agent had already named was looked up as
 * `127.0.0.7|alice|uploader` and admitted.
 */
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type ProcessReport,
  type ReportedConnect,
  type TcpOrigin,
  closedOf,
  echoOrigin,
  connectsReportedAhead,
  echoRoundTrip,
  httpConnect,
  reportProcesses,
  tcpOrigin,
  testAgent,
  waitForAlert,
} from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

const CLIENT_IP = '127.0.0.7';
const BUDGET = 64 * 1024;

let sink: TcpOrigin;
let echo: TcpOrigin;
let gw: TestGateway | null = null;
const sockets: Socket[] = [];

beforeAll(async () => {
  sink = await tcpOrigin('127.0.0.1', (s) => s.resume());
  echo = await echoOrigin('127.0.0.1');
});
afterAll(async () => {
  await sink?.close();
  await echo?.close();
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await gw?.stop();
  gw = null;
});

function start(): Promise<TestGateway> {
  return startTestGateway({
    mode: 'enforce',
    identity: { agents: [testAgent] },
    detection: { sampleIntervalMs: 50, quarantineSec: 600, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: BUDGET, minRatio: 10 } } },
  });
}

/** Process `name` of user alice, as the agent reports it. */
function processOf(name: string): ReportedConnect['process'] {
  return { pid: name === 'uploader' ? 4242 : 4343, name, user: 'alice', uid: 1000, loginuid: 1000 };
}

/** What the agent says about the client socket at `localPort`: process `name` of user alice. */
function processAt(g: TestGateway, localPort: number, name: string): ProcessReport {
  return { localIp: CLIENT_IP, localPort, remoteIp: g.httpHost, remotePort: g.httpPort, ...processOf(name) };
}

/** A CONNECT from CLIENT_IP (a port the kernel picks) to `port` that the gateway admits; the socket is the tunnel. */
async function tunnelFrom(g: TestGateway, port: number): Promise<{ socket: Socket; localPort: number }> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${port}`, { localAddress: CLIENT_IP });
  expect(a.status).toBe(200);
  a.socket.on('error', () => undefined);
  sockets.push(a.socket);
  return { socket: a.socket, localPort: a.socket.localPort as number };
}

/** `uploader` (reported after its tunnel is up, as an agent pass does) uploads past the budget and is killed. */
async function killedUpload(g: TestGateway): Promise<void> {
  const { socket, localPort } = await tunnelFrom(g, sink.port);
  expect((await reportProcesses(g.adminUrl, 'ws', [processAt(g, localPort, 'uploader')])).attributed).toBe(1);
  socket.write(Buffer.alloc(4 * BUDGET, 1));
  const rec = await g.waitForClosed((r) => r.client.port === localPort);
  expect(rec.closeReason).toBe('an0080.bulk-upload');
  expect(rec.identity.process?.name).toBe('uploader');
  await waitForAlert(g.alerts, (x) => x.detector === 'an0080.bulk-upload' && x.action === 'kill');
}

describe('quarantine of an agent-attributed identity', () => {
  it('enforce: the quarantined process\'s next tunnel is killed (closeReason quarantine) when the agent names it', async () => {
    gw = await start();
    await killedUpload(gw);
    // Admission cannot tell which process this is yet: the host's other processes are not quarantined.
    const { socket, localPort } = await tunnelFrom(gw, echo.port);
    await echoRoundTrip(socket, Buffer.from('before the report'));
    expect((await reportProcesses(gw.adminUrl, 'ws', [processAt(gw, localPort, 'uploader')])).attributed).toBe(1);
    const rec = await gw.waitForClosed((r) => r.client.port === localPort, 5000);
    expect(rec.closeReason).toBe('quarantine');
    expect([rec.verdict, rec.reason, rec.detector, rec.enforced]).toEqual(['block', 'quarantine', 'quarantine', true]);
    expect(rec.identity.process?.name).toBe('uploader');
    await closedOf(socket);
  });

  it('enforce: another process of the same host and user is not quarantined', async () => {
    gw = await start();
    await killedUpload(gw);
    const { socket, localPort } = await tunnelFrom(gw, echo.port);
    expect((await reportProcesses(gw.adminUrl, 'ws', [processAt(gw, localPort, 'editor')])).attributed).toBe(1);
    await echoRoundTrip(socket, Buffer.from('still carried after the report'));
    socket.end();
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec.closeReason).toBe('closed');
    expect(rec.verdict).toBe('allow');
    expect(rec.identity.process?.name).toBe('editor');
  });

  it('enforce: a kill before any report quarantines the host: a connection already named by the agent gets 403 quarantine', async () => {
    gw = await start();
    const { socket, localPort } = await tunnelFrom(gw, sink.port);
    socket.write(Buffer.alloc(4 * BUDGET, 1));
    const killed = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(killed.closeReason).toBe('an0080.bulk-upload');
    expect(killed.identity.process).toBeNull();
    const { report, answers } = await connectsReportedAhead(gw, CLIENT_IP, 'ws', [{ target: `127.0.0.1:${echo.port}`, process: processOf('uploader') }]);
    expect(report).toMatchObject({ attributed: 0, pending: 1 });
    const a = answers[0]!;
    const next = a.localPort;
    expect(a.status).toBe(403);
    expect(JSON.parse(a.body)).toMatchObject({ error: 'egress denied', reason: 'quarantine' });
    const rec = await gw.waitForClosed((r) => r.client.port === next);
    expect([rec.verdict, rec.reason, rec.identity.process?.name]).toEqual(['block', 'quarantine', 'uploader']);
  });

  it('monitor (PUT /v1/mode after the kill): the report marks the tunnel would-block quarantine and it runs on', async () => {
    gw = await start();
    await killedUpload(gw);
    const put = await fetch(`${gw.adminUrl}/v1/mode`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'monitor' }),
    });
    expect(put.status).toBe(200);
    const { socket, localPort } = await tunnelFrom(gw, echo.port);
    expect((await reportProcesses(gw.adminUrl, 'ws', [processAt(gw, localPort, 'uploader')])).attributed).toBe(1);
    await echoRoundTrip(socket, Buffer.from('monitored, not stopped'));
    socket.end();
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec.closeReason).toBe('closed');
    expect([rec.verdict, rec.reason, rec.detector, rec.enforced]).toEqual(['would-block', 'quarantine', 'quarantine', false]);
  });
});
