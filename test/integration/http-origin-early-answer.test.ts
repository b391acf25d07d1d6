/**
 * An origin that answers an upload before reading its body (an early 413 after the request head),
 * on the absolute-URI path that carries request bodies (node:http's). undici stops sending the body
 * once the answer is whole and destroys the request stream. Regression: node:http then stopped
 * reading the client socket; the 413 went out saying `Connection: keep-alive`, the GET pipelined
 * behind a 16 MiB POST was never answered (nor read), and node's keep-alive timer reset the
 * connection about 6 s later (ECONNRESET, no FIN). Closing at once instead (node's destroy after a
 * `connection: close` answer) resets a connection whose upload is still arriving, and the reset
 * wipes the 413 from the client's buffer. Now: the answer says `connection: close`, the gateway
 * sends its FIN after it and reads and drops the rest of the upload (lingering close) until the
 * client closes too, and the record says what reached the origin.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect, run } from './http-harness.ts';

const ANSWER = 'HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large';

let gw: TestGateway;
let origin: Server;
let o: string;
let originPort: number;
let dir: string;
const originSockets = new Set<Socket>();
/** Per origin connection (by the gateway's port): its request line, the body bytes read until it closed. */
const originSeen = new Map<number, { requestLine: string; bodyBytes: number; isClosed: boolean }>();

beforeAll(async () => {
  // Answers 413 as soon as a request head is in, then reads (and counts) the rest until the gateway
  // closes the connection.
  origin = createServer((s) => {
    originSockets.add(s);
    const seen = { requestLine: '', bodyBytes: 0, isClosed: false };
    originSeen.set(s.remotePort ?? 0, seen);
    s.on('close', () => {
      seen.isClosed = true;
      originSockets.delete(s);
    });
    s.on('error', () => undefined);
    let head = Buffer.alloc(0);
    let isAnswered = false;
    s.on('data', (d: Buffer) => {
      if (isAnswered) {
        seen.bodyBytes += d.length;
        return;
      }
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      isAnswered = true;
      seen.requestLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      seen.bodyBytes += head.length - end - 4;
      s.write(ANSWER);
    });
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  o = `127.0.0.1:${originPort}`;
  dir = mkdtempSync(join(tmpdir(), 'egw-early-'));
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  for (const s of originSockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The one origin connection that carried a POST to `path`, once the gateway has closed it (bounded). */
async function originConnection(path: string): Promise<{ bodyBytes: number }> {
  let found: { requestLine: string; bodyBytes: number; isClosed: boolean } | undefined;
  await until(`the origin connection of ${path} to close`, () => {
    found = [...originSeen.values()].find((c) => c.requestLine.startsWith(`POST ${path} `));
    return found?.isClosed === true;
  });
  return found as { bodyBytes: number };
}

/**
 * `bytesOut` counts what undici handed to the origin connection (onBodySent). When the answer
 * completes first, undici destroys that connection, and the last write it had queued in node (not
 * yet taken by the kernel) never leaves: at most one body chunk, seen as 4096 bytes over what the
 * origin read. The record may say that much more, never less.
 */
function expectReachedOrigin(record: FlowRecord, originRead: number): void {
  expect(record.bytesOut).toBeGreaterThanOrEqual(originRead);
  expect(record.bytesOut - originRead).toBeLessThanOrEqual(64 * 1024);
}

describe('an origin that answers before it reads the request body', () => {
  it('a client uploading 32 MiB without watching, a GET pipelined behind: the 413 whole with connection: close, then FIN, no reset', async () => {
    const upload = 32 * 1024 * 1024;
    const before = gw.closed.length;
    const s = await rawConnect(gw.httpPort);
    let received = '';
    let isEnded = false;
    let error: string | null = null;
    s.on('data', (c: Buffer) => {
      received += c.toString('latin1');
    });
    s.on('end', () => {
      isEnded = true;
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    try {
      s.write(`POST http://${o}/upload HTTP/1.1\r\nHost: ${o}\r\nContent-Length: ${upload}\r\n\r\n`);
      s.write(Buffer.alloc(upload, 0x78));
      s.write(`GET http://${o}/next HTTP/1.1\r\nHost: ${o}\r\n\r\n`);
      const timer = setTimeout(() => s.destroy(), 10_000);
      await closed;
      clearTimeout(timer);
      // Before: the 413 said keep-alive, then ECONNRESET after ~6 s, the whole upload unread.
      expect(error).toBeNull();
      expect(isEnded).toBe(true);
      expect(received.startsWith('HTTP/1.1 413 Payload Too Large\r\n')).toBe(true);
      expect(received.toLowerCase()).toContain('\r\nconnection: close\r\n');
      expect(received).not.toMatch(/keep-alive/i);
      // The answer whole, and nothing after it: the pipelined GET is dropped (the answer said close).
      expect(received.endsWith('\r\n\r\ntoo large')).toBe(true);
      expect(received.match(/HTTP\/1\.1 /g)).toHaveLength(1);
      // The gateway read the whole upload (dropping what the origin did not take): every byte left.
      expect(s.writableLength).toBe(0);
      const seen = await originConnection('/upload');
      expect([...originSeen.values()].filter((c) => c.requestLine.startsWith('GET '))).toEqual([]);
      const record = await gw.waitForClosed((r) => gw.closed.indexOf(r) >= before && r.destination.port === originPort);
      expect(gw.closed.slice(before)).toHaveLength(1);
      expect(record.closeReason).toBe('closed');
      expect(record.bytesIn).toBe(9);
      // What reached the origin of the upload (see expectReachedOrigin); less than the client sent.
      expectReachedOrigin(record, seen.bodyBytes);
      expect(record.bytesOut).toBeLessThan(upload);
    } finally {
      s.destroy();
    }
  });

  // 32 MiB, not the 4 MiB of the report: what the origin's socket buffers take before the answer
  // (about 4 MB here) must not be the whole upload, or the answer is not early.
  it('curl --data-binary @32MiB: gets the 413 with connection: close, and the record is the exchange', async () => {
    const file = join(dir, 'upload.bin');
    writeFileSync(file, Buffer.alloc(32 * 1024 * 1024, 0x61));
    const before = gw.closed.length;
    const r = await run('curl', ['-sS', '-D', '-', '-o', '/dev/null', '-w', '%{http_code}', '-x', `http://127.0.0.1:${gw.httpPort}`, '-H', 'Expect:', '--data-binary', `@${file}`, `http://${o}/curl-upload`], { timeoutMs: 15_000 });
    const out = r.stdout.toString('latin1');
    expect(r.code, r.stderr).toBe(0);
    expect(out.startsWith('HTTP/1.1 413 Payload Too Large\r\n')).toBe(true);
    expect(out.toLowerCase(), out).toContain('\r\nconnection: close\r\n');
    expect(out.endsWith('413')).toBe(true);
    const seen = await originConnection('/curl-upload');
    const record: FlowRecord = await gw.waitForClosed((x) => gw.closed.indexOf(x) >= before);
    expect(record.closeReason).toBe('closed');
    expect(record.bytesIn).toBe(9);
    expectReachedOrigin(record, seen.bodyBytes);
  });
});
