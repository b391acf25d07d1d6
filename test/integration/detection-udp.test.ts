/**
 * Detection for every destination of a SOCKS5 UDP association, through the real listener with the
 * `socks` client. One association is one flow, but each new destination meets what a new flow
 * would: quarantine and the connect-time detectors (here a proxyware provider domain), and it
 * counts towards the identity's fan-out (an0081.scan's distinct destinations per hour). Before,
 * only the association's first destination was checked: a client could open it towards anything
 * harmless and then relay to a proxyware provider or fan out unseen.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { reportProcesses, testAgent, waitForAlert } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway, until } from '../helpers/gateway.ts';
import { type Cleanups, associate, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const PREFIX = Buffer.from('echo:');
/** A proxyware provider's name (policy/lists.ts), pointed at a loopback echo. */
const PROVIDER = 'edge.honeygain.com';
const FANOUT_NAMES = ['n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n7'].map((n) => `${n}.fanout.example.test`);
const FANOUT_LIMIT = 5;

let first: UdpEcho;
let second: UdpEcho;
let gw: TestGateway | null = null;
const cleanups: Cleanups = [];

beforeAll(async () => {
  first = await startUdpEcho('udp4', PREFIX);
  second = await startUdpEcho('udp4', PREFIX);
});
afterAll(async () => {
  await first.close();
  await second.close();
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
  await gw?.stop();
  gw = null;
  first.received.length = 0;
  second.received.length = 0;
});

function start(mode: Mode): Promise<TestGateway> {
  const hosts: Record<string, string> = { [PROVIDER]: '127.0.0.1' };
  for (const n of FANOUT_NAMES) hosts[n] = '127.0.0.1';
  return startTestGateway({
    mode,
    resolver: { hosts },
    identity: { agents: [testAgent] },
    detection: { sampleIntervalMs: 50, detectors: { 'an0081.scan': { distinctDestinationsPerHour: FANOUT_LIMIT } } },
  });
}

/** An association whose first destination is the harmless `first` echo, proven relayed. */
async function openAssociation(g: TestGateway) {
  const client = await udpSocket(cleanups);
  const a = await associate(g, client, cleanups);
  const reply = nextReply(client);
  await sendTo(client, udpFrame('127.0.0.1', first.port, Buffer.from('harmless')), a.relay);
  expect((await reply).data.toString()).toBe('echo:harmless');
  return { ...a, client };
}

describe('a UDP association\'s later destinations meet the connect-time detectors', () => {
  it('enforce: a proxyware provider is refused, the identity quarantined for new destinations, the relay to the first goes on', async () => {
    gw = await start('enforce');
    const a = await openAssociation(gw);
    // Datagrams to the provider and then to a new destination: both refused. The relay handles
    // destinations in order, so the echo of the known destination that follows proves both were
    // judged.
    await sendTo(a.client, udpFrame(PROVIDER, second.port, Buffer.from('to the provider')), a.relay);
    await sendTo(a.client, udpFrame('127.0.0.1', second.port, Buffer.from('after the finding')), a.relay);
    const reply = nextReply(a.client);
    await sendTo(a.client, udpFrame('127.0.0.1', first.port, Buffer.from('still here')), a.relay);
    expect(await reply).toMatchObject({ host: '127.0.0.1', port: first.port });
    expect(second.received).toEqual([]);

    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.proxyware');
    expect(alert.action).toBe('block');
    expect(alert.enforced).toBe(true);
    expect(alert.evidence['providerDomain']).toBe('honeygain.com');
    const refusals = gw.logs.filter((l) => l.msg === 'socks5 udp destination refused');
    expect(refusals.map((l) => [l['destination'], String(l['reason'])])).toEqual([
      [`${PROVIDER}:${second.port}`, expect.stringMatching(/an0081\.proxyware.*proxyware provider domain/)],
      [`127.0.0.1:${second.port}`, expect.stringMatching(/quarantine/)],
    ]);

    a.control.destroy();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === first.port);
    expect(alert.flowIds).toEqual([rec.id]);
    expect(rec.reasons.join('\n')).toMatch(/1 destination relayed, 2 refused/);
    expect(rec.bytesOut).toBe('harmless'.length + 'still here'.length);
    // Each refused destination left its own refused record, as a refused CONNECT does.
    const refused = gw.closed.filter((r) => r.protocol === 'socks5-udp' && r.id !== rec.id);
    expect(refused.map((r) => [r.destination.host, r.verdict, r.detector, r.closeReason])).toEqual([
      [PROVIDER, 'block', 'an0081.proxyware', 'an0081.proxyware'],
      ['127.0.0.1', 'block', 'quarantine', 'quarantine'],
    ]);
  });

  it('monitor: the provider is relayed, and the association is recorded would-block by an0081.proxyware', async () => {
    gw = await start('monitor');
    const a = await openAssociation(gw);
    const reply = nextReply(a.client);
    await sendTo(a.client, udpFrame(PROVIDER, second.port, Buffer.from('to the provider')), a.relay);
    expect(await reply).toMatchObject({ host: PROVIDER, port: second.port });
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.proxyware');
    expect(alert.action).toBe('would-block');
    expect(alert.enforced).toBe(false);

    a.control.destroy();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(rec.verdict).toBe('would-block');
    expect(rec.detector).toBe('an0081.proxyware');
    expect(rec.destination.port).toBe(first.port);
    expect(rec.reasons.join('\n')).toMatch(/2 destinations relayed, 0 refused/);
  });
});

