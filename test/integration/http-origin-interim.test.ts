/**
 * Origins that send 1xx (interim) responses on the absolute-URI path, fast path and node:http alike.
 * undici re-arms its headers timeout on every 1xx, so an origin that drips 103 Early Hints and never
 * sends its final answer held the client without one for as long as it dripped (regression: 12 s of
 * 103s every 200 ms with limits.idleTimeoutMs 1000: the client got its 504 after 13.7 s, once the drip
 * had stopped). Now the final response must come within limits.idleTimeoutMs of the first 1xx: the test
 * asks that the 504 comes while the origin still drips (a 60 s drip; no duration is asserted). A burst of
 * 1xx followed by the final answer is still relayed. The 1xx themselves reach the client (see
 * http-early-hints.test.ts), but only the first MAX_INTERIM_RELAYED of a request: a burst of 300 gets
 * the client 10, then the final answer whole.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_INTERIM_RELAYED } from '../../gateway/listeners/http-interim.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody, rawConnect, readUntil } from './http-harness.ts';

const IDLE_MS = 1000;
/** The drip's bound: 300 interim responses, 200 ms apart (60 s), far past IDLE_MS. */
const DRIPS = 300;
const DRIP_EVERY_MS = 200;
/** How long the client waits for its answer: half the drip, so only a cut drip answers in time. */
const CLIENT_WAITS_MS = 30_000;
/** The 103s the latest /drip connection has been sent. */
let dripped = 0;

let gw: TestGateway;
let origin: ScriptedOrigin;
let o: string;

/** A 103 every DRIP_EVERY_MS, DRIPS of them at most, and never the final answer. */
function drip(s: Socket): void {
  dripped = 0;
  const timer = setInterval(() => {
    if (s.destroyed || dripped >= DRIPS) {
      clearInterval(timer);
      return;
    }
    dripped++;
    s.write('HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n');
  }, DRIP_EVERY_MS);
  s.once('close', () => clearInterval(timer));
}

beforeAll(async () => {
  origin = await scriptedOrigin({
    '/drip': drip,
    '/burst': `${'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n'.repeat(300)}HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal`,
    '/ok': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  });
  o = origin.authority;
  gw = await startTestGateway({ limits: { idleTimeoutMs: IDLE_MS } });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** One 103 as the relay sends it (the origin's Link, our Via). */
const relayed103 = (): string => `HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nvia: 1.1 ${gw.ctx.via.pseudonym}\r\n\r\n`;

/** The 103 heads in a response as the client read it. */
function count103(response: string): number {
  return response.split(relayed103()).length - 1;
}

/** What follows the last 103 head: the final response. */
function afterInterim(response: string): string {
  const last = response.lastIndexOf(relayed103());
  return last < 0 ? response : response.slice(last + relayed103().length);
}

/** Send a GET for `path`, whole (fast path) or split over two packets (node:http serves it). */
async function sendGet(s: Socket, path: string, split: boolean): Promise<void> {
  const head = `GET http://${o}${path} HTTP/1.1\r\nHost: ${o}\r\n\r\n`;
  if (!split) {
    s.write(head);
    return;
  }
  s.write(head.slice(0, 12));
  await new Promise((r) => setTimeout(r, 20));
  s.write(head.slice(12));
}

describe.each([
  ['fast path', false],
  ['node:http', true],
] as const)('%s', (_name, split) => {
  it('an origin that drips 1xx and never answers: 504 while it still drips, and the connection goes on', async () => {
    const s = await rawConnect(gw.httpPort);
    try {
      await sendGet(s, '/drip', split);
      const response = (await readUntil(s, '}', CLIENT_WAITS_MS)).toString('latin1');
      // The 103s that came before the cut were relayed, then the 504. The cut is on the gateway's
      // timer, idleTimeoutMs after the first 103, here when the next one is due: a 103 that comes
      // first is the cut's and is not relayed.
      const relayed = count103(response);
      expect(relayed).toBeGreaterThan(0);
      expect(relayed).toBeLessThanOrEqual(dripped);
      const final = afterInterim(response);
      expect(final).toMatch(/^HTTP\/1\.1 504 /);
      expect(response.length).toBe(relayed * relayed103().length + final.length);
      // Cut mid-drip: more than one 103 came (the first starts the clock), and far from all of them.
      expect(dripped).toBeGreaterThan(1);
      expect(dripped).toBeLessThan(DRIPS);
      const body = jsonBody(final);
      const record = await gw.waitForClosed((r) => r.id === body.flowId);
      expect(record.closeReason).toBe('connect-timeout');
      expect(record.bytesIn).toBe(0);
      await sendGet(s, '/ok', split);
      expect((await readUntil(s, '\r\n\r\nok')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    } finally {
      s.destroy();
    }
  }, 40_000);

  it('300 interim 103s, then the final answer: the first 10 103s are relayed, then the answer whole', async () => {
    const s = await rawConnect(gw.httpPort);
    try {
      const before = gw.closed.length;
      await sendGet(s, '/burst', split);
      const response = (await readUntil(s, 'final')).toString('latin1');
      expect(MAX_INTERIM_RELAYED).toBe(10);
      expect(count103(response)).toBe(MAX_INTERIM_RELAYED);
      const final = afterInterim(response);
      expect(final).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\nfinal$/);
      expect(response.length).toBe(MAX_INTERIM_RELAYED * relayed103().length + final.length);
      // The drip's flow may close meanwhile: this one is the flow that received bytes.
      const record = await gw.waitForClosed((r) => gw.closed.indexOf(r) >= before && r.bytesIn > 0);
      expect(record.closeReason).toBe('closed');
      expect(record.bytesIn).toBe(5);
    } finally {
      s.destroy();
    }
  });
});
