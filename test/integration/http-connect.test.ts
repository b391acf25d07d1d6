/**
 * CONNECT tunnels through the real HTTP listener: curl --proxytunnel, raw sockets, half-close both
 * ways, backpressure on a large transfer, bytes sent with the CONNECT head, the idle timeout.
 * Byte counts in every flow record are checked against what the test sent and received.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pattern, rawConnect, readUntil, run, startOrigin, wireOf } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
let echo: Server;
let echoPort: number;
let lateReply: Server;
let lateReplyPort: number;
const originSockets = new Set<Socket>();

function track(s: Socket): void {
  originSockets.add(s);
  s.on('error', () => undefined);
  s.on('close', () => originSockets.delete(s));
}

beforeAll(async () => {
  origin = await startOrigin();
  // Echo with half-close: echoes everything, ends its side when the client ended its side.
  echo = createServer({ allowHalfOpen: true }, (s) => {
    track(s);
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as { port: number }).port;
  // Replies only after it saw the client's FIN: proves a half-closed tunnel still carries data back.
  lateReply = createServer({ allowHalfOpen: true }, (s) => {
    track(s);
    let n = 0;
    s.on('data', (c: Buffer) => {
      n += c.length;
    });
    s.on('end', () => s.end(`got ${n} bytes`));
  });
  lateReply.listen(0, '127.0.0.1');
  await once(lateReply, 'listening');
  lateReplyPort = (lateReply.address() as { port: number }).port;
  gw = await startTestGateway({ limits: { idleTimeoutMs: 5000 } });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
  for (const s of originSockets) s.destroy();
  await Promise.all([echo, lateReply].map((srv) => new Promise<void>((r) => (srv ? srv.close(() => r()) : r()))));
});

async function openTunnel(port: number, host = '127.0.0.1', early: Buffer | null = null): Promise<{ s: Socket; rest: Buffer }> {
  const s = await rawConnect(gw.httpPort);
  const target = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  const head = Buffer.from(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  s.write(early ? Buffer.concat([head, early]) : head);
  const got = await readUntil(s, '\r\n\r\n');
  const end = got.indexOf('\r\n\r\n');
  expect(got.subarray(0, end).toString()).toMatch(/^HTTP\/1\.1 200 Connection Established\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/);
  return { s, rest: got.subarray(end + 4) };
}

function collect(s: Socket, initial: Buffer = Buffer.alloc(0)): Promise<Buffer> {
  const chunks: Buffer[] = [initial];
  s.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}

describe('CONNECT tunnels', () => {
  it('curl --proxytunnel to a local HTTP origin', async () => {
    const r = await run('curl', ['-sS', '--noproxy', '', '-p', '-x', `http://127.0.0.1:${gw.httpPort}`, '-w', '\n%{size_request} %{size_header} %{size_download}', `http://127.0.0.1:${origin.port}/size/12345`]);
    expect(r.code).toBe(0);
    const out = r.stdout.toString('latin1');
    const nl = out.lastIndexOf('\n');
    expect(Buffer.from(out.slice(0, nl), 'latin1').equals(pattern(12345))).toBe(true);
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect' && f.destination.port === origin.port && f.closeReason === 'closed');
    // Inside the tunnel: the origin's head and body came in; curl's request went out.
    const [, sizeHeader, sizeDownload] = out.slice(nl + 1).split(' ').map(Number);
    // curl's size_header also counts our 76-byte "200 Connection Established" head (its Date an
    // IMF-fixdate, always 29 characters), which is handshake.
    expect(sizeDownload).toBe(12345);
    expect(rec.bytesIn).toBe((sizeHeader ?? 0) - 'HTTP/1.1 200 Connection Established\r\ndate: Sun, 06 Dec 2026 04:40:00 GMT\r\n\r\n'.length + 12345);
    // Both ways, exactly what the origin's connection wrote and read.
    const wire = await wireOf(origin, '/size/12345');
    expect(rec.bytesIn).toBe(wire.written);
    expect(rec.bytesOut).toBe(wire.read);
  });

  it('echo: exact byte counts both ways, bytes sent with the CONNECT head count as payload', async () => {
    const early = Buffer.from('early-bytes|');
    const { s, rest } = await openTunnel(echoPort, '127.0.0.1', early);
    const body = pattern(65_537);
    const done = collect(s, rest);
    s.end(body);
    const got = await done;
    expect(got.equals(Buffer.concat([early, body]))).toBe(true);
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect' && f.destination.port === echoPort && f.bytesOut === early.length + body.length);
    expect(rec.bytesIn).toBe(early.length + body.length);
    expect(rec.closeReason).toBe('closed');
    expect(rec.communityId).toMatch(/^1:/);
  });

  it('half-close: the client ends its side first and still receives the reply', async () => {
    const { s, rest } = await openTunnel(lateReplyPort);
    const done = collect(s, rest);
    s.end(pattern(1000));
    const got = await done;
    expect(got.toString()).toBe('got 1000 bytes');
    const rec = await gw.waitForClosed((f) => f.destination.port === lateReplyPort);
    expect(rec).toMatchObject({ bytesOut: 1000, bytesIn: 'got 1000 bytes'.length, closeReason: 'closed' });
  });

  it('backpressure: 16 MiB through a tunnel whose reader is slow arrives whole and counted', async () => {
    const size = 16 * 1024 * 1024;
    const { s, rest } = await openTunnel(echoPort);
    expect(rest.length).toBe(0);
    let received = 0;
    let isPaused = false;
    const done = new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => {
        received += c.length;
        // Read slowly at first so the gateway's buffers fill and it must pause the origin.
        if (!isPaused && received < size / 4) {
          isPaused = true;
          s.pause();
          setImmediate(() => {
            isPaused = false;
            s.resume();
          });
        }
      });
      s.once('end', () => resolve());
      s.once('error', reject);
    });
    const block = pattern(64 * 1024);
    for (let sent = 0; sent < size; sent += block.length) {
      if (!s.write(block)) await once(s, 'drain');
    }
    s.end();
    await done;
    expect(received).toBe(size);
    const rec = await gw.waitForClosed((f) => f.destination.port === echoPort && f.bytesOut === size);
    expect(rec.bytesIn).toBe(size);
  });

});

describe('CONNECT pipelined behind another request (node:http path)', () => {
  it('the earlier request is answered first, whole; the 200 and the tunnel follow it', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    // One write: node:http parses both heads at once and emits 'connect' while the GET still waits on its origin.
    s.write(`GET http://127.0.0.1:${origin.port}/size/3000 HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\nCONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\n\r\n`);
    const text = (await readUntil(s, ' GMT\r\n\r\n')).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    const getBodyStart = text.indexOf('\r\n\r\n') + 4;
    expect(text.indexOf('HTTP/1.1 200 Connection Established')).toBe(getBodyStart + 3000);
    expect(Buffer.from(text.slice(getBodyStart, getBodyStart + 3000), 'latin1')).toEqual(pattern(3000));
    // The tunnel carries only the tunnel's bytes.
    s.write('ping-through-tunnel');
    const after = (await readUntil(s, 'ping-through-tunnel')).toString('latin1');
    expect(after).toBe('ping-through-tunnel');
    s.end();
    const rec = await gw.waitForClosed((r) => r.protocol === 'connect' && r.destination.port === echoPort && r.bytesOut === 19);
    expect(rec.bytesIn).toBe(19);
  });
});

describe('CONNECT idle timeout', () => {
  let idleGw: TestGateway;
  beforeAll(async () => {
    idleGw = await startTestGateway({ limits: { idleTimeoutMs: 300 } });
  });
  afterAll(() => idleGw?.stop());

  it('a silent tunnel is cut after limits.idleTimeoutMs with closeReason idle-timeout', async () => {
    const s = await rawConnect(idleGw.httpPort);
    s.on('error', () => undefined);
    // The tunnel resets an idle flow: wait for 'close' without letting the reset's error reject.
    const isClosed = new Promise<void>((r) => s.once('close', () => r()));
    // 'ping' rides with the CONNECT head, so a slow machine cannot idle the tunnel out before it is sent.
    s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: x\r\n\r\nping`);
    await readUntil(s, 'ping');
    await isClosed;
    const rec = await idleGw.waitForClosed((f) => f.destination.port === echoPort);
    expect(rec).toMatchObject({ closeReason: 'idle-timeout', bytesOut: 4, bytesIn: 4 });
  });
});
