/**
 * Live proof (issue 5): a 30 MiB upload through a CONNECT tunnel (and over SOCKS5) to a loopback
 * sink, with `an0080.bulk-upload: {action: kill, bytesOut: 10 MiB, minRatio: 10}` and nothing else
 * special in the config (the sink is simply not an approved upload destination). Enforced, the
 * flow record's bytesOut is exactly 10 MiB, it closes `an0080.bulk-upload`, no byte past the
 * budget reaches the sink, and the alert says kill. Monitored, all 30 MiB arrive and the alert says would-kill.
 */
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { MiB, type TcpOrigin, httpConnect, tcpOrigin, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway, until } from '../helpers/gateway.ts';
import { type Cleanups, associate, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { readToEnd } from './socks5-harness.ts';

const BUDGET = 10 * MiB;
const UPLOAD = 30 * MiB;
const CHUNK = 64 * 1024;

let gw: TestGateway | null = null;
let sink: (TcpOrigin & { received: () => number; done: Promise<void> }) | null = null;

const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
  await gw?.stop();
  gw = null;
  await sink?.close();
  sink = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({
    mode,
    detection: { sampleIntervalMs: 50, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: BUDGET, minRatio: 10 } } },
  });
}

/** A sink that counts what it reads (sends nothing back) until its one connection closes. */
async function startSink(): Promise<TcpOrigin & { received: () => number; done: Promise<void> }> {
  let received = 0;
  let markDone: () => void = () => undefined;
  const done = new Promise<void>((r) => {
    markDone = r;
  });
  const origin = await tcpOrigin('127.0.0.1', (s) => {
    s.on('data', (c: Buffer) => {
      received += c.length;
    });
    s.on('end', () => s.end());
    s.once('close', () => markDone());
  });
  return { ...origin, received: () => received, done };
}

/**
 * Write `total` bytes with backpressure until done or the tunnel dies; then half-close.
 * Returns the bytes handed to the socket and whether it was cut.
 */
async function upload(socket: Socket, total: number): Promise<{ written: number; isCut: boolean }> {
  const chunk = Buffer.alloc(CHUNK, 0x5a);
  let written = 0;
  let isCut = false;
  socket.on('error', () => undefined);
  // Not events.once: it rejects on the 'error' (ECONNRESET) that comes with a cut.
  const closed = new Promise<void>((r) =>
    socket.once('close', () => {
      isCut = true;
      r();
    }),
  );
  const drained = (): Promise<void> => new Promise((r) => socket.once('drain', () => r()));
  socket.resume();
  while (written < total && !isCut && !socket.destroyed) {
    const n = Math.min(CHUNK, total - written);
    written += n;
    if (!socket.write(n === CHUNK ? chunk : chunk.subarray(0, n))) {
      await Promise.race([drained(), closed]);
    }
  }
  if (!isCut && !socket.destroyed) socket.end();
  await closed;
  return { written, isCut: isCut && written < total };
}

