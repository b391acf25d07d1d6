/**
 * Bytes a client sends after a request that said `Connection: close` (or after an HTTP/1.0 request
 * without keep-alive), on node:http's absolute-URI path: the request before them is whole and
 * valid, so it gets its answer, whole, with `connection: close`, and what came after it is dropped
 * unanswered, without a flow (RFC 9112 §9.6), as the fast path does with the same bytes.
 * Regression: node's parser refuses such bytes (HPE_CLOSED_CONNECTION) and the listener took that
 * for a malformed request: through the real listener, a GET with `Connection: close` whose head came
 * in two packets, a 300 ms origin and a second GET sent 50 ms later got `400 Bad Request` in place
 * of its 200 although the origin had the request (record `bad-request`, bytesIn 0); with a 4 MiB
 * answer and the second GET sent at its first byte the client got 3,910,662 of 4,194,478 bytes,
 * cut; a request pipelined behind one in the same write, a 400 (the fast path, head whole: 200).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pipelinedExchange, startOrigin } from './http-harness.ts';

const MiB = 1024 * 1024;
/** Far beyond what any answer here needs: the connection must have closed long before. */
const GUARD_MS = 15_000;

let gw: TestGateway;
let origin: Origin;

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url !== '/slow') return false;
    setTimeout(() => {
      res.writeHead(200, { 'content-length': 4 });
      res.end('slow');
    }, 300);
    return true;
  });
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

const authority = (): string => `127.0.0.1:${origin.port}`;
const get = (path: string, extra = '', version = '1.1'): string => `GET http://${authority()}${path} HTTP/${version}\r\nHost: ${authority()}\r\n${extra}\r\n`;
const post = (path: string, body: string, extra = ''): string =>
  `POST http://${authority()}${path} HTTP/1.1\r\nHost: ${authority()}\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;

interface Exchange {
  /** Everything the client received until the gateway closed the connection. */
  received: Buffer;
}

/**
 * Send `parts` (30 ms apart), then `after` once the first answer byte came (or at once when
 * `afterFirstByte` is false, 50 ms after the last part), and read until the gateway closes.
 */
async function exchange(parts: readonly string[], after: string, afterFirstByte: boolean): Promise<Exchange> {
  return { received: await pipelinedExchange(gw.httpPort, parts, after, { atFirstByte: afterFirstByte, guardMs: GUARD_MS }) };
}

/** Status line, the head's fields (lower-case names) and the body of one response. */
function parse(raw: Buffer): { status: string; fields: string[]; body: Buffer } {
  const end = raw.indexOf('\r\n\r\n');
  expect(end, raw.toString('latin1', 0, 200)).toBeGreaterThan(0);
  const lines = raw.toString('latin1', 0, end).split('\r\n');
  return { status: lines[0] ?? '', fields: lines.slice(1).map((l) => l.toLowerCase()), body: raw.subarray(end + 4) };
}

/** The closed record of the one request the origin had. */
async function onlyRecord(): Promise<{ closeReason: string | null; bytesIn: number; bytesOut: number }> {
  const rec = await gw.waitForClosed((r) => r.destination.port === origin.port);
  return { closeReason: rec.closeReason, bytesIn: rec.bytesIn, bytesOut: rec.bytesOut };
}

describe('data after a request that closes its connection (node:http path)', () => {
  it('the answer to a Connection: close GET whose head came in two packets is not replaced by a 400 when more bytes follow', async () => {
    gw.closed.length = 0;
    const head = get('/slow', 'Connection: close\r\n');
    const { received } = await exchange([head.slice(0, 20), head.slice(20)], get('/after-split'), false);
    const answer = parse(received);
    expect(answer.status).toBe('HTTP/1.1 200 OK');
    expect(answer.fields).toContain('connection: close');
    expect(answer.body.toString('latin1')).toBe('slow');
    expect(await onlyRecord()).toEqual({ closeReason: 'closed', bytesIn: 4, bytesOut: 0 });
    // The request after it: never read, never sent, no flow.
    expect(origin.seen.some((s) => s.url === '/after-split')).toBe(false);
    expect(gw.closed).toHaveLength(1);
    expect(gw.logs.filter((l) => l.msg === 'client request refused')).toEqual([]);
  });

  it('a 4 MiB answer reaches the client whole when the client sends more at its first byte', async () => {
    gw.closed.length = 0;
    const path = `/size/${4 * MiB}`;
    const head = get(path, 'Connection: close\r\n');
    const { received } = await exchange([head.slice(0, 20), head.slice(20)], get('/after-large'), true);
    const answer = parse(received);
    expect(answer.status).toBe('HTTP/1.1 200 OK');
    expect(answer.body.length).toBe(4 * MiB);
    expect(await onlyRecord()).toEqual({ closeReason: 'closed', bytesIn: 4 * MiB, bytesOut: 0 });
    expect(origin.seen.some((s) => s.url === '/after-large')).toBe(false);
  });

  it.each([
    ['Connection: close', (): string => get('/p-close', 'Connection: close\r\n'), '/p-close', 'HTTP/1.1 200 OK', 0],
    ['Proxy-Connection: close', (): string => get('/p-proxy-close', 'Proxy-Connection: close\r\n'), '/p-proxy-close', 'HTTP/1.1 200 OK', 0],
    ['HTTP/1.0', (): string => get('/p-http10', '', '1.0'), '/p-http10', 'HTTP/1.1 200 OK', 0],
    ['a POST with Connection: close', (): string => post('/p-post', 'hello', 'Connection: close\r\n'), '/p-post', 'HTTP/1.1 200 OK', 5],
  ])('%s with a request pipelined behind it in the same write: answered, the next one dropped', async (_name, request, path, status, bytesOut) => {
    gw.closed.length = 0;
    const first = request();
    const next = `${get(`${path}-next`)}CONNECT ${authority()} HTTP/1.1\r\nHost: ${authority()}\r\n\r\n`;
    const { received } = await exchange([first + next], '', false);
    const answer = parse(received);
    expect(answer.status).toBe(status);
    expect(answer.fields).toContain('connection: close');
    expect(await onlyRecord()).toMatchObject({ closeReason: 'closed', bytesOut });
    expect(origin.seen.some((s) => s.url === `${path}-next`)).toBe(false);
    // Neither the GET nor the CONNECT behind it was admitted: one record only.
    await new Promise((r) => setTimeout(r, 100));
    expect(gw.closed).toHaveLength(1);
  });
});
