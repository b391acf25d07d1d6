/**
 * Regressions: limits.idleTimeoutMs was not applied in two places.
 * - A stalled upload: the connection counted as waiting on its origin from the moment the request
 *   was sent on, body still coming, so a client that sent 10 bytes of a 1,000,000-byte body (or none
 *   after its 100 Continue) and then nothing was never cut (open after 45 s with a 4 s limit).
 * - A declined Upgrade: the relay of the origin's non-101 answer had no timer and waited for the
 *   origin to close.
 * Bounds are generous: these assert that the cut happens and how it is recorded, not how fast.
 */
import { once } from 'node:events';
import { createServer as createHttpServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

const IDLE_MS = 600;
let gw: TestGateway;
let origin: Server;
let port: number;
const originSockets = new Set<Socket>();
/** Request bodies the origin got so far, by path. */
const received = new Map<string, number>();

beforeAll(async () => {
  origin = createHttpServer((req, res) => {
    // Reads the body as it comes and answers only once it is whole.
    const url = req.url ?? '';
    received.set(url, 0);
    req.on('data', (c: Buffer) => received.set(url, (received.get(url) ?? 0) + c.length));
    req.on('end', () => res.end('done'));
    req.on('error', () => undefined);
  });
  origin.on('connection', (s: Socket) => {
    originSockets.add(s);
    s.on('close', () => originSockets.delete(s));
  });
  origin.on('upgrade', (_req, socket: Socket) => {
    socket.on('error', () => undefined);
    // Declines with a body it never finishes, and never closes.
    socket.write('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\npartial');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway({ limits: { idleTimeoutMs: IDLE_MS } });
});

afterAll(async () => {
  for (const s of originSockets) s.destroy();
  await gw?.stop();
  origin?.closeAllConnections();
  await new Promise<void>((r) => origin.close(() => r()));
});

/** Resolves when `s` closes; destroys it (and rejects) after `ms`. */
function closedWithin(s: Socket, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`still open after ${ms} ms`));
    }, ms);
    s.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

describe('idle timeout while a request body is forwarded', () => {
  it('a POST that stops after 10 of 1,000,000 body bytes is cut: idle-timeout, bytesOut 10', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const clientPort = s.localPort as number;
    const closed = closedWithin(s, 20 * IDLE_MS);
    s.write(`POST http://127.0.0.1:${port}/stalled HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 1000000\r\n\r\n0123456789`);
    await closed;
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort, 5000);
    expect(rec.closeReason).toBe('idle-timeout');
    expect(rec.bytesOut).toBe(10);
    expect(received.get('/stalled')).toBe(10);
  });

  it('Expect: 100-continue, then no body after the 100: cut with idle-timeout, bytesOut 0', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const clientPort = s.localPort as number;
    const closed = closedWithin(s, 20 * IDLE_MS);
    s.write(`POST http://127.0.0.1:${port}/expect HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n`);
    await readUntil(s, '100 Continue');
    await closed;
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort, 5000);
    expect(rec.closeReason).toBe('idle-timeout');
    expect(rec.bytesOut).toBe(0);
  });

  it('a body whose pieces come within the limit of each other is not cut', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const clientPort = s.localPort as number;
    s.write(`POST http://127.0.0.1:${port}/steady HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 30\r\n\r\n`);
    // Three pieces, each well within the limit after the one before.
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, IDLE_MS / 3));
      s.write('0123456789');
    }
    await readUntil(s, 'done');
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort, 5000);
    expect(rec.closeReason).toBe('closed');
    expect(rec.bytesOut).toBe(30);
    s.destroy();
  });
});

describe('idle timeout of a declined Upgrade', () => {
  it('the origin declines and then goes silent without closing: the relay ends, idle-timeout, bytesIn as relayed', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const clientPort = s.localPort as number;
    const closed = closedWithin(s, 20 * IDLE_MS);
    s.write(`GET http://127.0.0.1:${port}/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`);
    const got = await readUntil(s, 'partial');
    expect(got.toString('latin1')).toMatch(/^HTTP\/1\.1 403 /);
    await closed;
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort, 5000);
    expect(rec.closeReason).toBe('idle-timeout');
    expect(rec.bytesIn).toBe(7);
  });
});