describe('a UDP association\'s destinations count towards fan-out', () => {
  it(`more than ${FANOUT_LIMIT} distinct destinations in one association from a non-browser process: an0081.scan fan-out`, async () => {
    gw = await start('monitor');
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    // The agent names the process behind the client's UDP socket (to the relay) before anything is sent.
    await reportProcesses(gw.adminUrl, 'ws-udp', [
      { proto: 'udp', localIp: '127.0.0.1', localPort: client.address().port, remoteIp: a.relay.host, remotePort: a.relay.port, pid: 4242, name: 'python3', exe: '/usr/bin/python3' },
    ]);
    for (const name of FANOUT_NAMES) {
      const reply = nextReply(client);
      await sendTo(client, udpFrame(name, first.port, Buffer.from(name)), a.relay);
      expect((await reply).host).toBe(name);
    }
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.scan');
    expect(alert.evidence['kind']).toBe('fan-out');
    // The sweep (every 50 ms) may judge after the 6th destination or the 7th: over the limit either way.
    expect(alert.evidence['distinctDestinations']).toBeGreaterThan(FANOUT_LIMIT);
    expect(alert.evidence['distinctDestinations']).toBeLessThanOrEqual(FANOUT_NAMES.length);
    expect(alert.identity.process?.name).toBe('python3');

    a.control.destroy();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(rec.identity.process?.name).toBe('python3');
    expect(rec.reasons.join('\n')).toMatch(/7 destinations relayed, 0 refused/);
  });
});

// Regression: agent reports were joined to flows by "ip:port" whatever their proto, so the report
// of a TCP socket named the process of a UDP association from the same port number: another socket,
// in its own port space, possibly another process's.
describe('an agent report names a UDP association only when it is about a UDP socket', () => {
  it('enforce: a TCP report for the port number leaves the association unattributed; a UDP report refuses it as proxyware', async () => {
    gw = await start('enforce');
    const tcpClient = await udpSocket(cleanups);
    const port = tcpClient.address().port;
    await reportProcesses(gw.adminUrl, 'ws-udp', [
      { proto: 'tcp', localIp: '127.0.0.1', localPort: port, remoteIp: gw.socksHost, remotePort: gw.socksPort, pid: 4243, name: 'honeygain' },
    ]);
    const a = await associate(gw, tcpClient, cleanups);
    const reply = nextReply(tcpClient);
    const isFirst = (r: { protocol: string; client: { port: number } }) => r.protocol === 'socks5-udp' && r.client.port === port;
    // A refused association never answers: its record ends the wait instead.
    const closedFirst = gw.waitForClosed(isFirst).then((r) => `closed: ${r.verdict} ${r.detector} ${r.identity.process?.name}`, () => 'no record');
    await sendTo(tcpClient, udpFrame('127.0.0.1', first.port, Buffer.from('not named by a tcp report')), a.relay);
    expect(await Promise.race([reply.then((r) => r.data.toString()), closedFirst])).toBe('echo:not named by a tcp report');
    a.control.destroy();
    const rec = await gw.waitForClosed(isFirst);
    expect(rec.identity.process).toBeNull();
    expect(rec.verdict).toBe('allow');

    const udpClient = await udpSocket(cleanups);
    const b = await associate(gw, udpClient, cleanups);
    await reportProcesses(gw.adminUrl, 'ws-udp', [
      { proto: 'udp', localIp: '127.0.0.1', localPort: udpClient.address().port, remoteIp: b.relay.host, remotePort: b.relay.port, pid: 4244, name: 'honeygain' },
    ]);
    await sendTo(udpClient, udpFrame('127.0.0.1', second.port, Buffer.from('refused')), b.relay);
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === udpClient.address().port);
    expect(refused.identity.process?.name).toBe('honeygain');
    expect([refused.verdict, refused.detector]).toEqual(['block', 'an0081.proxyware']);
    expect(second.received).toEqual([]);
  });
});

