/**
 * A live flow monitor mode let run past a kill (a `would-kill`: here an0080.bulk-upload past its byte
 * budget) is killed by the next sweep once a change puts its identity in enforce mode: `PUT /v1/mode`
 * or a reload moving its user into an enforce role (docs/spec-notes.md, Modes: a detector acting on
 * a live flow acts in the mode current when it fires). Before, the sweep's grouping counted the
 * monitored finding as acted on and held its repeats back for the corroboration window (an hour):
 * after `{"mode":"enforce"}` a SOCKS5 tunnel, a CONNECT tunnel and a UDP association past a 128 KiB
 * budget went on relaying, no kill and no alert, sweep after sweep. The same for a would-block
 * (an0080.split-upload) going on over the same tunnels: no block, the identity's next connection
 * admitted.
 * Real gateway, real SOCKS5 and HTTP listeners, loopback sinks that read and never answer.
 */
import { once } from 'node:events';
import { createSocket } from 'node:dgram';
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { httpConnect, type TcpOrigin, tcpOrigin, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { adminPut, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';

const BUDGET = 128 * 1024;
const PAST = 256 * 1024;
const ALICE = { userId: 'alice', password: 'pw-alice-0123' };

const cleanups: Cleanups = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

type Sink = TcpOrigin & { received: () => number };

/** Global mode monitor; alice is in `watched` (no mode of its own), `strict` is enforce. */
async function gateway(): Promise<TestGateway> {
  const gw = await startTestGateway({
    mode: 'monitor',
    identity: { users: [{ name: ALICE.userId, password: ALICE.password, roles: ['watched'] }] },
    roles: { watched: { allow: [{ cidr: '127.0.0.0/8' }] }, strict: { mode: 'enforce', allow: [{ cidr: '127.0.0.0/8' }] }, any: { allow: [{ cidr: '127.0.0.0/8' }] } },
    defaultRoles: ['any'],
    detection: { sampleIntervalMs: 50, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: BUDGET, minRatio: 10 } } },
  });
  cleanups.push(() => gw.stop());
  return gw;
}

/** A TCP sink that counts what it reads and sends nothing back. */
async function startSink(): Promise<Sink> {
  let received = 0;
  const origin = await tcpOrigin('127.0.0.1', (s) => {
    s.on('data', (c: Buffer) => {
      received += c.length;
    });
  });
  cleanups.push(() => origin.close());
  return { ...origin, received: () => received };
}

/** Write `n` bytes through the tunnel, with backpressure, and wait until the sink has them all. */
async function upload(socket: Socket, sink: Sink, n: number): Promise<void> {
  const chunk = Buffer.alloc(16 * 1024, 0x5a);
  const target = sink.received() + n;
  for (let written = 0; written < n; written += chunk.length) {
    if (!socket.write(chunk)) await once(socket, 'drain');
  }
  await until('the sink has the upload', () => sink.received() >= target);
}

/**
 * The tunnel past its budget in monitor mode: the would-kill alert, then two sweeps that saw it
 * past the budget (the sweep's own bulk-upload finding is the one whose repeats the grouping held).
 */
async function pastTheBudget(gw: TestGateway, socket: Socket, sink: Sink): Promise<void> {
  await upload(socket, sink, PAST);
  const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
  expect([alert.action, alert.enforced]).toEqual(['would-kill', false]);
  await waitForSweeps(gw.flows, 2);
}

function expectKilled(rec: FlowRecord): void {
  expect(rec).toMatchObject({ verdict: 'block', enforced: true, reason: 'detector', detector: 'an0080.bulk-upload', closeReason: 'an0080.bulk-upload' });
  expect(rec.bytesOut).toBeGreaterThanOrEqual(PAST);
}

async function socksTunnel(gw: TestGateway, port: number, auth: { userId: string; password: string } | null): Promise<Socket> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: gw.socksHost, port: gw.socksPort, type: 5, ...(auth ?? {}) },
    command: 'connect',
    destination: { host: '127.0.0.1', port },
    timeout: 5000,
  });
  socket.on('error', () => undefined);
  cleanups.push(() => socket.destroy());
  return socket;
}

async function expectKillAlert(gw: TestGateway): Promise<void> {
  const kill = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload' && a.action === 'kill');
  expect(kill.enforced).toBe(true);
}

