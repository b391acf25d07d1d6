/**
 * An HTTP/1.0 request with a Transfer-Encoding is 400 before admission (RFC 9112 §6.1: its framing
 * is faulty, and the connection closes): nothing reaches the origin, no flow, and the bytes the client
 * sent behind it are dropped unanswered. Before, node's parser read the body as chunked and kept the
 * connection, so a request after the chunked body was served too: a front that reads HTTP/1.0 without
 * Transfer-Encoding takes those body bytes for its next request. Real gateway, raw client, real origin.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, rawExchange, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
let o: string;

beforeAll(async () => {
  origin = await startOrigin();
  o = `127.0.0.1:${origin.port}`;
  gw = await startTestGateway({});
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** A POST framed chunked in `version`, then a GET pipelined behind it, in one write. */
function chunkedThenGet(version: string, path: string): string {
  return (
    `POST http://${o}/${path} ${version}\r\nHost: ${o}\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n` +
    `GET http://${o}/${path}-behind ${version}\r\nHost: ${o}\r\nConnection: close\r\n\r\n`
  );
}

describe('Transfer-Encoding in an HTTP/1.0 request', () => {
  it('is refused 400 with connection: close, nothing forwarded, the request behind it dropped, no flow', async () => {
    const before = gw.closed.length;
    const { response } = await rawExchange(gw.httpPort, chunkedThenGet('HTTP/1.0', 'te10'), 5000);
    expect(response.startsWith('HTTP/1.1 400 ')).toBe(true);
    expect(response.toLowerCase()).toContain('connection: close');
    expect(response).toContain('"reason":"bad-request"');
    // One answer only: the GET behind the body was not read as a request.
    expect(response.match(/HTTP\/1\.1 \d{3} /g)).toHaveLength(1);
    expect(origin.seen.filter((s) => s.url.startsWith('/te10'))).toEqual([]);
    expect(gw.closed.length).toBe(before);
    expect(gw.logs.some((l) => l.why === 'transfer-encoding-in-http/1.0')).toBe(true);
  });

  it('leaves HTTP/1.1 chunked bodies and HTTP/1.0 Content-Length bodies served as before', async () => {
    const chunked = await rawExchange(gw.httpPort, chunkedThenGet('HTTP/1.1', 'te11'), 5000);
    expect(chunked.response.match(/HTTP\/1\.1 200 /g)).toHaveLength(2);
    expect(origin.seen.find((s) => s.url === '/te11')?.body.toString()).toBe('hello');
    const record = await gw.waitForClosed((r) => r.destination.port === origin.port && r.bytesOut === 5);
    expect(record.closeReason).toBe('closed');
    const withLength = await rawExchange(gw.httpPort, `POST http://${o}/cl10 HTTP/1.0\r\nHost: ${o}\r\nContent-Length: 5\r\n\r\nhello`, 5000);
    expect(withLength.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(origin.seen.find((s) => s.url === '/cl10')?.body.toString()).toBe('hello');
  });
});