describe('agent attribution of a UDP association', () => {
  // Regression: the refused destination's record was opened with the association's client address,
  // took over the flow table's lookup entry for it, and deleted it when it closed: an agent report
  // for the client's port then attributed nothing (pending) and the association stayed process-less.
  it('survives a refused destination: a later report still names the association\'s process', async () => {
    gw = await start('enforce');
    const a = await openAssociation(gw);
    const report = (name: string) =>
      reportProcesses((gw as TestGateway).adminUrl, 'ws-udp', [
        { proto: 'udp', localIp: '127.0.0.1', localPort: a.client.address().port, remoteIp: a.relay.host, remotePort: a.relay.port, pid: 4343, name, exe: `/usr/bin/${name}` },
      ]);
    // RFC 1918 (deny-range): refused, with its own record for the same client address.
    await sendTo(a.client, udpFrame('10.0.0.1', 53, Buffer.from('refused')), a.relay);
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.host === '10.0.0.1');
    expect(refused).toMatchObject({ reason: 'deny-range', closeReason: 'deny-range', client: { ip: '127.0.0.1', port: a.client.address().port } });
    expect(await report('dig')).toEqual({ accepted: 1, attributed: 1, pending: 0, shed: 0, ignored: 0, udpRelayPorts: null });
    // The association still relays and is still the one attributed.
    const reply = nextReply(a.client);
    await sendTo(a.client, udpFrame('127.0.0.1', first.port, Buffer.from('after')), a.relay);
    expect((await reply).data.toString()).toBe('echo:after');
    expect(await report('dig')).toEqual({ accepted: 1, attributed: 1, pending: 0, shed: 0, ignored: 0, udpRelayPorts: null });
    a.control.destroy();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === first.port);
    expect(rec.identity.process?.name).toBe('dig');
    expect(rec.reasons.join('\n')).toMatch(/1 destination relayed, 1 refused/);
  });
});

