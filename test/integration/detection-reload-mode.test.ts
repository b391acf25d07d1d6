/**
 * A detector acting on a live flow acts in the mode a new flow of the same identity would get now
 * (docs/spec-notes.md, Modes): the running policy's roles for its user and host, not the roles the
 * flow was admitted with. A reload moving alice from a role in monitor mode to one in enforce mode
 * makes her live tunnel's byte budget a kill; the reverse makes it a would-kill the tunnel runs past.
 * Before, the budget was judged with the admission's roles: 1 MiB relayed whole past a 128 KiB
 * budget after the move to enforce, and cut at exactly 128 KiB after the move to monitor.
 * Real gateway, real SOCKS5 listener (RFC 1929 login), loopback sink.
 */
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import { type TcpOrigin, tcpOrigin, waitForAlert } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const BUDGET = 128 * 1024;
const UPLOAD = 1024 * 1024;
const FIRST = 1024;
const ALICE = { userId: 'alice', password: 'pw-alice-0123' };

type Sink = TcpOrigin & { received: () => number; done: Promise<void> };
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** Global mode monitor; `watched` keeps it, `strict` is enforce; both allow loopback. */
async function gatewayWithAliceIn(role: 'watched' | 'strict'): Promise<TestGateway> {
  const gw = await startTestGateway({
    mode: 'monitor',
    identity: { users: [{ name: ALICE.userId, password: ALICE.password, roles: [role] }] },
    roles: { watched: { allow: [{ cidr: '127.0.0.0/8' }] }, strict: { mode: 'enforce', allow: [{ cidr: '127.0.0.0/8' }] } },
    defaultRoles: [],
    detection: { sampleIntervalMs: 50, detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: BUDGET, minRatio: 10 } } },
  });
  cleanups.push(() => gw.stop());
  return gw;
}

/** A reload (as PUT /v1/policy and SIGHUP make) that gives alice `role` instead. */
function moveAliceTo(gw: TestGateway, role: 'watched' | 'strict'): void {
  const config = structuredClone(gw.policy.current().config) as { identity: { users: Array<{ roles: string[] }> } };
  (config.identity.users[0] as { roles: string[] }).roles = [role];
  expect(gw.policy.reload(config, { author: 'test', source: 'api' }).ok).toBe(true);
}

/** A sink that counts what it reads (sends nothing back) until its one connection closes. */
async function startSink(): Promise<Sink> {
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
  cleanups.push(() => origin.close());
  return { ...origin, received: () => received, done };
}

/** Alice's tunnel to the sink, FIRST bytes through it (admitted, under the budget). */
async function aliceTunnel(gw: TestGateway, sink: Sink): Promise<Socket> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: gw.socksHost, port: gw.socksPort, type: 5, ...ALICE },
    command: 'connect',
    destination: { host: '127.0.0.1', port: sink.port },
    timeout: 5000,
  });
  cleanups.push(() => socket.destroy());
  socket.on('error', () => undefined);
  socket.write(Buffer.alloc(FIRST, 0x5a));
  const deadline = Date.now() + 5000;
  while (sink.received() < FIRST && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  expect(sink.received()).toBe(FIRST);
  return socket;
}

/** Write the rest of UPLOAD with backpressure until done or cut, half-close, wait for the close. */
async function uploadRest(socket: Socket): Promise<void> {
  const chunk = Buffer.alloc(16 * 1024, 0x5a);
  let isClosed = false;
  const closed = new Promise<void>((r) =>
    socket.once('close', () => {
      isClosed = true;
      r();
    }),
  );
  socket.resume();
  let written = FIRST;
  while (written < UPLOAD && !isClosed && !socket.destroyed) {
    const n = Math.min(chunk.length, UPLOAD - written);
    written += n;
    if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
      await Promise.race([new Promise<void>((r) => socket.once('drain', () => r())), closed]);
    }
  }
  if (!socket.destroyed) socket.end();
  await closed;
}

describe('a live flow’s byte budget after a reload that changes its user’s mode', () => {
  it('monitor → enforce: the tunnel is killed at exactly the budget', async () => {
    const gw = await gatewayWithAliceIn('watched');
    const sink = await startSink();
    const socket = await aliceTunnel(gw, sink);
    moveAliceTo(gw, 'strict');
    await uploadRest(socket);
    await sink.done;
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5' && r.destination.port === sink.port);
    expect(rec).toMatchObject({ verdict: 'block', reason: 'detector', detector: 'an0080.bulk-upload', closeReason: 'an0080.bulk-upload', bytesOut: BUDGET });
    expect(sink.received()).toBe(BUDGET);
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect([alert.action, alert.enforced]).toEqual(['kill', true]);
  });

  it('enforce → monitor: the tunnel runs on past the budget, recorded would-block', async () => {
    const gw = await gatewayWithAliceIn('strict');
    const sink = await startSink();
    const socket = await aliceTunnel(gw, sink);
    moveAliceTo(gw, 'watched');
    await uploadRest(socket);
    await sink.done;
    expect(sink.received()).toBe(UPLOAD);
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5' && r.destination.port === sink.port);
    expect(rec).toMatchObject({ verdict: 'would-block', reason: 'detector', detector: 'an0080.bulk-upload', closeReason: 'closed', bytesOut: UPLOAD });
    const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect([alert.action, alert.enforced]).toEqual(['would-kill', false]);
  });
});
