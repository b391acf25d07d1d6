/**
 * An extension method's token is bounded by `limits.maxHeaderBytes` however it arrives. node's
 * parser leaves the method out of its head count (the stand-in `POST` takes its place), and the
 * extension-method path bounded only a method still unfinished across packets. Regression: with
 * maxHeaderBytes 8192, a 10,000-byte method whole in one packet, or finished in a later packet, was
 * forwarded to the origin (a 10 KB request line), while the same method still unfinished past the
 * limit was 431.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawConnect } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';

const LIMIT = 8192;

let gw: TestGateway;
let origin: Server;
let originPort = 0;
/** What each origin connection received; each head is answered 200 `ok`, then the connection closes. */
const received: string[] = [];

beforeAll(async () => {
  origin = createServer((s: Socket) => {
    const at = received.push('') - 1;
    s.on('error', () => undefined);
    s.on('data', (c: Buffer) => {
      received[at] += c.toString('latin1');
      if ((received[at] as string).includes('\r\n\r\n')) s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok');
    });
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  gw = await startTestGateway({ limits: { maxHeaderBytes: LIMIT } });
});

afterAll(async () => {
  await gw?.stop();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

const request = (method: string, path: string): string => `${method} http://127.0.0.1:${originPort}${path} HTTP/1.1\r\nHost: x\r\n\r\n`;

/** Send `parts` as separate writes, each after the previous one is flushed; the whole answer. */
async function exchange(parts: readonly string[]): Promise<{ answer: string; clientPort: number | undefined }> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const clientPort = s.localPort;
  const guard = setTimeout(() => s.destroy(), 10_000);
  const answer = readToEnd(s);
  for (const part of parts) await new Promise<void>((r) => s.write(part, () => r()));
  const { data } = await answer;
  clearTimeout(guard);
  return { answer: data.toString('latin1'), clientPort };
}

describe('an extension method longer than maxHeaderBytes', () => {
  const long = 'M'.repeat(LIMIT + 1808);

  it.each([
    ['whole in one packet', (line: string) => [line]],
    ['finished in a later packet', (line: string) => [line.slice(0, LIMIT - 2000), line.slice(LIMIT - 2000)]],
  ])('%s: 431 JSON, a log line, nothing reaches the origin, no record', async (_how, split) => {
    const originBefore = received.length;
    const logsBefore = gw.logs.length;
    const closedBefore = gw.closed.length;
    const { answer } = await exchange(split(request(long, '/long')));
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);
    expect(jsonBody(answer)).toEqual({ error: 'request header fields too large', reason: 'headers-too-large', flowId: null });
    expect(gw.logs.slice(logsBefore).some((l) => l.level === 'warn' && l.code === 'EGW_HEADERS_TOO_LARGE')).toBe(true);
    // A method of 1,000 bytes after it is served: the listener goes on, the origin sees only that one.
    const { answer: short, clientPort } = await exchange([request('M'.repeat(1000), '/short')]);
    expect(short).toMatch(/^HTTP\/1\.1 200 /);
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    expect(rec).toMatchObject({ verdict: 'allow', closeReason: 'closed' });
    expect(gw.closed.slice(closedBefore).filter((r) => r.client.port !== clientPort)).toEqual([]);
    expect(received.slice(originBefore).map((r) => r.slice(1000, 1000 + 7))).toEqual([' /short']);
  });
});
