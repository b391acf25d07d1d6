/**
 * An origin's chunked answer whose trailer section says `Connection: close` (RFC 9110 §6.5.1 forbids
 * it there), the origin keeping the connection open: llhttp takes the field and refuses anything
 * after that message on the connection, while undici judged it reusable from the head and pooled
 * it. Regression: the next request on that origin connection, here another client's, got `502
 * upstream-bad-response` ("Data after `Connection: close`"), on both absolute-URI paths. The
 * connection is now closed when such a response completes (http-origin-socket.ts
 * closeIfTrailersSayClose), and the next request goes on a new one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { rawConnect, readUntil } from './http-harness.ts';

let gw: TestGateway;
let origin: ScriptedOrigin;

beforeAll(async () => {
  origin = await scriptedOrigin({
    '/trailer-close': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\nX-Sum: 1\r\nConnection: close\r\n\r\n',
    '/trailer-close-list': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\nconnection: x-hop, CLOSE\r\n\r\n',
    '/next': 'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nsecond-answer',
  });
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

describe('a trailer section saying Connection: close', () => {
  for (const [name, split] of [
    ['fast path', false],
    ['node:http', true],
  ] as const) {
    for (const path of ['/trailer-close', '/trailer-close-list']) {
      it(`${name}, ${path}: the first answer is relayed, and another client's next request on that origin is answered`, async () => {
        const o = origin.authority;
        // A Content-Length on the request sends it to node:http (http-fast-head.ts).
        const extra = split ? 'content-length: 0\r\n' : '';
        const first = await rawConnect(gw.httpPort);
        try {
          first.write(`GET http://${o}${path} HTTP/1.1\r\nhost: ${o}\r\n${extra}\r\n`);
          const got = (await readUntil(first, '0\r\n\r\n')).toString('latin1');
          expect(got).toMatch(/^HTTP\/1\.1 200 /);
          expect(got).toContain('5\r\nfirst\r\n0\r\n\r\n');
        } finally {
          first.destroy();
        }
        const second = await rawConnect(gw.httpPort);
        try {
          const before = gw.closed.length;
          second.write(`GET http://${o}/next HTTP/1.1\r\nhost: ${o}\r\n${extra}\r\n`);
          const got = (await readUntil(second, 'second-answer')).toString('latin1');
          expect(got).toMatch(/^HTTP\/1\.1 200 /);
          const rec = await gw.waitForClosed((r) => gw.closed.indexOf(r) >= before && r.client.port === second.localPort);
          expect(rec.closeReason).toBe('closed');
          expect(rec.bytesIn).toBe(13);
        } finally {
          second.destroy();
        }
      });
    }
  }
});
