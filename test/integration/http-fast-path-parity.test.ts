/**
 * Parse parity of the absolute-URI fast path (http-fast-head.ts) with node:http: the same request
 * bytes, sent whole in one packet (the fast path reads them) and split after their first 3 bytes
 * (the fast path declines a split head, node:http reads it), must get the same answer, the same
 * connection handling and the same bytes at the origin. The origin is a raw TCP server that logs
 * every request it receives and answers each with a fixed 5-byte body (its length to a HEAD).
 */
import { once } from 'node:events';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let o: string;
/** Every request the origin received (head and Content-Length body), in order. */
const heads: string[] = [];
const originSockets: Socket[] = [];

beforeAll(async () => {
  origin = createServer((s) => {
    originSockets.push(s);
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const length = Number(/\r\ncontent-length: *(\d+)\r\n/i.exec(buf.slice(0, end + 2))?.[1] ?? 0);
        if (buf.length < end + 4 + length) return;
        const request = buf.slice(0, end + 4 + length);
        heads.push(request);
        buf = buf.slice(request.length);
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n${request.startsWith('HEAD ') ? '' : 'hello'}`);
      }
    });
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  o = `127.0.0.1:${(origin.address() as AddressInfo).port}`;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  for (const s of originSockets) s.destroy();
  await new Promise<void>((r) => origin?.close(() => r()));
});

interface Outcome {
  /** Everything the client read until the connection ended. */
  answer: string;
  /** The request heads the origin received. */
  atOrigin: string[];
}

/**
 * Send `request` (whole, or split after 3 bytes with a pause), read its answer, then send `next`
 * on the same connection; collect what comes until the gateway ends the connection (bounded).
 */
async function exchange(request: string, next: string, isSplit: boolean): Promise<Outcome> {
  const marker = request.startsWith('HEAD ') ? '\r\n\r\n' : 'hello';
  const before = heads.length;
  const s = await rawConnect(gw.httpPort);
  const chunks: Buffer[] = [];
  s.on('error', () => undefined);
  let onAnswer: (() => void) | null = null;
  s.on('data', (c: Buffer) => {
    chunks.push(c);
    if (Buffer.concat(chunks).includes(marker)) onAnswer?.();
  });
  s.on('end', () => s.end());
  const closed = once(s, 'close');
  if (isSplit) {
    s.write(request.slice(0, 3), 'latin1');
    await new Promise((r) => setTimeout(r, 100));
    s.write(request.slice(3), 'latin1');
  } else s.write(request, 'latin1');
  const answered = new Promise<void>((resolve) => {
    onAnswer = resolve;
  });
  const timer = setTimeout(() => s.destroy(), 10_000);
  await Promise.race([answered, closed]);
  if (!s.destroyed && s.writable) s.write(next, 'latin1');
  await closed;
  clearTimeout(timer);
  return { answer: Buffer.concat(chunks).toString('latin1'), atOrigin: heads.slice(before) };
}

/** Status codes of the answers, in order. */
function statuses(answer: string): number[] {
  return [...answer.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
}

describe('absolute-URI fast path: same reading as node:http', () => {
  // Regression: llhttp reads Proxy-Connection as Connection, so on node:http `Proxy-Connection: close`
  // made the request the connection's last; the fast path ignored it, answered keep-alive and served
  // the request sent after the answer.
  const closing: Array<[string, string]> = [
    ['Proxy-Connection: close', 'Proxy-Connection: close\r\n'],
    ['Proxy-Connection: Keep-Alive, Close', 'Proxy-Connection: Keep-Alive, Close\r\n'],
    ['Connection: keep-alive with Proxy-Connection: close', 'Connection: keep-alive\r\nProxy-Connection: close\r\n'],
    ['Connection: close', 'Connection: close\r\n'],
  ];
  it.each(closing)('%s: the only answer says connection: close, the request sent after it is not served', async (_name, field) => {
    const request = (path: string): string => `GET http://${o}${path} HTTP/1.1\r\nHost: ${o}\r\n${field}\r\n`;
    const closedBefore = gw.closed.length;
    for (const isSplit of [false, true]) {
      const got = await exchange(request(`/first-${isSplit}`), `GET http://${o}/second HTTP/1.1\r\nHost: ${o}\r\n\r\n`, isSplit);
      expect(statuses(got.answer), `split: ${isSplit}`).toEqual([200]);
      expect(got.answer.slice(0, got.answer.indexOf('\r\n\r\n'))).toMatch(/\r\nconnection: close(\r\n|$)/i);
      expect(got.atOrigin.map((h) => h.split(' ')[1])).toEqual([`/first-${isSplit}`]);
      // Hop-by-hop: neither field reaches the origin.
      expect(got.atOrigin[0]).not.toMatch(/proxy-connection/i);
    }
    await gw.waitForClosed(() => gw.closed.length >= closedBefore + 2);
    for (const r of gw.closed.slice(closedBefore)) expect([r.closeReason, r.bytesIn, r.bytesOut]).toEqual(['closed', 5, 0]);
  });

  // Heads both paths serve: the origin must receive the same bytes, and the connection stays open
  // for the next request on both.
  const served: Array<[string, (o: string) => string]> = [
    ['Host naming another authority', (a) => `GET http://${a}/p HTTP/1.1\r\nHost: other.example\r\n\r\n`],
    ['no Host', (a) => `GET http://${a}/p HTTP/1.1\r\n\r\n`],
    ['a fragment', (a) => `GET http://${a}/p?q=1#frag HTTP/1.1\r\nHost: ${a}\r\n\r\n`],
    ['a query without a path', (a) => `GET http://${a}?q=1 HTTP/1.1\r\nHost: ${a}\r\n\r\n`],
    ['an empty value and tabs around one', (a) => `GET http://${a}/p HTTP/1.1\r\nHost: ${a}\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n`],
    ['Proxy-Connection: keep-alive', (a) => `GET http://${a}/p HTTP/1.1\r\nHost: ${a}\r\nProxy-Connection: Keep-Alive\r\n\r\n`],
    ['Proxy-Connection: upgrade without Upgrade', (a) => `GET http://${a}/p HTTP/1.1\r\nHost: ${a}\r\nProxy-Connection: upgrade\r\n\r\n`],
    ['HEAD', (a) => `HEAD http://${a}/p HTTP/1.1\r\nHost: ${a}\r\n\r\n`],
  ];
  it.each(served)('%s: the same answer and the same bytes at the origin, whole or split', async (_name, bytes) => {
    const whole = await exchange(bytes(o), `GET http://${o}/next HTTP/1.1\r\nHost: ${o}\r\nConnection: close\r\n\r\n`, false);
    const split = await exchange(bytes(o), `GET http://${o}/next HTTP/1.1\r\nHost: ${o}\r\nConnection: close\r\n\r\n`, true);
    expect(statuses(whole.answer)).toEqual([200, 200]);
    expect(statuses(split.answer)).toEqual([200, 200]);
    expect(whole.answer).toMatch(/hello$/);
    expect(whole.atOrigin).toHaveLength(2);
    expect(whole.atOrigin).toEqual(split.atOrigin);
  });
});

