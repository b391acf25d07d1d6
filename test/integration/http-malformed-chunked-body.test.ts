/**
 * An absolute-URI request whose chunked body node's parser refuses (a chunk-size line ending in a
 * bare LF, a size that is not hex) is answered 400 and recorded as the client's framing error:
 * closeReason `bad-request`, and no byte of the malformed part reaches the origin. Before, with the
 * body in the packet of the head, the 400 went out while admission ran, the gateway then dialled the
 * (allowed) origin anyway (2 connections accepted there, nothing sent) and the record said verdict
 * `allow`, `connected: true`, closeReason `client-reset`. Now nothing is dialled for it; a body that
 * turns malformed after the dial (a valid chunk first) ends the origin request before its last chunk.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';

let gw: TestGateway;
let origin: Server;
let originPort: number;
/** Every connection the origin accepted, with what it received; never answered. */
const accepted: Array<{ socket: Socket; data: Buffer[]; closed: Promise<unknown> }> = [];

beforeAll(async () => {
  origin = createServer((socket) => {
    const data: Buffer[] = [];
    socket.on('data', (c: Buffer) => data.push(c));
    socket.on('error', () => undefined);
    accepted.push({ socket, data, closed: once(socket, 'close') });
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  gw = await startTestGateway();
});
afterAll(async () => {
  await gw?.stop();
  for (const a of accepted) a.socket.destroy();
  origin?.close();
});

const head = (): string => `POST http://127.0.0.1:${originPort}/upload HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nTransfer-Encoding: chunked\r\n\r\n`;
const received = (i: number): string => Buffer.concat(accepted[i]?.data ?? []).toString('latin1');

/** Resolves once the origin's connection `i` has received `marker` (within 10 s). */
async function originSaw(i: number, marker: string): Promise<void> {
  const signal = AbortSignal.timeout(10_000);
  while (accepted.length <= i) await once(origin, 'connection', { signal });
  const socket = (accepted[i] as (typeof accepted)[number]).socket;
  while (!received(i).includes(marker)) await once(socket, 'data', { signal });
}

describe('a malformed chunked request body', () => {
  for (const [what, body] of [
    ['chunk-size line ending in a bare LF', '5\nhello\r\n0\r\n\r\n'],
    ['chunk size that is not hex', 'zz\r\nhello\r\n0\r\n\r\n'],
  ] as const) {
    it(`${what}, in the packet of the head: 400, bad-request, no origin connection`, async () => {
      const before = accepted.length;
      const s = await rawConnect(gw.httpPort);
      s.on('error', () => undefined);
      const port = s.localPort;
      s.write(head() + body);
      const { data } = await readToEnd(s);
      expect(data.toString('latin1')).toMatch(/^HTTP\/1\.1 400 /);
      const rec = await gw.waitForClosed((r) => r.client.port === port);
      expect(rec.closeReason).toBe('bad-request');
      expect(rec.connected).toBe(false);
      expect(rec.bytesOut).toBe(0);
      expect(accepted.length - before).toBe(0);
    });
  }

  it('malformed after a valid chunk already relayed: 400, bad-request, the origin request cut before any later byte', async () => {
    const before = accepted.length;
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort;
    s.write(`${head()}5\r\nhello\r\n`);
    await originSaw(before, 'hello');
    s.write('5\nworld\r\n0\r\n\r\n');
    const answer = readUntil(s, '\r\n\r\n');
    expect((await answer).toString('latin1')).toMatch(/^HTTP\/1\.1 400 /);
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec.closeReason).toBe('bad-request');
    expect(rec.bytesOut).toBe(5);
    // The origin's connection is closed without the rest: no 'world', no last chunk, and nothing
    // on any other connection (undici may open one more as the request is aborted: it stays empty).
    await accepted[before]?.closed;
    expect(received(before)).toMatch(/\r\n\r\n5\r\nhello(\r\n)?$/);
    for (let i = before + 1; i < accepted.length; i++) expect(received(i)).toBe('');
    s.destroy();
  });

  // A trailer section over limits.maxHeaderBytes is refused 431 by node's parser while it reads the
  // body: that request's framing error too. Before, the record said `client-reset` and, with the
  // trailer in the packet of the head, the origin was dialled after the 431 (1 connection, nothing sent).
  const bigTrailer = (): string => `0\r\nX-Trailer: ${'t'.repeat(100_000)}\r\n\r\n`;

  it('a trailer section over maxHeaderBytes, in the packet of the head: 431, bad-request, no origin connection', async () => {
    const before = accepted.length;
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort;
    s.write(`${head()}5\r\nhello\r\n${bigTrailer()}`);
    const { data } = await readToEnd(s);
    expect(data.toString('latin1')).toMatch(/^HTTP\/1\.1 431 /);
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec.closeReason).toBe('bad-request');
    expect(rec.connected).toBe(false);
    expect(rec.bytesOut).toBe(0);
    expect(accepted.length - before).toBe(0);
  });

  it('a trailer section over maxHeaderBytes after a chunk relayed: 431, bad-request, the origin request cut before its end', async () => {
    const before = accepted.length;
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort;
    s.write(`${head()}5\r\nhello\r\n`);
    await originSaw(before, 'hello');
    s.write(bigTrailer());
    const answer = readUntil(s, '\r\n\r\n');
    expect((await answer).toString('latin1')).toMatch(/^HTTP\/1\.1 431 /);
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec.closeReason).toBe('bad-request');
    expect(rec.bytesOut).toBe(5);
    // No last chunk and no trailer reach the origin: it never sees a whole request.
    await accepted[before]?.closed;
    expect(received(before)).toMatch(/\r\n\r\n5\r\nhello(\r\n)?$/);
    for (let i = before + 1; i < accepted.length; i++) expect(received(i)).toBe('');
    s.destroy();
  });
});
