/**
 * A request line naming `HTTP/2.0` (node's parser reads it as HTTP/1, where its version token may
 * only be 1.x) is answered 505 before admission: absolute-URI (the fast path takes HTTP/1.1 only
 * and hands it to node:http), Upgrade and CONNECT, whole head or split. The destination is a raw
 * TCP server that records every connection.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawConnect, type RecordingDestination, startRecordingDestination } from './http-harness.ts';

let gw: TestGateway;
let destination: RecordingDestination;
let o: string;
/** What the destination received, one entry per connection. */
let received: string[] = [];

beforeAll(async () => {
  destination = await startRecordingDestination((s, soFar) => {
    if (soFar.startsWith('GET ') && soFar.endsWith('\r\n\r\n')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello');
  });
  received = destination.received;
  o = `127.0.0.1:${destination.port}`;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await destination?.close();
});

/**
 * Send `bytes` whole (one write) or split after the first 3 bytes; end our side once an answer's
 * head is in (a tunnel, the unfixed behaviour, never ends by itself); collect everything until the
 * connection ends (bounded: 10 s).
 */
async function exchange(bytes: string, isSplit: boolean): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  const answered = new Promise<void>((resolve) => {
    s.on('data', (c: Buffer) => {
      chunks.push(c);
      if (Buffer.concat(chunks).includes('\r\n\r\n')) resolve();
    });
  });
  s.on('end', () => s.end());
  const closed = once(s, 'close');
  const timer = setTimeout(() => s.destroy(), 10_000);
  if (isSplit) {
    s.write(bytes.slice(0, 3), 'latin1');
    await new Promise((r) => setTimeout(r, 100));
    s.write(bytes.slice(3), 'latin1');
  } else s.write(bytes, 'latin1');
  await Promise.race([answered, closed]);
  // Let a relayed answer's body come in before our FIN.
  await new Promise((r) => setTimeout(r, 100));
  if (!s.destroyed) s.end();
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

describe('a request line naming HTTP/2.0', () => {
  // Regression: node's parser accepts `HTTP/2.0` in an HTTP/1 request line (only that one: 1.2 and
  // 3.0 are its 400). The gateway served it as HTTP/1: `GET http://o/ HTTP/2.0` reached the origin as
  // `GET / HTTP/1.1` (200, a flow `allow` `closed`), and `CONNECT o HTTP/2.0` got its tunnel.
  const requests: Array<[string, (o: string) => string]> = [
    ['absolute-URI GET', (a) => `GET http://${a}/v2 HTTP/2.0\r\nHost: ${a}\r\n\r\n`],
    ['Upgrade', (a) => `GET http://${a}/ws HTTP/2.0\r\nHost: ${a}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`],
    ['CONNECT', (a) => `CONNECT ${a} HTTP/2.0\r\nHost: ${a}\r\n\r\ntunnelled`],
  ];
  it.each(requests)('%s: 505 with connection: close, whole head or split, nothing dialled, no record', async (_name, bytes) => {
    for (const isSplit of [false, true]) {
      const connectionsBefore = received.length;
      const closedBefore = gw.closed.length;
      const logsBefore = gw.logs.length;
      const answer = await exchange(bytes(o), isSplit);
      expect(answer.slice(0, 12), `split: ${isSplit}`).toBe('HTTP/1.1 505');
      expect(answer).toMatch(/\r\nconnection: close\r\n/i);
      expect(jsonBody(answer)).toEqual({ error: 'http version not supported', reason: 'http-version-not-supported', flowId: null });
      expect(received.length, 'no connection to the destination').toBe(connectionsBefore);
      expect(gw.closed.length).toBe(closedBefore);
      expect(gw.logs.slice(logsBefore).map((l) => l.why)).toEqual(['http-version-not-supported']);
    }
  });

  it('HTTP/1.0 and HTTP/1.1 are served as before', async () => {
    for (const version of ['1.0', '1.1']) {
      const answer = await exchange(`GET http://${o}/v${version} HTTP/${version}\r\nHost: ${o}\r\n\r\n`, false);
      expect(answer.slice(0, 12)).toBe('HTTP/1.1 200');
      expect(answer.endsWith('hello')).toBe(true);
    }
  });
});
