/**
 * A first line node's parser would hold until limits.headerTimeoutMs is answered as soon as it is
 * whole: an HTTP/0.9 line (`GET /`, no version: llhttp then waits for header lines an HTTP/0.9
 * client never sends) 400, and the HTTP/2 preface `PRI * HTTP/2.0` 505, as a line naming HTTP/2.0
 * is on node:http's path. The header timeout here is 60 s; each exchange is given 20 s at most,
 * so an answer that waited for the timeout fails. Raw sockets through the real listener.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawConnect, type Origin, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
let o: string;

beforeAll(async () => {
  origin = await startOrigin();
  o = `127.0.0.1:${origin.port}`;
  gw = await startTestGateway({ limits: { headerTimeoutMs: 60_000 } });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** Send `parts` 100 ms apart on one connection, keep it open; everything until the gateway closes it (20 s at most). */
async function exchange(parts: readonly string[]): Promise<{ answer: string; isClosedByGateway: boolean }> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  let isClosedByGateway = true;
  const closed = once(s, 'close');
  const timer = setTimeout(() => {
    isClosedByGateway = false;
    s.destroy();
  }, 20_000);
  for (const [i, p] of parts.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 100));
    if (!s.destroyed) s.write(p, 'latin1');
  }
  await closed;
  clearTimeout(timer);
  return { answer: Buffer.concat(chunks).toString('latin1'), isClosedByGateway };
}

const BAD = { error: 'bad request', reason: 'bad-request', flowId: null };
const VERSION = { error: 'http version not supported', reason: 'http-version-not-supported', flowId: null };

describe('a first line node:http would hold until the header timeout', () => {
  // Regression: each waited limits.headerTimeoutMs for header lines and got 408 then.
  const cases: Array<[string, (o: string) => string[], string, Record<string, unknown>, string]> = [
    ['HTTP/0.9 origin-form', () => ['GET /\r\n'], 'HTTP/1.1 400', BAD, 'http/0.9'],
    ['HTTP/0.9 absolute-form', (a) => [`GET http://${a}/nine\r\n`], 'HTTP/1.1 400', BAD, 'http/0.9'],
    ['HTTP/0.9 behind a request the fast path served', (a) => [`GET http://${a}/one HTTP/1.1\r\nHost: ${a}\r\n\r\n`, `GET http://${a}/nine\r\n`], 'HTTP/1.1 400', BAD, 'http/0.9'],
    ['the HTTP/2 preface line alone', () => ['PRI * HTTP/2.0\r\n'], 'HTTP/1.1 505', VERSION, 'http-version-not-supported'],
    ['an absolute-URI line naming HTTP/2.0, no header lines yet', (a) => [`GET http://${a}/two HTTP/2.0\r\n`], 'HTTP/1.1 505', VERSION, 'http-version-not-supported'],
  ];
  it.each(cases)('%s: answered at once, connection: close, not forwarded', async (_name, parts, status, body, why) => {
    const seenBefore = origin.seen.length;
    const logsBefore = gw.logs.length;
    const { answer, isClosedByGateway } = await exchange(parts(o));
    expect(isClosedByGateway, 'answered and closed before the 20 s guard').toBe(true);
    const last = answer.slice(answer.lastIndexOf('HTTP/1.1 '));
    expect(last.slice(0, 12), answer).toBe(status);
    expect(last).toMatch(/\r\nconnection: close\r\n/i);
    expect(jsonBody(last)).toEqual(body);
    expect(origin.seen.slice(seenBefore).map((r) => r.url)).toEqual(parts(o).length > 1 ? ['/one'] : []);
    expect(gw.logs.slice(logsBefore).map((l) => l.why)).toEqual([why]);
  });

  it('the whole HTTP/2 preface: 505 (was a 400)', async () => {
    const { answer, isClosedByGateway } = await exchange(['PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n']);
    expect(isClosedByGateway).toBe(true);
    expect(answer.slice(0, 12)).toBe('HTTP/1.1 505');
    expect(jsonBody(answer)).toEqual(VERSION);
  });
});