describe('an0080.bulk-upload byte budget through CONNECT', () => {
  it('enforce: a 30 MiB upload is cut at exactly 10 MiB in the record, nothing past it at the sink, kill alert', async () => {
    gw = await start('enforce');
    sink = await startSink();
    const t = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${sink.port}`);
    expect(t.status).toBe(200);
    const res = await upload(t.socket, UPLOAD);
    expect(res.isCut).toBe(true);
    await sink.done;
    const rec = await gw.waitForClosed((r) => r.destination.port === sink?.port);
    expect(rec.closeReason).toBe('an0080.bulk-upload');
    // The record says the detector blocked it, not allow with only the close reason naming it.
    expect([rec.verdict, rec.reason, rec.detector]).toEqual(['block', 'detector', 'an0080.bulk-upload']);
    expect(rec.bytesOut).toBe(BUDGET);
    expect(res.written).toBeGreaterThan(BUDGET);
    // Exactly the budget reaches the sink: not one byte more, and none of it lost to the kill.
    expect(sink.received()).toBe(BUDGET);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect(alert.analytic).toBe('AN0080');
    expect(alert.action).toBe('kill');
    expect(alert.enforced).toBe(true);
    expect(alert.flowIds).toEqual([rec.id]);
    expect(alert.evidence['bytesOut']).toBe(BUDGET);
    expect(alert.evidence['thresholdBytesOut']).toBe(BUDGET);
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0080.bulk-upload')).toHaveLength(1);
  });

  it('monitor: the same upload completes (30 MiB at the sink) with a would-kill alert', async () => {
    gw = await start('monitor');
    sink = await startSink();
    const t = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${sink.port}`);
    expect(t.status).toBe(200);
    const res = await upload(t.socket, UPLOAD);
    expect(res.isCut).toBe(false);
    await sink.done;
    expect(sink.received()).toBe(UPLOAD);
    const rec = await gw.waitForClosed((r) => r.destination.port === sink?.port);
    expect(rec.closeReason).toBe('closed');
    expect(rec.bytesOut).toBe(UPLOAD);
    // Regression: the record said verdict allow, reason allowed, detector null beside a would-kill alert.
    expect([rec.verdict, rec.reason, rec.detector, rec.enforced]).toEqual(['would-block', 'detector', 'an0080.bulk-upload', false]);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect(alert.action).toBe('would-kill');
    expect(alert.enforced).toBe(false);
    expect(alert.flowIds).toEqual([rec.id]);
    // The sweep sees the same flow over the threshold too: grouped, not a second alert.
    await waitForSweeps(gw.flows, 3);
    expect(gw.alerts.list().filter((a) => a.detector === 'an0080.bulk-upload')).toHaveLength(1);
  });
});

describe('an0080.bulk-upload byte budget over SOCKS5', () => {
  it('enforce: cut at exactly 10 MiB in the record, nothing past it at the sink', async () => {
    gw = await start('enforce');
    sink = await startSink();
    const { socket } = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: sink.port },
      timeout: 5000,
    });
    const res = await upload(socket, UPLOAD);
    expect(res.isCut).toBe(true);
    await sink.done;
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5' && r.destination.port === sink?.port);
    expect(rec.closeReason).toBe('an0080.bulk-upload');
    expect(rec.bytesOut).toBe(BUDGET);
    expect(sink.received()).toBe(BUDGET);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect(alert.action).toBe('kill');
    expect(alert.flowIds).toEqual([rec.id]);
  });
});

/**
 * Regression: when the out:in ratio was short at the budget (the origin had sent something first),
 * the budget was lifted for good. With a 1 MiB budget and 150 KiB downloaded first, an upload as
 * fast as the client could went on unbudgeted (435 MB in the reviewer's record, killed only at the
 * next sweep). Now the budget moves to where the rule could hold (150 KiB × minRatio 10) and the
 * flow is cut there, exactly.
 */
