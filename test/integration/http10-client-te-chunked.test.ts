/**
 * An HTTP/1.0 client gets no transfer coding (RFC 9112 §6.1), even when its request lists `chunked`
 * in TE: an origin's answer without a length reaches it close-delimited, its bytes exactly the
 * body. node:http's ServerResponse chunks the answer to an HTTP/1.0 request whose TE names
 * `chunked`, and the client read the size lines as content. Real gateway, raw client, real origin.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pattern, rawConnect, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
let o: string;

beforeAll(async () => {
  origin = await startOrigin();
  o = `127.0.0.1:${origin.port}`;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** Send `head` on a new connection; everything until the gateway closes it (bounded). */
async function exchange(head: string): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const closed = once(s, 'close');
  const guard = setTimeout(() => s.destroy(), 10_000);
  s.write(head);
  await closed;
  clearTimeout(guard);
  return Buffer.concat(chunks).toString('latin1');
}

describe('an HTTP/1.0 client whose TE lists chunked', () => {
  for (const [te, extra] of [
    ['chunked', ''],
    ['trailers, chunked', 'Connection: keep-alive\r\n'],
  ] as const) {
    it(`TE: ${te}${extra ? ', keep-alive' : ''}: an origin's chunked answer comes close-delimited, without Transfer-Encoding`, async () => {
      const size = 3000;
      const path = `/chunked/${size}?te=${encodeURIComponent(te)}`;
      const before = gw.closed.length;
      const got = await exchange(`GET http://${o}${path} HTTP/1.0\r\nHost: ${o}\r\nTE: ${te}\r\n${extra}\r\n`);
      const end = got.indexOf('\r\n\r\n');
      const head = got.slice(0, end);
      expect(head).toMatch(/^HTTP\/1\.1 200 /);
      expect(head).not.toMatch(/\r\ntransfer-encoding:/i);
      expect(head).toMatch(/\r\nconnection: close/i);
      // The body is the origin's bytes exactly, ended by the close.
      expect(got.slice(end + 4)).toBe(pattern(size).toString('latin1'));
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: size, bytesOut: 0 });
    });
  }
});
