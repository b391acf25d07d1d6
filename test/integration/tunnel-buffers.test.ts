/**
 * Bulk tunnels read into reused buffers (gateway/flow/read-buffer.ts). The risk of that speed-up is
 * a buffer overwritten while the kernel has not yet taken a pending write; these tests make writes
 * pend (slow readers on both ends) and check, with SHA-256 over random bytes, that what arrives
 * is exactly what was sent, both ways, over CONNECT and SOCKS5, with the mechanism on and off.
 * The flow records must count every payload byte.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, connect, type Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adoptReadBuffer, readBuffersAvailable, setReadBuffersEnabled } from '../../gateway/flow/read-buffer.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

const SIZE = 8 * 1024 * 1024;
const payload = randomBytes(SIZE);
const payloadHash = sha256(payload);

let gw: TestGateway;
let echo: Server;
let echoPort: number;
const sockets = new Set<Socket>();

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Read everything until 'end', pausing now and then so the sender's writes pend. */
function slowCollect(s: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let sinceStall = 0;
  s.on('data', (c: Buffer) => {
    chunks.push(c);
    sinceStall += c.length;
    if (sinceStall >= 512 * 1024) {
      sinceStall = 0;
      s.pause();
      setTimeout(() => s.resume(), 3);
    }
  });
  s.resume();
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}

beforeAll(async () => {
  // A slow echo: stalls its reads regularly, echoes everything, ends after the client's FIN.
  echo = createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let sinceStall = 0;
    s.on('data', (c: Buffer) => {
      if (!s.write(c)) s.pause();
      sinceStall += c.length;
      if (sinceStall >= 768 * 1024 && !s.isPaused()) {
        sinceStall = 0;
        s.pause();
        setTimeout(() => s.resume(), 3);
      }
    });
    s.on('drain', () => s.resume());
    s.on('end', () => s.end());
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as { port: number }).port;
  gw = await startTestGateway({ limits: { idleTimeoutMs: 20_000 } });
});

afterAll(async () => {
  setReadBuffersEnabled(true);
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => (echo ? echo.close(() => r()) : r()));
});

async function connectTunnel(): Promise<Socket> {
  const s = await rawConnect(gw.httpPort);
  s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
  const head = await readUntil(s, '\r\n\r\n');
  expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 200 Connection Established\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n\r\n$/);
  return s;
}

async function socksTunnel(): Promise<Socket> {
  const s = await rawConnect(gw.socksPort);
  s.write(Buffer.from([5, 1, 0]));
  await readExactly(s, 2);
  s.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, echoPort >> 8, echoPort & 0xff]));
  const reply = await readExactly(s, 10);
  expect(reply[1]).toBe(0);
  return s;
}

function readExactly(s: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (c: Buffer): void => {
      got = Buffer.concat([got, c]);
      if (got.length >= n) {
        s.removeListener('data', onData);
        s.pause();
        if (got.length > n) s.unshift(got.subarray(n));
        resolve(got.subarray(0, n));
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.resume();
  });
}

/** Send the payload in uneven slices (as an application would) while reading the echo slowly. */
async function roundTrip(open: () => Promise<Socket>): Promise<void> {
  const s = await open();
  const port = s.localPort;
  sockets.add(s);
  const received = slowCollect(s);
  let offset = 0;
  let slice = 1000;
  while (offset < SIZE) {
    const n = Math.min(slice, SIZE - offset);
    const ok = s.write(payload.subarray(offset, offset + n));
    offset += n;
    slice = slice >= 200_000 ? 1000 : slice * 3;
    if (!ok) await once(s, 'drain');
  }
  s.end();
  const back = await received;
  expect(back.length).toBe(SIZE);
  expect(sha256(back)).toBe(payloadHash);
  const record = await gw.waitForClosed((r) => r.client.port === port && r.destination.port === echoPort);
  expect(record.bytesOut).toBe(SIZE);
  expect(record.bytesIn).toBe(SIZE);
  expect(record.closeReason).toBe('closed');
}

