/**
 * Regression: on node:http's absolute-URI path, a response that waited for a slow reader (its
 * write returned false, the origin paused) while a request pipelined behind it got its own answer
 * broke both. node:http emits the first response's 'drain' from within the second one's write (the
 * queued output is counted, _http_server's updateOutgoingData), so inside the second request's undici
 * parser; resuming the first there failed undici's assertion that no parser runs. The second request
 * failed (recorded `unreachable` after 65,408 bytes) and its response's destroy cut the connection:
 * the first response stopped short (3.9 MB of 4 MiB reached the client) and its flow stayed active.
 * Now both answers reach the client whole, in order, and both records say `closed` with every byte.
 */
import { once } from 'node:events';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect } from './http-harness.ts';

/** The first answer: far more than the sockets between origin, gateway and client hold. */
const FIRST_BYTES = 32 * 1024 * 1024;
const SECOND_BYTES = 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 0x61);

let gw: TestGateway;
let origin: Server;
let originPort = 0;
/** The origin's write of the first answer has waited this long for 'drain' (the gateway stopped reading it). */
let firstStalledSince = 0;
let isSecondSent = false;

/** Write `n` bytes honouring backpressure; `onWait(waiting)` is told when a write waits for 'drain'. */
async function writeBody(res: ServerResponse, n: number, onWait?: (waiting: boolean) => void): Promise<void> {
  for (let sent = 0; sent < n && !res.destroyed; sent += CHUNK.length) {
    if (res.write(CHUNK.subarray(0, Math.min(CHUNK.length, n - sent)))) continue;
    onWait?.(true);
    await drainedOrClosed(res);
    onWait?.(false);
  }
  res.end();
}

/**
 * Until `res` drains or closes, both listeners removed after. A race of two once() calls left the
 * loser's listeners (its event's and an 'error' one) on `res` at every wait: past ten waits, node's
 * MaxListenersExceededWarning.
 */
function drainedOrClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

beforeAll(async () => {
  origin = createServer((req, res) => {
    if (req.url === '/first') {
      res.writeHead(200, { 'content-length': FIRST_BYTES });
      void writeBody(res, FIRST_BYTES, (waiting) => {
        firstStalledSince = waiting ? performance.now() : 0;
      });
      return;
    }
    // The second answer comes once the first one is held up by the client (bounded wait).
    res.writeHead(200, { 'content-length': SECOND_BYTES });
    void (async () => {
      const deadline = performance.now() + 20_000;
      while (performance.now() < deadline && (firstStalledSince === 0 || performance.now() - firstStalledSince < 500)) await new Promise((r) => setTimeout(r, 50));
      await writeBody(res, SECOND_BYTES);
      isSecondSent = true;
    })();
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  origin?.closeAllConnections();
  await new Promise<void>((r) => origin?.close(() => r()));
});

/** Read until the connection closes (bounded), everything as one buffer. */
async function readAll(s: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const timer = setTimeout(() => s.destroy(), 30_000);
  if (!s.destroyed) await once(s, 'close');
  clearTimeout(timer);
  return Buffer.concat(chunks);
}

/** Status and body length of the response at `at` (Content-Length framing); -1 when its head is not there. */
function responseAt(all: Buffer, at: number): { status: number; bodyLength: number; end: number } {
  const headEnd = all.indexOf('\r\n\r\n', at);
  if (headEnd < 0) return { status: -1, bodyLength: -1, end: all.length };
  const head = all.subarray(at, headEnd).toString('latin1');
  const length = Number(/content-length: *([0-9]+)/i.exec(head)?.[1] ?? -1);
  const bodyLength = Math.min(length, all.length - headEnd - 4);
  return { status: Number(head.split(' ')[1]), bodyLength, end: headEnd + 4 + bodyLength };
}

it('answers a pipelined request whose answer comes while the one ahead waits for a slow reader, both whole', async () => {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const clientPort = s.localPort;
  const host = `127.0.0.1:${originPort}`;
  // Two requests in one write: node:http's path (the fast path takes one whole head alone).
  s.write(`GET http://${host}/first HTTP/1.1\r\nHost: ${host}\r\n\r\nGET http://${host}/second HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  s.pause();
  // The client reads nothing until the origin has sent the second answer.
  await until('the origin sent the second answer', () => isSecondSent, 25_000);
  await new Promise((r) => setTimeout(r, 300));
  s.resume();
  const all = await readAll(s);
  const first = responseAt(all, 0);
  const second = responseAt(all, first.end);
  expect([first.status, first.bodyLength]).toEqual([200, FIRST_BYTES]);
  expect([second.status, second.bodyLength]).toEqual([200, SECOND_BYTES]);
  await until('both records', () => gw.closed.filter((r) => r.client.port === clientPort).length >= 2, 10_000);
  const recs = gw.closed.filter((r) => r.client.port === clientPort);
  expect(recs.map((r) => [r.closeReason, r.bytesIn]).sort((a, b) => Number(b[1]) - Number(a[1]))).toEqual([
    ['closed', FIRST_BYTES],
    ['closed', SECOND_BYTES],
  ]);
}, 90_000);
