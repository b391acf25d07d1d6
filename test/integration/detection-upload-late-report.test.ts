/**
 * An agent report that names a live tunnel's process after it opened (SPEC §7: "still attributes
 * it and the flow is re-evaluated") judges its an0080.bulk-upload byte budget again: `rclone` is an
 * untrusted uploader (an exfil tool), whose budget is `storageBytesOut`, and the tunnel is cut at
 * exactly that many bytes, as one whose report came first is (SPEC §4: not one byte past it).
 *
 * Regression: the budget stayed the one admission gave the unnamed flow (`bytesOut`, 8 MiB here).
 * Through the real listeners, a CONNECT named rclone by the agent before it sent anything carried a
 * 4 MiB upload whole (record closed, verdict allow, 4 MiB at the sink) and the kill came from a
 * sweep, after the flow had ended; monitor's would-kill named 4 MiB, not the 1 MiB budget.
 */
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { MiB, type TcpOrigin, httpConnect, reportProcesses, tcpOrigin, testAgent, waitForAlert } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway, until } from '../helpers/gateway.ts';

const BUDGET = 1 * MiB;
const CHUNK = 64 * 1024;

let gw: TestGateway | null = null;
let sink: (TcpOrigin & { received: () => number }) | null = null;

afterEach(async () => {
  await gw?.stop();
  gw = null;
  await sink?.close();
  sink = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({
    mode,
    identity: { agents: [testAgent] },
    detection: {
      sampleIntervalMs: 50,
      detectors: {
        'an0080.bulk-upload': { action: 'kill', bytesOut: 8 * MiB, storageBytesOut: BUDGET, minRatio: 10 },
        // rclone to an ordinary host is a flag for exfil-tool: the budget is what stops it.
        'an0080.exfil-tool': { action: 'flag' },
      },
    },
  });
}

async function startSink(): Promise<TcpOrigin & { received: () => number }> {
  let received = 0;
  const origin = await tcpOrigin('127.0.0.1', (s) => {
    s.on('data', (c: Buffer) => {
      received += c.length;
    });
    s.on('end', () => s.end());
  });
  return { ...origin, received: () => received };
}

/** Write `total` bytes with backpressure until done or cut; half-close when done; wait for the close. */
async function upload(socket: Socket, total: number): Promise<number> {
  const chunk = Buffer.alloc(CHUNK, 0x5a);
  let written = 0;
  let isClosed = false;
  socket.on('error', () => undefined);
  const closed = new Promise<void>((r) =>
    socket.once('close', () => {
      isClosed = true;
      r();
    }),
  );
  socket.resume();
  while (written < total && !isClosed) {
    written += CHUNK;
    if (!socket.write(chunk)) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
  }
  if (!isClosed) socket.end();
  await closed;
  return written;
}

/** A CONNECT to the sink, then the agent's report naming its client rclone. */
async function tunnelNamedRclone(g: TestGateway, port: number): Promise<Socket> {
  const t = await httpConnect({ host: g.httpHost, port: g.httpPort }, `127.0.0.1:${port}`);
  expect(t.status).toBe(200);
  const r = await reportProcesses(g.adminUrl, 'ws-late', [
    { localIp: '127.0.0.1', localPort: t.socket.localPort ?? 0, remoteIp: g.httpHost, remotePort: g.httpPort, pid: 4242, name: 'rclone', user: 'bob' },
  ]);
  expect(r.attributed).toBe(1);
  return t.socket;
}

describe('an0080.bulk-upload budget of a tunnel an agent names after it opened', () => {
  it('enforce: rclone named before any byte is cut at exactly storageBytesOut; nothing past it at the sink', async () => {
    gw = await start('enforce');
    sink = await startSink();
    const written = await upload(await tunnelNamedRclone(gw, sink.port), 4 * MiB);
    const rec = await gw.waitForClosed((r) => r.destination.port === sink?.port);
    expect(rec.identity.process?.name).toBe('rclone');
    expect([rec.verdict, rec.closeReason, rec.bytesOut]).toEqual(['block', 'an0080.bulk-upload', BUDGET]);
    expect(written).toBeGreaterThan(BUDGET);
    await until('the sink connection closed', () => (sink?.conns.length ?? 0) > 0 && (sink?.conns.every((s) => s.closed) ?? false));
    expect(sink.received()).toBe(BUDGET);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect([alert.action, alert.flowIds, alert.evidence['bytesOut'], alert.evidence['thresholdBytesOut']]).toEqual(['kill', [rec.id], BUDGET, BUDGET]);
  });

  it('enforce: named after 2 MiB went, it is cut at its next chunk, the record saying what went', async () => {
    gw = await start('enforce');
    sink = await startSink();
    const t = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${sink.port}`);
    expect(t.status).toBe(200);
    t.socket.on('error', () => undefined);
    t.socket.write(Buffer.alloc(2 * MiB, 0x5a));
    await until('2 MiB at the sink', () => sink?.received() === 2 * MiB);
    const r = await reportProcesses(gw.adminUrl, 'ws-late', [
      { localIp: '127.0.0.1', localPort: t.socket.localPort ?? 0, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4242, name: 'rclone', user: 'bob' },
    ]);
    expect(r.attributed).toBe(1);
    await upload(t.socket, 2 * MiB);
    const rec = await gw.waitForClosed((x) => x.destination.port === sink?.port);
    expect([rec.verdict, rec.closeReason, rec.bytesOut]).toEqual(['block', 'an0080.bulk-upload', 2 * MiB]);
    expect(sink.received()).toBe(2 * MiB);
  });

  it('monitor: the would-kill comes at exactly storageBytesOut and the upload completes', async () => {
    gw = await start('monitor');
    sink = await startSink();
    await upload(await tunnelNamedRclone(gw, sink.port), 4 * MiB);
    const rec = await gw.waitForClosed((r) => r.destination.port === sink?.port);
    expect([rec.verdict, rec.closeReason, rec.bytesOut]).toEqual(['would-block', 'closed', 4 * MiB]);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect([alert.action, alert.evidence['bytesOut'], alert.evidence['thresholdBytesOut']]).toEqual(['would-kill', BUDGET, BUDGET]);
  });
});
