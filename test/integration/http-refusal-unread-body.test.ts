/**
 * The gateway's own answer to a request whose body it has not read (node:http's absolute-URI path:
 * requests with a body are never the fast path's): a 32 MiB POST, Content-Length or chunked, refused
 * 403 (not-allowlisted, deny-range), 407, 429, 508, failed 502 before any dial reached an origin, or
 * an OPTIONS with Max-Forwards: 0 answered by the gateway itself. Regression: the answer said
 * `connection: close` and node:http destroyed the socket as soon as its FIN was out, under the
 * client's upload: the client got EPIPE on its next write and, on loopback already, none of the
 * answer (the reset wiped it from its receive buffer). Now the connection ends lingering (RFC 9112
 * §9.6): the answer, our FIN, the rest of the upload read and dropped until the client closes (or
 * 2 s), then closed. The record stays one per request, with the refusal's reason and bytesOut 0.
 *
 * A 502 upstream-reset after the origin read part of the upload (it reads 64 KiB, then resets) ends
 * the same way. Regression: undici destroyed the request stream first and detached `req.socket`, so
 * the lingering close found no socket and node destroyed the connection under the upload: a chunked
 * upload got EPIPE and 0 bytes of the 502 (6 runs of 6).
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { closedPort } from '../helpers/closed-port.ts';

const UPLOAD = 32 * 1024 * 1024;
const PIECE = 64 * 1024;

let origin: Server;
let originPort: number;
/** An origin that reads 64 KiB of a request, then resets the connection. */
let resetter: Server;
let resetterPort: number;
/** Bytes the resetting origin read, per connection (by the gateway's local port). */
const resetterRead: number[] = [];
const RESET_AFTER = 64 * 1024;
let deadPort: number;
const originSockets = new Set<Socket>();
const gateways: TestGateway[] = [];

