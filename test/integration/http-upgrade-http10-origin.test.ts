/**
 * Answers to an `Upgrade` sent as HTTP/1.0 by a raw origin. HTTP/1.0 has neither Upgrade nor any
 * 1xx status (RFC 1945 §9.1; RFC 9110 §7.8 has a server ignore Upgrade in HTTP/1.0), so a 101 that
 * says HTTP/1.0 switches nothing: it is a bad answer (http-upgrade.ts). An interim answer sent as
 * HTTP/1.0 is relayed as any 1xx is, our Via naming the version it came in (RFC 9110 §7.6.3), and
 * never to an HTTP/1.0 client (RFC 9110 §15.2).
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody, rawConnect } from './http-harness.ts';

const SWITCH = 'Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHELLO';
const HINTS = 'Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n';

/** What the origin answers per path; it keeps its connection open after it. */
const ANSWERS: Record<string, string> = {
  '/10-101': `HTTP/1.0 101 ${SWITCH}`,
  '/11-101': `HTTP/1.1 101 ${SWITCH}`,
  '/10-103-then-101': `HTTP/1.0 103 ${HINTS}HTTP/1.1 101 ${SWITCH}`,
  '/10-103-then-403': `HTTP/1.0 103 ${HINTS}HTTP/1.0 403 Forbidden\r\nContent-Length: 2\r\n\r\nno`,
  '/11-103-then-403': `HTTP/1.1 103 ${HINTS}HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno`,
};

let gw: TestGateway;
let origin: ScriptedOrigin;
let o: string;

beforeAll(async () => {
  origin = await scriptedOrigin(ANSWERS);
  o = origin.authority;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/**
 * Send an Upgrade for `path` in HTTP/`version` with `early` bytes behind its head; once `isDone`
 * holds for what has come, end the client's side (`ping`), then read until the gateway closes (5 s
 * at most).
 */
async function upgrade(path: string, isDone: (got: string) => boolean, version = '1.1'): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('error', () => undefined);
  const closed = once(s, 'close');
  const read = (): string => Buffer.concat(chunks).toString('latin1');
  s.write(`GET http://${o}${path} HTTP/${version}\r\nHost: ${o}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly`);
  const timer = setTimeout(() => s.destroy(new Error('no close within 5 s')), 5_000);
  try {
    await until(`the answer to ${path}`, () => isDone(read()) || s.destroyed);
    if (!s.destroyed) s.end('ping');
    await closed;
  } finally {
    clearTimeout(timer);
  }
  return read();
}

// Regression: an origin's `HTTP/1.0 101` to an HTTP/1.1 Upgrade opened the tunnel: the client got
// the 101 (Via 1.0) and the origin's HELLO, its `early` and `ping` reached the origin, recorded
// closed with bytesIn 5, bytesOut 9. Now 502 upstream-bad-response, nothing tunnelled.
describe('a 101 sent as HTTP/1.0', () => {
  it('is 502 upstream-bad-response: nothing tunnelled either way', async () => {
    const before = gw.closed.length;
    // HELLO too: without the fix the tunnel opened, and the client's FIN ends it.
    const got = await upgrade('/10-101', (text) => text.includes('\r\n\r\n{') || text.endsWith('HELLO'));
    expect(got).toMatch(/^HTTP\/1\.1 502 /);
    expect(jsonBody(got)['reason']).toBe('upstream-bad-response');
    expect(got).not.toMatch(/HELLO|^HTTP\/1\.1 101 /m);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0, bytesOut: 0 });
    expect(origin.afterHead.get('/10-101')).toBe('');
  });

  it('the same 101 as HTTP/1.1 opens the tunnel', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/11-101', (text) => text.endsWith('\r\n\r\nHELLO'));
    expect(got).toMatch(/^HTTP\/1\.1 101 /);
    expect(got.match(/\r\nvia: [^\r]*/gi)).toEqual([`\r\nvia: 1.1 ${gw.ctx.via.pseudonym}`]);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ bytesIn: 5, bytesOut: 9 });
    await until('the tunnelled bytes at the origin', () => origin.afterHead.get('/11-101') === 'earlyping');
  });
});

/** The Via values of each head in `text` (interim heads first), our pseudonym shown as `us`. */
function viasOf(text: string): string[][] {
  return text
    .split('\r\n\r\n')
    .filter((head) => head.startsWith('HTTP/'))
    .map((head) => [head.slice(0, 12), ...(head.match(/\r\nvia: [^\r]*/gi) ?? []).map((v) => v.slice(7).replace(gw.ctx.via.pseudonym, 'us'))]);
}

// Regression: an origin's `HTTP/1.0 103` before its answer was relayed with `Via: 1.1 egressgate-…`,
// where the final answer from the same origin said 1.0 (RFC 9110 §7.6.3: the received-protocol).
describe('an interim answer sent as HTTP/1.0', () => {
  it('before a 403: relayed with Via 1.0, then the 403 (Via 1.0) and the close', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/10-103-then-403', (text) => text.endsWith('\r\n\r\nno'));
    expect(viasOf(got)).toEqual([
      ['HTTP/1.1 103', '1.0 us'],
      ['HTTP/1.1 403', '1.0 us'],
    ]);
    expect(got).toContain('\r\nLink: </style.css>; rel=preload\r\n');
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 2 });
  });

  it('before an HTTP/1.1 101: each head names its own version, then the tunnel', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/10-103-then-101', (text) => text.endsWith('\r\n\r\nHELLO'));
    expect(viasOf(got)).toEqual([
      ['HTTP/1.1 103', '1.0 us'],
      ['HTTP/1.1 101', '1.1 us'],
    ]);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ bytesIn: 5, bytesOut: 9 });
  });

  it('an HTTP/1.1 103 still says 1.1', async () => {
    const got = await upgrade('/11-103-then-403', (text) => text.endsWith('\r\n\r\nno'));
    expect(viasOf(got)).toEqual([
      ['HTTP/1.1 103', '1.1 us'],
      ['HTTP/1.1 403', '1.1 us'],
    ]);
  });

  it('an HTTP/1.0 client gets no 1xx, whichever version it came in: only the 403', async () => {
    for (const path of ['/10-103-then-403', '/11-103-then-403']) {
      const got = await upgrade(path, (text) => text.endsWith('\r\n\r\nno'), '1.0');
      expect(got, path).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
      expect(got, path).not.toMatch(/ 103 |Link:/);
    }
  });
});
