/**
 * An http parent proxy's interim (1xx) answers before its 2xx to our CONNECT (RFC 9110 §15.2: a
 * server may send any number of them before the final response): skipped, the 2xx taken, the
 * destination's bytes relayed; a parent that only ever drips 1xx is bounded by the dial's one
 * deadline (limits.connectTimeoutMs), and the 16 KiB its answer may take, 1xx heads included, holds
 * however the answer is cut into segments.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent } from '../helpers/parent-proxy.ts';
import { jsonBody, rawConnect, rawExchange } from './http-harness.ts';

let origin: Server;
let originPort: number;
let parent: ParentProxy;
let gw: TestGateway | null = null;

beforeAll(async () => {
  origin = createServer((s) => {
    s.on('error', () => {});
    s.end('hello');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  parent = await startHttpParent();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});
afterAll(async () => {
  await parent.close();
  await new Promise((r) => origin.close(r));
});

/** CONNECT through the gateway; everything the client read until the connection closed. */
async function connectThrough(g: TestGateway): Promise<string> {
  const c = await rawConnect(g.httpPort);
  const chunks: Buffer[] = [];
  c.on('data', (d: Buffer) => chunks.push(d));
  c.write(`CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n\r\n`);
  await once(c, 'close');
  return Buffer.concat(chunks).toString('latin1');
}

// Regression: the first status line read was the parent's answer, so a `100 Continue` or
// `102 Processing` before its 200 failed the flow: 502 upstream-proxy, logged "parent proxy
// http://127.0.0.1:<port> answered HTTP/1.1 100 Continue", nothing relayed.
describe('an http parent that sends 1xx before its 2xx', () => {
  const cases: Array<[string, { interim: string[]; interimInOneWrite?: boolean; answer?: string }]> = [
    ['one 100 Continue, then 200', { interim: ['100 Continue'] }],
    ['102 and 103 with fields, each in its own write, then 200', { interim: ['102 Processing', '103 Early Hints\r\nLink: </a.css>; rel=preload'] }],
    ['three 1xx and a 204 in one write', { interim: ['100 Continue', '102 Processing', '100 Continue'], interimInOneWrite: true, answer: '204 No Content' }],
  ];
  it.each(cases)('%s: the tunnel opens, the destination bytes reach the client, recorded closed', async (_name, mode) => {
    parent.mode = { kind: 'relay', withFirstBytes: false, ...mode };
    gw = await startTestGateway({ upstream: parent.url() });
    const answer = await connectThrough(gw);
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer.endsWith('\r\n\r\nhello')).toBe(true);
    const rec = await gw.waitForClosed((r) => r.protocol === 'connect');
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 5, bytesOut: 0 });
  });

  it('an absolute-URI request through the parent too', async () => {
    parent.mode = { kind: 'relay', interim: ['100 Continue'] };
    gw = await startTestGateway({ upstream: parent.url() });
    const http = createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok'));
    });
    http.listen(0, '127.0.0.1');
    await once(http, 'listening');
    const port = (http.address() as { port: number }).port;
    try {
      const { response } = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
      expect(response).toMatch(/^HTTP\/1\.1 200 /);
      expect(response.endsWith('\r\n\r\nok')).toBe(true);
    } finally {
      await new Promise((r) => http.close(r));
    }
  });

  it('a parent that drips 1xx and never answers is cut at the one dial deadline: 504 connect-timeout', async () => {
    parent.mode = { kind: 'drip', everyMs: 50 };
    gw = await startTestGateway({ upstream: parent.url(), limits: { connectTimeoutMs: 1000 } });
    const t0 = performance.now();
    const answer = await connectThrough(gw);
    const tookMs = performance.now() - t0;
    expect(answer).toMatch(/^HTTP\/1\.1 504 /);
    expect(jsonBody(answer)).toMatchObject({ reason: 'connect-timeout' });
    expect(tookMs).toBeGreaterThanOrEqual(950);
    expect(tookMs).toBeLessThan(3000);
  });
});

// Regression: the 16 KiB limit on the parent's answer was checked only while its head was unfinished
// at the end of a segment, so a head that ended in the segment that brought it passed whatever its
// size: a 200 with a 60,000-byte field and 1,000 `100 Continue` heads (25,000 bytes) before a 200,
// each in one write, opened the tunnel; the same bytes cut into two segments were refused.
describe("the 16 KiB limit on an http parent's answer holds however it is cut into segments", () => {
  const pad = (n: number): string => `200 Connection established\r\nX-Pad: ${'a'.repeat(n)}`;
  const cases: Array<[string, { answer: string; interim?: string[] }]> = [
    ['a 200 head of 20,000 bytes', { answer: pad(20_000) }],
    ['1,000 interim heads and a 200', { answer: '200 Connection established', interim: new Array<string>(1000).fill('100 Continue') }],
  ];
  it.each(cases)('%s in one write: 502 upstream-proxy, logged "response head too large"', async (_name, mode) => {
    parent.mode = { kind: 'relay', interimInOneWrite: true, ...mode };
    gw = await startTestGateway({ upstream: parent.url() });
    const answer = await connectThrough(gw);
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
    expect(jsonBody(answer)).toMatchObject({ reason: 'upstream-proxy' });
    const rec = await gw.waitForClosed((r) => r.protocol === 'connect');
    expect(rec).toMatchObject({ closeReason: 'upstream-proxy', bytesIn: 0, bytesOut: 0 });
    expect(gw.logs.some((l) => JSON.stringify(l).includes('response head too large'))).toBe(true);
  });

  it('a 200 head just under the limit in one write still opens the tunnel', async () => {
    // 16,384 bytes in all: the status line and the field's name, its value, and the head's end.
    const head = `HTTP/1.1 ${pad(0)}\r\n\r\n`.length;
    parent.mode = { kind: 'relay', answer: pad(16_384 - head) };
    gw = await startTestGateway({ upstream: parent.url() });
    const answer = await connectThrough(gw);
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer.endsWith('\r\n\r\nhello')).toBe(true);
    const rec = await gw.waitForClosed((r) => r.protocol === 'connect');
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 5, bytesOut: 0 });
  });
});