/** An origin that accepts and holds (the 429 case's tunnel); no case here reaches it otherwise. */
beforeAll(async () => {
  origin = createServer((s) => {
    originSockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => originSockets.delete(s));
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  resetter = createServer((s) => {
    originSockets.add(s);
    let read = 0;
    const i = resetterRead.push(0) - 1;
    s.on('error', () => undefined);
    s.on('close', () => originSockets.delete(s));
    s.on('data', (c: Buffer) => {
      if (read >= RESET_AFTER) return;
      read += c.length;
      resetterRead[i] = read;
      if (read >= RESET_AFTER) s.resetAndDestroy();
    });
  });
  resetter.listen(0, '127.0.0.1');
  await once(resetter, 'listening');
  resetterPort = (resetter.address() as { port: number }).port;
  deadPort = await closedPort();
});

afterAll(async () => {
  for (const g of gateways) await g.stop();
  for (const s of originSockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
  await new Promise<void>((r) => (resetter ? resetter.close(() => r()) : r()));
});

async function gateway(overrides: Parameters<typeof startTestGateway>[0]): Promise<TestGateway> {
  const g = await startTestGateway(overrides);
  gateways.push(g);
  return g;
}

interface Upload {
  /** What the client read: the answer, whole or not. */
  received: string;
  /** The client saw the gateway's FIN. */
  isEnded: boolean;
  /** The socket error the client got (ECONNRESET, EPIPE), or null. */
  error: string | null;
  /** Body bytes the client had handed to its socket when the answer's FIN came. */
  written: number;
  /** The client's local port: its flow's record. */
  port: number;
}

/**
 * A client that sends the head of a 32 MiB POST and keeps writing its body, a piece at a time as
 * its socket takes them, until the gateway's FIN or an error (bounded by the size and a guard).
 */
async function uploadUntilAnswered(gwPort: number, head: string, isChunked: boolean): Promise<Upload> {
  const s = await rawConnect(gwPort);
  const up: Upload = { received: '', isEnded: false, error: null, written: 0, port: s.localPort as number };
  let isClosed = false;
  s.on('data', (c: Buffer) => {
    up.received += c.toString('latin1');
  });
  s.on('end', () => {
    up.isEnded = true;
  });
  s.on('error', (e: NodeJS.ErrnoException) => {
    up.error = e.code ?? e.message;
  });
  const closed = new Promise<void>((r) =>
    s.once('close', () => {
      isClosed = true;
      r();
    }),
  );
  const guard = setTimeout(() => s.destroy(), 15_000);
  try {
    s.write(`${head}${isChunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${UPLOAD}`}\r\n\r\n`);
    const piece = Buffer.alloc(PIECE, 0x78);
    const framed = Buffer.concat([Buffer.from(`${PIECE.toString(16)}\r\n`), piece, Buffer.from('\r\n')]);
    while (up.written < UPLOAD && !up.isEnded && !isClosed) {
      up.written += PIECE;
      if (!s.write(isChunked ? framed : piece)) {
        await Promise.race([new Promise<void>((r) => s.once('drain', () => r())), closed, new Promise<void>((r) => s.once('end', () => r()))]);
      }
    }
    await closed;
    return up;
  } finally {
    clearTimeout(guard);
    s.destroy();
  }
}

/** The answer is whole: its head, and a body of exactly its Content-Length. */
function expectWhole(received: string, status: number): string {
  expect(received.startsWith(`HTTP/1.1 ${status} `), received.slice(0, 200)).toBe(true);
  const split = received.indexOf('\r\n\r\n');
  expect(split).toBeGreaterThan(0);
  const head = received.slice(0, split);
  expect(head.toLowerCase()).toContain('\r\nconnection: close');
  const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
  expect(received.length - split - 4).toBe(length);
  return head;
}

interface Case {
  name: string;
  status: number;
  reason: string;
  gw: () => TestGateway;
  head: () => string;
}

let enforce: TestGateway;
let noRanges: TestGateway;
let auth: TestGateway;
let limited: TestGateway;
let open: TestGateway;
let tunnel: Socket;

beforeAll(async () => {
  enforce = await gateway({ mode: 'enforce', roles: { dev: { allow: [{ host: 'allowed.example', ports: [80] }] } }, defaultRoles: ['dev'] });
  noRanges = await gateway({ allowRanges: [] });
  auth = await gateway({ identity: { requireAuth: true, users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] } });
  limited = await gateway({ limits: { maxFlowsPerIdentity: 1 } });
  open = await gateway({});
  // The one flow the 429 gateway allows this client: a tunnel held open for the whole file.
  tunnel = await rawConnect(limited.httpPort);
  tunnel.on('error', () => undefined);
  tunnel.write(`CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n\r\n`);
  await readUntil(tunnel, '\r\n\r\n');
});

afterAll(() => {
  tunnel?.destroy();
});

const post = (target: () => string, extra = ''): (() => string) => () => `POST http://${target()}/upload HTTP/1.1\r\nHost: ${target()}\r\n${extra}`;
const toOrigin = (): string => `127.0.0.1:${originPort}`;

const CASES: Case[] = [
  { name: '403 not-allowlisted', status: 403, reason: 'not-allowlisted', gw: () => enforce, head: post(toOrigin) },
  { name: '403 deny-range', status: 403, reason: 'deny-range', gw: () => noRanges, head: post(toOrigin) },
  { name: '407 auth-required', status: 407, reason: 'auth-required', gw: () => auth, head: post(toOrigin) },
  { name: '429 rate-limit', status: 429, reason: 'rate-limit', gw: () => limited, head: post(toOrigin) },
  { name: '508 via-loop', status: 508, reason: 'via-loop', gw: () => open, head: () => post(toOrigin, `Via: ${open.ctx.via.value}\r\n`)() },
  { name: '502 connection-refused (no origin read any of it)', status: 502, reason: 'connection-refused', gw: () => open, head: post(() => `127.0.0.1:${deadPort}`) },
];

describe('a refusal of a 32 MiB upload still being written: the answer whole, then FIN, no reset', () => {
  it.each(CASES.flatMap((c) => [{ ...c, isChunked: false }, { ...c, isChunked: true }]))('$name, chunked: $isChunked', async ({ status, reason, gw, head, isChunked }) => {
    const g = gw();
    const up = await uploadUntilAnswered(g.httpPort, head(), isChunked);
    // Before: EPIPE on the client's next write and no byte of the answer.
    expect(up.error).toBeNull();
    expect(up.isEnded).toBe(true);
    expectWhole(up.received, status);
    const body = jsonBody(up.received);
    expect(body.reason).toBe(reason);
    // The answer came while the upload was still being written (the gateway never read the body first).
    expect(up.written).toBeLessThan(UPLOAD);
    // One record for the request, its reason; the dropped upload is nobody's payload.
    const rec = await g.waitForClosed((r) => r.id === body.flowId);
    expect(rec).toMatchObject({ closeReason: reason, bytesOut: 0, bytesIn: 0 });
    expect(g.closed.filter((r) => r.client.port === up.port)).toHaveLength(1);
    // The next connection is served.
    const next = await rawExchange(g.httpPort, `GET http://127.0.0.1:${deadPort}/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(next.response).toMatch(/^HTTP\/1\.1 \d{3} /);
  });

  it.each([false, true])('502 upstream-reset after the origin read 64 KiB of it, then reset, chunked: %s', async (isChunked) => {
    const up = await uploadUntilAnswered(open.httpPort, post(() => `127.0.0.1:${resetterPort}`)(), isChunked);
    // Before (chunked): EPIPE on the client's next write and no byte of the 502.
    expect(up.error).toBeNull();
    expect(up.isEnded).toBe(true);
    expectWhole(up.received, 502);
    const body = jsonBody(up.received);
    expect(body.reason).toBe('upstream-reset');
    expect(up.written).toBeLessThan(UPLOAD);
    // The record: the origin's failure, and what was sent on as undici counts it: at least what the
    // origin read, at most what the client wrote.
    const rec = await open.waitForClosed((r) => r.id === body.flowId);
    expect(rec.closeReason).toBe('upstream-reset');
    expect(rec.bytesOut).toBeGreaterThanOrEqual(RESET_AFTER);
    expect(rec.bytesOut).toBeLessThanOrEqual(up.written);
    expect(open.closed.filter((r) => r.client.port === up.port)).toHaveLength(1);
  });

  it('OPTIONS with Max-Forwards: 0, answered by the gateway itself: the 200 whole, then FIN, no reset', async () => {
    const up = await uploadUntilAnswered(open.httpPort, `OPTIONS http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n`, false);
    expect(up.error).toBeNull();
    expect(up.isEnded).toBe(true);
    expectWhole(up.received, 200);
    expect(up.written).toBeLessThan(UPLOAD);
  });

  it('a refusal of a request without a body keeps the connection (keep-alive), as before', async () => {
    const s = await rawConnect(enforce.httpPort);
    s.on('error', () => undefined);
    try {
      const req = `POST http://127.0.0.1:${originPort}/empty HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`;
      s.write(req);
      const first = (await readUntil(s, '}')).toString('latin1');
      expect(first.startsWith('HTTP/1.1 403 ')).toBe(true);
      expect(first.toLowerCase()).not.toContain('connection: close');
      s.write(req);
      const second = (await readUntil(s, '}')).toString('latin1');
      expect(second.startsWith('HTTP/1.1 403 ')).toBe(true);
    } finally {
      s.destroy();
    }
  });
});