describe('an0080.bulk-upload budget after a download (out:in short at the budget)', () => {
  const DOWNLOAD = 150 * 1024;
  const MOVED = DOWNLOAD * 10;

  /** A sink that first sends DOWNLOAD bytes, then counts what it reads until its connection closes. */
  async function startChattySink(): Promise<TcpOrigin & { received: () => number; done: Promise<void> }> {
    let received = 0;
    let markDone: () => void = () => undefined;
    const done = new Promise<void>((r) => {
      markDone = r;
    });
    const origin = await tcpOrigin('127.0.0.1', (s) => {
      s.write(Buffer.alloc(DOWNLOAD, 0x33));
      s.on('data', (c: Buffer) => {
        received += c.length;
      });
      s.on('end', () => s.end());
      s.once('close', () => markDone());
    });
    return { ...origin, received: () => received, done };
  }

  /** Read exactly DOWNLOAD bytes from the tunnel before uploading anything. */
  async function readDownload(socket: Socket): Promise<void> {
    let got = 0;
    socket.resume();
    await new Promise<void>((resolve, reject) => {
      const onData = (c: Buffer): void => {
        got += c.length;
        if (got >= DOWNLOAD) {
          socket.off('data', onData);
          resolve();
        }
      };
      socket.on('data', onData);
      socket.once('close', () => reject(new Error(`tunnel closed after ${got} downloaded bytes`)));
    });
  }

  function startMoving(mode: Mode): Promise<TestGateway> {
    // A sweep every 10 s: the budget, not the sweep, must stop the flow.
    return startTestGateway({
      mode,
      detection: { sampleIntervalMs: 10_000, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: MiB, minRatio: 10, storageBytesOut: MiB } } },
    });
  }

  it('enforce: cut at exactly bytesIn × minRatio (1,536,000 bytes), not lifted; nothing past it at the sink', async () => {
    gw = await startMoving('enforce');
    const s = await startChattySink();
    sink = s;
    const t = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${s.port}`);
    expect(t.status).toBe(200);
    await readDownload(t.socket);
    const res = await upload(t.socket, 16 * MiB);
    expect(res.isCut).toBe(true);
    await s.done;
    const rec = await gw.waitForClosed((r) => r.destination.port === s.port);
    expect(rec.closeReason).toBe('an0080.bulk-upload');
    expect(rec.bytesIn).toBe(DOWNLOAD);
    expect(rec.bytesOut).toBe(MOVED);
    expect(s.received()).toBe(MOVED);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ action: 'kill', enforced: true, flowIds: [rec.id] });
    expect(alert.evidence).toMatchObject({ bytesOut: MOVED, bytesIn: DOWNLOAD, thresholdBytesOut: MiB });
  });

  it('monitor: would-kill is raised at the point the rule held (evidence bytesOut 1,536,000) and the upload completes', async () => {
    gw = await startMoving('monitor');
    const s = await startChattySink();
    sink = s;
    const t = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${s.port}`);
    expect(t.status).toBe(200);
    await readDownload(t.socket);
    const res = await upload(t.socket, 4 * MiB);
    expect(res.isCut).toBe(false);
    await s.done;
    expect(s.received()).toBe(4 * MiB);
    const rec = await gw.waitForClosed((r) => r.destination.port === s.port);
    expect(rec.bytesOut).toBe(4 * MiB);
    expect([rec.verdict, rec.detector]).toEqual(['would-block', 'an0080.bulk-upload']);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ action: 'would-kill', enforced: false, flowIds: [rec.id] });
    expect(alert.evidence).toMatchObject({ bytesOut: MOVED, bytesIn: DOWNLOAD });
  });

  it('SOCKS5 UDP, enforce: after a 1,005-byte reply a 4 KiB budget moves to 10,050 and the datagram that would cross it ends the association', async () => {
    gw = await startTestGateway({
      mode: 'enforce',
      detection: { sampleIntervalMs: 10_000, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: 4096, minRatio: 10, storageBytesOut: 4096 } } },
    });
    // A destination that answers its first datagram with 1,005 bytes, then nothing, and counts what
    // arrives. The budget is this destination's own: another destination's replies do not move it.
    const dest = createSocket('udp4');
    let arrived = 0;
    dest.on('message', (m: Buffer, from) => {
      if (arrived === 0) dest.send(Buffer.alloc(1005, 4), from.port, from.address);
      arrived += m.length;
    });
    dest.bind(0, '127.0.0.1');
    await once(dest, 'listening');
    cleanups.push(() => new Promise<void>((r) => dest.close(() => r())));
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const controlDone = readToEnd(a.control);
    // bytesOut 1,000, bytesIn 1,005.
    const reply = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', dest.address().port, Buffer.alloc(1000, 1)), a.relay);
    expect((await reply).data.length).toBe(1005);
    // Nine more 1,000-byte datagrams fit: past 4,096 out:in is 4.1, so the budget moves to 10,050.
    for (let i = 2; i <= 10; i++) {
      await sendTo(client, udpFrame('127.0.0.1', dest.address().port, Buffer.alloc(1000, 2)), a.relay);
      await until(`datagram ${i} at the destination`, () => arrived === i * 1000);
    }
    // The eleventh would take bytesOut to 11,000, past 10,050 where out:in reaches 10: not sent, association ended.
    await sendTo(client, udpFrame('127.0.0.1', dest.address().port, Buffer.alloc(1000, 3)), a.relay);
    const { error } = await controlDone;
    expect(error).toBe('ECONNRESET');
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(rec.closeReason).toBe('an0080.bulk-upload');
    expect([rec.bytesOut, rec.bytesIn]).toEqual([10_000, 1005]);
    expect(arrived).toBe(10_000);
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ action: 'kill', flowIds: [rec.id] });
    expect(alert.evidence).toMatchObject({ bytesOut: 10_050, bytesIn: 1005, thresholdBytesOut: 4096 });
  });
});