// Regression: the upload detectors judged a UDP association by its first destination and its
// total bytes. A client that sent 100 bytes to an approved upload destination first and then
// 160,000 bytes to another destination got them all through (64 KiB kill budget), with no alert in
// either mode: the approved first destination switched the budget and the sweep's check off.
describe('an0080.bulk-upload judges each destination of a UDP association on its own bytes', () => {
  const BUDGET = 64 * 1024;
  const DATAGRAM = 4000;
  /** Datagrams of DATAGRAM bytes that fit in the budget: the 17th would cross it. */
  const FIT = Math.floor(BUDGET / DATAGRAM);
  const APPROVED = 'backup.corp.test';

  function startUpload(mode: Mode): Promise<TestGateway> {
    return startTestGateway({
      mode,
      resolver: { hosts: { [APPROVED]: '127.0.0.1' } },
      approvedUploadDestinations: [APPROVED],
      detection: { sampleIntervalMs: 50, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: BUDGET, minRatio: 10, storageBytesOut: BUDGET } } },
    });
  }

  /** A destination that answers nothing and counts the bytes that arrive. */
  async function silentSink(): Promise<{ port: number; arrived: () => number }> {
    const s = await udpSocket(cleanups);
    let arrived = 0;
    s.on('message', (m: Buffer) => {
      arrived += m.length;
    });
    return { port: s.address().port, arrived: () => arrived };
  }

  /**
   * Optionally 100 bytes to the approved destination first (proven arrived), then up to 40
   * datagrams of DATAGRAM bytes to `sink` at 127.0.0.1, each waited for at the sink while the
   * association lasts. Returns the association's record and the bulk-upload alerts.
   */
  async function uploadThrough(g: TestGateway, sink: { port: number; arrived: () => number }, approvedFirst: { port: number; arrived: () => number } | null) {
    const client = await udpSocket(cleanups);
    const a = await associate(g, client, cleanups);
    let isEnded = false;
    a.control.once('close', () => {
      isEnded = true;
    });
    if (approvedFirst) {
      await sendTo(client, udpFrame(APPROVED, approvedFirst.port, Buffer.alloc(100, 1)), a.relay);
      await until('the approved destination got its 100 bytes', () => approvedFirst.arrived() === 100);
    }
    for (let i = 1; i <= 40 && !isEnded; i++) {
      await sendTo(client, udpFrame('127.0.0.1', sink.port, Buffer.alloc(DATAGRAM, 2)), a.relay);
      await until(`datagram ${i} at the sink, or the association's end`, () => sink.arrived() === i * DATAGRAM || isEnded);
    }
    if (!isEnded) a.control.destroy();
    const rec = await g.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === client.address().port);
    const alerts = g.alerts.list().filter((x) => x.detector === 'an0080.bulk-upload');
    return { rec, alerts };
  }

  it('enforce: after an approved destination, the upload to another is cut at its budget, as when sent alone', async () => {
    gw = await startUpload('enforce');
    const alone = await silentSink();
    const single = await uploadThrough(gw, alone, null);
    await gw.stop();

    gw = await startUpload('enforce');
    const approved = await silentSink();
    const sink = await silentSink();
    const two = await uploadThrough(gw, sink, approved);

    for (const [r, s] of [[single, alone], [two, sink]] as const) {
      expect(s.arrived()).toBe(FIT * DATAGRAM);
      expect([r.rec.verdict, r.rec.detector, r.rec.closeReason]).toEqual(['block', 'an0080.bulk-upload', 'an0080.bulk-upload']);
      expect(r.alerts).toHaveLength(1);
      expect(r.alerts[0]).toMatchObject({ action: 'kill', enforced: true, flowIds: [r.rec.id], destination: { host: '127.0.0.1', port: s.port } });
      expect(r.alerts[0]?.evidence).toMatchObject({ bytesOut: BUDGET, bytesIn: 0, thresholdBytesOut: BUDGET });
    }
    // The record stays the association's one, exact to the byte: both destinations' datagrams.
    expect(single.rec.bytesOut).toBe(FIT * DATAGRAM);
    expect(two.rec.bytesOut).toBe(100 + FIT * DATAGRAM);
    expect(two.rec.destination.host).toBe(APPROVED);
    expect(approved.arrived()).toBe(100);
  });

  it('enforce: replies from another destination do not lift the upload budget (out:in is per destination)', async () => {
    gw = await startUpload('enforce');
    // 40,000 bytes out and 40,050 back from the echo: the association's out:in stays near 1 while
    // the upload below goes on, but the upload's destination has sent nothing back.
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    let isEnded = false;
    a.control.once('close', () => {
      isEnded = true;
    });
    for (let i = 0; i < 10; i++) {
      const reply = nextReply(client);
      await sendTo(client, udpFrame('127.0.0.1', first.port, Buffer.alloc(DATAGRAM, 3)), a.relay);
      expect((await reply).data.length).toBe(PREFIX.length + DATAGRAM);
    }
    const sink = await silentSink();
    for (let i = 1; i <= 40 && !isEnded; i++) {
      await sendTo(client, udpFrame('127.0.0.1', sink.port, Buffer.alloc(DATAGRAM, 2)), a.relay);
      await until(`datagram ${i} at the sink, or the association's end`, () => sink.arrived() === i * DATAGRAM || isEnded);
    }
    expect(sink.arrived()).toBe(FIT * DATAGRAM);
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === client.address().port);
    expect([rec.closeReason, rec.bytesOut, rec.bytesIn]).toEqual(['an0080.bulk-upload', 10 * DATAGRAM + FIT * DATAGRAM, 10 * (PREFIX.length + DATAGRAM)]);
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ action: 'kill', destination: { host: '127.0.0.1', port: sink.port } });
    expect(alert.evidence).toMatchObject({ bytesOut: BUDGET, bytesIn: 0 });
  });

  it('flag (no budget): the sweep judges the other destination on its own bytes', async () => {
    gw = await startTestGateway({
      mode: 'enforce',
      resolver: { hosts: { [APPROVED]: '127.0.0.1' } },
      approvedUploadDestinations: [APPROVED],
      detection: { sampleIntervalMs: 50, detectors: { 'an0080.bulk-upload': { action: 'flag', bytesOut: BUDGET, minRatio: 10, storageBytesOut: BUDGET } } },
    });
    const approved = await silentSink();
    const sink = await silentSink();
    const { rec } = await uploadThrough(gw, sink, approved);
    expect(sink.arrived()).toBe(40 * DATAGRAM);
    expect([rec.verdict, rec.closeReason, rec.bytesOut]).toEqual(['allow', 'closed', 100 + 40 * DATAGRAM]);
    // The sweep every 50 ms may see the destination at any point past the budget, or at its end.
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ action: 'flag', flowIds: [rec.id], destination: { host: '127.0.0.1', port: sink.port } });
    expect(alert.evidence['bytesOut']).toBeGreaterThanOrEqual(BUDGET);
    expect(alert.evidence['bytesOut']).toBeLessThanOrEqual(40 * DATAGRAM);
  });

  it('monitor: the upload after an approved destination raises would-kill for the other destination and goes on', async () => {
    gw = await startUpload('monitor');
    const approved = await silentSink();
    const sink = await silentSink();
    const { rec, alerts } = await uploadThrough(gw, sink, approved);
    expect(sink.arrived()).toBe(40 * DATAGRAM);
    expect(rec.bytesOut).toBe(100 + 40 * DATAGRAM);
    expect([rec.verdict, rec.detector, rec.closeReason]).toEqual(['would-block', 'an0080.bulk-upload', 'closed']);
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ action: 'would-kill', enforced: false, flowIds: [rec.id], destination: { host: '127.0.0.1', port: sink.port } });
  });
});
