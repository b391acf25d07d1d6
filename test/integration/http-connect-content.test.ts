/**
 * A CONNECT that frames content (Content-Length other than 0, or Transfer-Encoding) is refused 400
 * before admission, on the CONNECT front's connections (a whole head in one packet: the front hands
 * such a head to node:http) and on node:http's (a split head) alike. RFC 9110 §9.3.6: a CONNECT has
 * no content, so the bytes a client or a proxy in front framed as its body must not become tunnel
 * payload. The destination is a raw TCP server that records every connection and every byte.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawConnect, type RecordingDestination, startRecordingDestination } from './http-harness.ts';

let gw: TestGateway;
let destination: RecordingDestination;
let port: number;
/** What the destination received, one entry per connection. */
let received: string[] = [];

beforeAll(async () => {
  destination = await startRecordingDestination();
  received = destination.received;
  port = destination.port;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await destination?.close();
});

/**
 * Send `bytes` whole (one write) or split after the first 3 bytes, half-close after `tunnelled`
 * came back or the gateway closed; collect everything until the connection ends (bounded: 10 s).
 */
async function exchange(bytes: string, isSplit: boolean): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('end', () => s.end());
  const closed = once(s, 'close');
  const timer = setTimeout(() => s.destroy(), 10_000);
  if (isSplit) {
    s.write(bytes.slice(0, 3), 'latin1');
    await new Promise((r) => setTimeout(r, 100));
    s.write(bytes.slice(3), 'latin1');
  } else s.write(bytes, 'latin1');
  // A tunnel (the unfixed behaviour) never ends by itself: end our side once its 200 is in.
  const answered = new Promise<void>((resolve) => {
    s.on('data', () => {
      if (Buffer.concat(chunks).includes('\r\n\r\n')) resolve();
    });
  });
  await Promise.race([answered, closed]);
  if (!s.destroyed) s.end();
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

describe('CONNECT with content framing', () => {
  // Regression: node's parser takes every byte after a CONNECT head as the tunnel's, whatever its
  // Content-Length or Transfer-Encoding said: `Content-Length: 5` + `hello` got 200 and `hello`
  // reached the destination as payload (bytesOut 5 + what followed), the chunked body too.
  const framed: Array<[string, string, string]> = [
    ['Content-Length: 5', 'Content-Length: 5\r\n', 'hello'],
    ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked\r\n', '5\r\nhello\r\n0\r\n\r\n'],
  ];
  it.each(framed)('%s: 400 before admission, whole head or split, nothing dialled, no record', async (_name, field, body) => {
    for (const isSplit of [false, true]) {
      const connectionsBefore = received.length;
      const closedBefore = gw.closed.length;
      const logsBefore = gw.logs.length;
      const answer = await exchange(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${field}\r\n${body}tunnelled`, isSplit);
      expect(answer.slice(0, 12), `split: ${isSplit}`).toBe('HTTP/1.1 400');
      expect(answer).toMatch(/\r\nconnection: close\r\n/i);
      expect(jsonBody(answer)).toEqual({ error: 'bad request', reason: 'bad-request', flowId: null });
      expect(received.length, 'no connection to the destination').toBe(connectionsBefore);
      expect(gw.closed.length).toBe(closedBefore);
      expect(gw.logs.slice(logsBefore).map((l) => l.why)).toEqual([field.startsWith('Content') ? 'connect-with-content-length' : 'connect-with-transfer-encoding']);
    }
  });

  it('Content-Length: 0 frames nothing: the tunnel carries the bytes after the head, counted exactly', async () => {
    for (const isSplit of [false, true]) {
      const connectionsBefore = received.length;
      const answer = await exchange(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nContent-Length: 0\r\n\r\ntunnelled-${isSplit}`, isSplit);
      expect(answer.slice(0, 12)).toBe('HTTP/1.1 200');
      const rec = await gw.waitForClosed((r) => r.protocol === 'connect' && r.destination.port === port && r.bytesOut === `tunnelled-${isSplit}`.length);
      expect([rec.verdict, rec.closeReason, rec.bytesIn]).toEqual(['allow', 'closed', 0]);
      expect(received.slice(connectionsBefore)).toEqual([`tunnelled-${isSplit}`]);
    }
  });
});