/**
 * Regression: each spelling of one UDP destination was a destination of its own, with its own byte
 * budget. Against a 4,096-byte kill budget, 3,000 bytes each to 127.0.0.1 as an IPv4 address,
 * IPv4-mapped IPv6, '2130706433', '0x7f000001', '127.1', and by a resolver.hosts name as 'sink.test',
 * 'SINK.test' and 'sink.test.', reached the one destination in either mode: 24,000 bytes, record
 * allow / closed, no alert.
 */
describe('an0080.bulk-upload budget of a SOCKS5 UDP destination named several ways', () => {
  /** A UDP destination on 127.0.0.1 that counts the bytes it receives. */
  async function countingDestination(): Promise<{ port: number; arrived: () => number }> {
    const dest = createSocket('udp4');
    let arrived = 0;
    dest.on('message', (m: Buffer) => {
      arrived += m.length;
    });
    dest.bind(0, '127.0.0.1');
    await once(dest, 'listening');
    cleanups.push(() => new Promise<void>((r) => dest.close(() => r())));
    return { port: dest.address().port, arrived: () => arrived };
  }

  function startUdp(mode: Mode): Promise<TestGateway> {
    return startTestGateway({
      mode,
      resolver: { hosts: { 'sink.test': '127.0.0.1' } },
      detection: { sampleIntervalMs: 10_000, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: 4096, minRatio: 10, storageBytesOut: 4096 } } },
    });
  }

  it('enforce: five spellings of 127.0.0.1 share one 4 KiB budget; the datagram that would cross it ends the association', async () => {
    gw = await startUdp('enforce');
    const dest = await countingDestination();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const controlDone = readToEnd(a.control);
    const spellings = ['127.0.0.1', '::ffff:127.0.0.1', '2130706433', '0x7f000001'];
    for (const [i, host] of spellings.entries()) {
      await sendTo(client, udpFrame(host, dest.port, Buffer.alloc(1000, i)), a.relay);
      await until(`${host}'s datagram at the destination`, () => dest.arrived() === (i + 1) * 1000);
    }
    // 4,000 sent; a fifth 1,000 bytes, spelled '127.1', would take the destination to 5,000.
    await sendTo(client, udpFrame('127.1', dest.port, Buffer.alloc(1000, 9)), a.relay);
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp', 5000);
    const { error } = await controlDone;
    expect(error).toBe('ECONNRESET');
    expect(rec.closeReason).toBe('an0080.bulk-upload');
    expect([rec.verdict, rec.detector, rec.enforced]).toEqual(['block', 'an0080.bulk-upload', true]);
    expect(rec.bytesOut).toBe(4000);
    // Each spelling is admitted and counted; their bytes are one destination's.
    expect(rec.reasons).toContain('udp association: 5 destinations relayed, 0 refused');
    expect(dest.arrived()).toBe(4000);
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ action: 'kill', enforced: true, flowIds: [rec.id] });
    expect(alert.evidence).toMatchObject({ bytesOut: 4096, thresholdBytesOut: 4096 });
  });

  it('monitor: a name in four spellings is one destination: one would-kill at its budget, every byte relayed', async () => {
    gw = await startUdp('monitor');
    const dest = await countingDestination();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const spellings = ['sink.test', 'SINK.test', 'sink.test.', 'Sink.Test'];
    for (const [i, host] of spellings.entries()) {
      await sendTo(client, udpFrame(host, dest.port, Buffer.alloc(1500, i)), a.relay);
      await until(`${host}'s datagram at the destination`, () => dest.arrived() === (i + 1) * 1500);
    }
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ action: 'would-kill', enforced: false });
    expect(alert.evidence).toMatchObject({ bytesOut: 4096, thresholdBytesOut: 4096 });
    expect(alert.destination).toMatchObject({ host: 'sink.test', port: dest.port });
    a.control.end();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(rec.bytesOut).toBe(6000);
    expect(dest.arrived()).toBe(6000);
    expect([rec.verdict, rec.detector, rec.closeReason]).toEqual(['would-block', 'an0080.bulk-upload', 'closed']);
    expect(rec.reasons).toContain('udp association: 4 destinations relayed, 0 refused');
    expect(gw.alerts.list().filter((x) => x.detector === 'an0080.bulk-upload')).toHaveLength(1);
  });
});