describe('bulk tunnels with reused read buffers', () => {
  it('this runtime supports them (node 20, 22, 24)', () => {
    expect(readBuffersAvailable()).toBe(true);
  });

  for (const mode of ['on', 'off'] as const) {
    it(`CONNECT: 8 MiB both ways through slow readers arrive byte-identical and counted (buffers ${mode})`, async () => {
      setReadBuffersEnabled(mode === 'on');
      await roundTrip(connectTunnel);
    });

    it(`SOCKS5: 8 MiB both ways through slow readers arrive byte-identical and counted (buffers ${mode})`, async () => {
      setReadBuffersEnabled(mode === 'on');
      await roundTrip(socksTunnel);
    });
  }

  it('the destination closes mid-upload: the client gets its FIN, and its own FIN then closes the connection', async () => {
    setReadBuffersEnabled(true);
    let got = 0;
    const half = createServer({ allowHalfOpen: true }, (s) => {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('data', (c: Buffer) => {
        got += c.length;
        // Answer, then close completely while the client is still sending.
        if (got >= 1024 * 1024 && s.writable) s.end('bye', () => s.destroy());
      });
    });
    half.listen(0, '127.0.0.1');
    await once(half, 'listening');
    const port = (half.address() as { port: number }).port;
    const s = await rawConnect(gw.httpPort);
    s.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    await readUntil(s, '\r\n\r\n');
    const answer = readUntil(s, 'bye');
    const ended = once(s, 'end');
    // Keep sending past the point where the destination has closed its side.
    let sent = 0;
    for (let i = 0; i < 32; i++) {
      const chunk = payload.subarray(i * 65536, (i + 1) * 65536);
      sent += chunk.length;
      if (!s.write(chunk)) await once(s, 'drain');
    }
    await answer;
    await ended;
    const closed = once(s, 'close');
    s.end();
    await closed;
    const rec = await gw.waitForClosed((r) => r.destination.port === port);
    expect(rec.bytesIn).toBe(3);
    // Sent towards the destination: at least what it read before it closed, at most what the client sent.
    expect(got).toBeGreaterThanOrEqual(1024 * 1024);
    expect(rec.bytesOut).toBeGreaterThanOrEqual(got);
    expect(rec.bytesOut).toBeLessThanOrEqual(sent);
    expect(['closed', 'upstream-reset']).toContain(rec.closeReason);
    await new Promise<void>((r) => half.close(() => r()));
  });

  it('adoptReadBuffer: every read lands in one buffer of the size asked, a false return stops reading until resume(), end still arrives', async () => {
    setReadBuffersEnabled(true);
    const server = createServer((s) => {
      s.write('a'.repeat(1000));
      setTimeout(() => s.end('b'.repeat(1000)), 30);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const c = connect((server.address() as { port: number }).port, '127.0.0.1');
    await once(c, 'connect');
    const buffers = new Set<Buffer>();
    const seen: string[] = [];
    let isFirst = true;
    const result = adoptReadBuffer(
      c,
      (n, b) => {
        buffers.add(b);
        seen.push(b.toString('latin1', 0, n));
        if (isFirst) {
          isFirst = false;
          setTimeout(() => c.resume(), 60);
          return false;
        }
        return true;
      },
      4096,
    );
    expect(result).toBe('adopted');
    // A second switch of the same socket is refused for good.
    expect(adoptReadBuffer(c, () => true)).toBe('never');
    c.resume();
    await once(c, 'end');
    expect(seen.join('')).toBe('a'.repeat(1000) + 'b'.repeat(1000));
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect([...buffers].map((b) => b.length)).toEqual([4096]);
    c.destroy();
    server.close();
  });

  it('adoptReadBuffer: bytes still queued on the socket → not now; no TCP handle → never', async () => {
    setReadBuffersEnabled(true);
    expect(adoptReadBuffer(new Socket(), () => true)).toBe('never');
    const server = createServer((s) => s.end('queued'));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const c = connect((server.address() as { port: number }).port, '127.0.0.1');
    c.pause();
    await once(c, 'readable');
    expect(c.readableLength).toBeGreaterThan(0);
    expect(adoptReadBuffer(c, () => true)).toBe('not-now');
    c.destroy();
    server.close();
  });
});

describe('after the flow ends', () => {
  it('a SOCKS5 client that never closes its side is let go after the idle timeout, not kept forever', async () => {
    const shortIdle = await startTestGateway({ limits: { idleTimeoutMs: 400 } });
    const gone = createServer((s) => {
      s.on('error', () => undefined);
      s.end('bye', () => s.destroy());
    });
    gone.listen(0, '127.0.0.1');
    await once(gone, 'listening');
    const port = (gone.address() as { port: number }).port;
    try {
      // SOCKS5: its listener has no server-wide socket timeout of its own (node:http's would also cut it).
      const s = connect({ port: shortIdle.socksPort, host: '127.0.0.1', allowHalfOpen: true });
      s.on('error', () => undefined);
      await once(s, 'connect');
      s.write(Buffer.from([5, 1, 0]));
      await readExactly(s, 2);
      s.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]));
      expect((await readExactly(s, 10))[1]).toBe(0);
      const bye = readUntil(s, 'bye');
      s.resume();
      await bye;
      await shortIdle.waitForClosed((r) => r.destination.port === port);
      // The client keeps its side open and says nothing. After the idle timeout the gateway has let go
      // of the socket: the client's next bytes meet a closed socket (reset), not a silent sink.
      await new Promise((r) => setTimeout(r, 1200));
      const closed = new Promise<void>((r) => s.once('close', () => r()));
      s.write('anyone there?');
      await closed;
      expect(s.destroyed).toBe(true);
    } finally {
      await shortIdle.stop();
      await new Promise<void>((r) => gone.close(() => r()));
    }
  });
});