describe('a would-killed live flow after a change to enforce mode', () => {
  it('PUT /v1/mode enforce: a SOCKS5 tunnel past its budget is killed by the next sweep (record block, kill alert)', async () => {
    const gw = await gateway();
    const sink = await startSink();
    const socket = await socksTunnel(gw, sink.port, null);
    await pastTheBudget(gw, socket, sink);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    expectKilled(await gw.waitForClosed((r) => r.protocol === 'socks5' && r.destination.port === sink.port));
    await expectKillAlert(gw);
  });

  it('PUT /v1/mode enforce: a CONNECT tunnel past its budget is killed by the next sweep', async () => {
    const gw = await gateway();
    const sink = await startSink();
    const answer = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${sink.port}`);
    expect(answer.status).toBe(200);
    const socket = answer.socket;
    socket.on('error', () => undefined);
    socket.resume();
    cleanups.push(() => socket.destroy());
    await pastTheBudget(gw, socket, sink);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    expectKilled(await gw.waitForClosed((r) => r.protocol === 'connect' && r.destination.port === sink.port));
    await expectKillAlert(gw);
  });

  it('a reload moving the user into an enforce role: her tunnel past its budget is killed by the next sweep', async () => {
    const gw = await gateway();
    const sink = await startSink();
    const socket = await socksTunnel(gw, sink.port, ALICE);
    await pastTheBudget(gw, socket, sink);
    const config = structuredClone(gw.policy.current().config) as { identity: { users: Array<{ roles: string[] }> } };
    (config.identity.users[0] as { roles: string[] }).roles = ['strict'];
    expect(gw.policy.reload(config, { author: 'test', source: 'api' }).ok).toBe(true);
    expectKilled(await gw.waitForClosed((r) => r.protocol === 'socks5' && r.destination.port === sink.port));
    await expectKillAlert(gw);
  });

  it('PUT /v1/mode enforce: a SOCKS5 UDP association past a destination’s budget is killed by the next sweep', async () => {
    const gw = await gateway();
    let received = 0;
    const sink = createSocket('udp4');
    sink.on('message', (m: Buffer) => {
      received += m.length;
    });
    sink.bind(0, '127.0.0.1');
    await once(sink, 'listening');
    cleanups.push(() => new Promise<void>((r) => sink.close(() => r())));
    const port = sink.address().port;
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const datagram = Buffer.alloc(8 * 1024, 0x5a);
    for (let sent = 0; sent < PAST; sent += datagram.length) {
      await sendTo(client, udpFrame('127.0.0.1', port, datagram), a.relay);
      await until('the sink has the datagram', () => received >= sent + datagram.length);
    }
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0080.bulk-upload');
    expect([alert.action, alert.enforced]).toEqual(['would-kill', false]);
    await waitForSweeps(gw.flows, 2);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    // An idle destination is not swept (pushActiveLegs): its next datagram brings it to the sweep.
    await sendTo(client, udpFrame('127.0.0.1', port, datagram), a.relay);
    expectKilled(await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === port));
    await expectKillAlert(gw);
  });

  it('PUT /v1/mode enforce: a split upload going on over the same two tunnels quarantines the identity at the next sweep; its next connection is refused', async () => {
    const gw = await startTestGateway({
      mode: 'monitor',
      detection: { sampleIntervalMs: 50, detectors: { 'an0080.split-upload': { action: 'block', windowSec: 3600, bytesOut: BUDGET } } },
    });
    cleanups.push(() => gw.stop());
    const sink = await startSink();
    const first = await socksTunnel(gw, sink.port, null);
    const second = await socksTunnel(gw, sink.port, null);
    await upload(first, sink, 80 * 1024);
    await upload(second, sink, 80 * 1024);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.split-upload');
    expect([alert.action, alert.enforced]).toEqual(['would-block', false]);
    await waitForSweeps(gw.flows, 2);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    await upload(first, sink, 16 * 1024);
    const block = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.split-upload' && a.action === 'block');
    expect(block.enforced).toBe(true);
    // A block finding quarantines; it kills nothing: both tunnels still carry bytes.
    await upload(second, sink, 16 * 1024);
    const third = await socksTunnel(gw, sink.port, null).then(
      () => 'admitted',
      (err: Error) => err.message,
    );
    expect(third).toMatch(/NotAllowed/);
    expect(await gw.waitForClosed((r) => r.reason === 'quarantine')).toMatchObject({ verdict: 'block', enforced: true, closeReason: 'quarantine' });
  });

  it('control: a change that leaves it in monitor mode (PUT /v1/mode monitor) kills nothing; the tunnel carries on', async () => {
    const gw = await gateway();
    const sink = await startSink();
    const socket = await socksTunnel(gw, sink.port, null);
    await pastTheBudget(gw, socket, sink);
    expect(await adminPut(gw, '/v1/mode', { mode: 'monitor' })).toBe(200);
    await waitForSweeps(gw.flows, 3);
    await upload(socket, sink, 64 * 1024);
    expect(gw.flows.activeFlows().size).toBe(1);
    expect(gw.alerts.list({ limit: 100 }).map((x) => x.action)).toEqual(['would-kill']);
  });
});