/** `n` header fields of the smallest form (`X0:` with an empty value). */
function fields(n: number): string {
  return Array.from({ length: n }, (_, i) => `X${i}:\r\n`).join('');
}

// Regression: node:http kept only the first 2000 raw header entries (about 1000 fields) and dropped
// the rest silently, while its parser still framed the request by them. A Content-Length past them
// framed a body the gateway never saw (the origin got the POST without it, bytesOut 0); a
// `Transfer-Encoding: gzip, chunked` past them was not refused 501; a Connection option past them
// did not strip the field it named. maxHeaderBytes alone bounds the fields now.
describe('node:http: every header field within maxHeaderBytes is read', () => {
  it('a Content-Length after 1100 fields: the body reaches the origin and the record counts it', async () => {
    const closedBefore = gw.closed.length;
    const got = await exchange(`POST http://${o}/upload HTTP/1.1\r\nHost: ${o}\r\n${fields(1100)}Content-Length: 5\r\nConnection: close\r\n\r\nhello`, '', false);
    expect(statuses(got.answer)).toEqual([200]);
    expect(got.atOrigin).toHaveLength(1);
    expect(got.atOrigin[0]).toMatch(/\r\ncontent-length: 5\r\n/i);
    expect(got.atOrigin[0]?.endsWith('\r\n\r\nhello')).toBe(true);
    const rec = await gw.waitForClosed((r) => gw.closed.indexOf(r) >= closedBefore);
    expect([rec.closeReason, rec.bytesOut, rec.bytesIn]).toEqual(['closed', 5, 5]);
  });

  it('Transfer-Encoding: gzip, chunked after 1100 fields: 501, nothing forwarded', async () => {
    const got = await exchange(`POST http://${o}/coded HTTP/1.1\r\nHost: ${o}\r\n${fields(1100)}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`, '', false);
    expect(statuses(got.answer)).toEqual([501]);
    expect(got.atOrigin).toEqual([]);
  });

  it('a Connection option after 1100 fields strips the field it names, whole (fast path) or split (node:http)', async () => {
    const request = `GET http://${o}/named HTTP/1.1\r\nHost: ${o}\r\nX-Private: s\r\n${fields(1100)}Connection: X-Private\r\n\r\n`;
    const next = `GET http://${o}/next HTTP/1.1\r\nHost: ${o}\r\nConnection: close\r\n\r\n`;
    const whole = await exchange(request, next, false);
    const split = await exchange(request, next, true);
    expect(statuses(split.answer)).toEqual([200, 200]);
    expect(split.atOrigin[0]).not.toMatch(/x-private/i);
    expect(split.atOrigin[0]).toContain('\r\nX1099: \r\n');
    expect(whole.atOrigin).toEqual(split.atOrigin);
  });
});
