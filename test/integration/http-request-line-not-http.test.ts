/**
 * A request line whose protocol is not `HTTP/x.y` (`RTSP/1.0`, `ICE/1.0`) is no HTTP request: node's
 * parser reads it as HTTP/1.0, and the gateway forwarded it as one. Now 400 with the JSON body, a
 * warn log line (`why`: `not-http`), nothing forwarded: as a connection's first request (whole, or
 * its head split after the request line), behind a request the fast path served, and behind one
 * node:http served (a body) on the same keep-alive connection. Raw sockets through the real listener.
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
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** Send `parts` 100 ms apart on one connection; everything until the gateway closes it (10 s at most). */
async function exchange(parts: readonly string[]): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const closed = once(s, 'close');
  const timer = setTimeout(() => s.destroy(), 10_000);
  for (const [i, p] of parts.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 100));
    if (!s.destroyed) s.write(p, 'latin1');
  }
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

/** The answer after `skip` 200s: a 400 with the SPEC §4 body. */
function expectNotHttp(answer: string, skip: number): void {
  const answers = answer.split(/(?=HTTP\/1\.1 \d{3} )/);
  expect(answers.length, answer).toBe(skip + 1);
  for (const a of answers.slice(0, skip)) expect(a.slice(0, 12)).toBe('HTTP/1.1 200');
  const last = answers[skip] as string;
  expect(last.slice(0, 12)).toBe('HTTP/1.1 400');
  expect(last).toMatch(/\r\nconnection: close\r\n/i);
  expect(jsonBody(last)).toEqual({ error: 'bad request', reason: 'bad-request', flowId: null });
}

describe('a request line that is not HTTP', () => {
  // Regression: `GET http://o/ RTSP/1.0` reached the origin as `GET /` and was answered 200.
  const first: Array<[string, (o: string) => string[]]> = [
    ['RTSP/1.0 GET, whole', (a) => [`GET http://${a}/rtsp RTSP/1.0\r\nHost: ${a}\r\n\r\n`]],
    ['RTSP/1.0 GET, head split after the request line', (a) => [`GET http://${a}/rtsp RTSP/1.0\r\nHo`, `st: ${a}\r\n\r\n`]],
    ['RTSP/1.0 OPTIONS of an rtsp:// target', (a) => [`OPTIONS rtsp://${a}/ RTSP/1.0\r\nCSeq: 1\r\n\r\n`]],
    ['RTSP/1.0 PLAY', (a) => [`PLAY http://${a}/rtsp RTSP/1.0\r\nCSeq: 1\r\n\r\n`]],
    ['ICE/1.0 SOURCE', (a) => [`SOURCE http://${a}/ice ICE/1.0\r\nHost: ${a}\r\n\r\n`]],
    ['RTSP/1.0 with Upgrade', (a) => [`GET http://${a}/rtsp RTSP/1.0\r\nHost: ${a}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`]],
  ];
  it.each(first)('%s: 400, not forwarded, logged', async (_name, parts) => {
    const seenBefore = origin.seen.length;
    const logsBefore = gw.logs.length;
    expectNotHttp(await exchange(parts(o)), 0);
    expect(origin.seen.length, 'nothing reached the origin').toBe(seenBefore);
    expect(gw.logs.slice(logsBefore).map((l) => l.why)).toEqual(['not-http']);
  });

  // [name, the packets, the paths the origin is asked for (the HTTP requests before the RTSP one)]
  const behind: Array<[string, (o: string) => string[], string[]]> = [
    ['behind a request the fast path served', (a) => [`GET http://${a}/one HTTP/1.1\r\nHost: ${a}\r\n\r\n`, `GET http://${a}/rtsp RTSP/1.0\r\nHost: ${a}\r\n\r\n`], ['/one']],
    ['behind a request node:http served (a body)', (a) => [`POST http://${a}/one HTTP/1.1\r\nHost: ${a}\r\nContent-Length: 2\r\n\r\nhi`, `GET http://${a}/rtsp RTSP/1.0\r\nHost: ${a}\r\n\r\n`], ['/one']],
    [
      'behind HTTP/1.0 requests node:http served, same method and target',
      (a) => [`GET http://${a}/rtsp HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\nGET http://${a}/rtsp HTTP/1.0\r\nConnection: keep-alive\r\n\r\n`, `GET http://${a}/rtsp RTSP/1.0\r\nHost: ${a}\r\n\r\n`],
      ['/rtsp', '/rtsp'],
    ],
  ];
  it.each(behind)('%s: the HTTP requests answered, the RTSP one 400, not forwarded', async (_name, parts, paths) => {
    const seenBefore = origin.seen.length;
    expectNotHttp(await exchange(parts(o)), paths.length);
    expect(origin.seen.slice(seenBefore).map((r) => r.url)).toEqual(paths);
  });

  it('HTTP/1.0 and HTTP/1.1 request lines are served as before, whole or split', async () => {
    for (const version of ['1.0', '1.1']) {
      for (const parts of [[`GET http://${o}/v HTTP/${version}\r\nConnection: close\r\n\r\n`], [`GET http://${o}/v HTTP/${version}\r\nConn`, 'ection: close\r\n\r\n']]) {
        const answer = await exchange(parts);
        expect(answer.slice(0, 12), `${version} ${parts.length}`).toBe('HTTP/1.1 200');
        expect(answer.endsWith('echo:GET:0')).toBe(true);
      }
    }
  });
});
