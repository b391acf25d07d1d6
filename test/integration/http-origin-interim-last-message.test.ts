/**
 * An origin's 1xx that says its connection ends with it (`HTTP/1.0 103` without `Connection:
 * keep-alive`, or `Connection: close` on an HTTP/1.1 one) is still interim: the final answer behind
 * it is relayed, on both absolute-URI paths, as the Upgrade path already did. Regression: llhttp took
 * that 1xx for the connection's last message and refused the final answer ("Data after
 * `Connection: close`"), so the client got the 103 and then 502 upstream-bad-response. Real gateway,
 * raw client, raw origin.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { rawConnect } from './http-harness.ts';

const HINTS_10 = 'HTTP/1.0 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n';
const HINTS_11_CLOSE = 'HTTP/1.1 103 Early Hints\r\nConnection: close\r\nLink: </s.css>; rel=preload\r\n\r\n';

/** Per path, the origin's answer and the body that ends it. */
const CASES: Record<string, { answer: string | string[]; body: string }> = {
  '/10-then-10': { answer: `${HINTS_10}HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nbody-aa`, body: 'body-aa' },
  '/10-then-11': { answer: `${HINTS_10}HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nbody-bb`, body: 'body-bb' },
  '/10-apart': { answer: [HINTS_10, 'HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nbody-cc'], body: 'body-cc' },
  '/11-close-then-11': { answer: `${HINTS_11_CLOSE}HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nbody-dd`, body: 'body-dd' },
};

let gw: TestGateway;
let origin: ScriptedOrigin;
let o: string;

beforeAll(async () => {
  origin = await scriptedOrigin(Object.fromEntries(Object.entries(CASES).map(([path, c]) => [path, c.answer])));
  o = origin.authority;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** What `s` receives until `body` or a 502's reason has come (10 s at most). */
function readAnswer(s: Socket, body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const timer = setTimeout(() => done(new Error(`no answer; got ${JSON.stringify(got)}`)), 10_000);
    const onData = (c: Buffer): void => {
      got += c.toString('latin1');
      if (got.includes(body) || got.includes('"reason":"')) done(null);
    };
    const onClose = (): void => done(new Error(`closed; got ${JSON.stringify(got)}`));
    function done(err: Error | null): void {
      clearTimeout(timer);
      s.removeListener('data', onData);
      s.removeListener('close', onClose);
      if (err === null) resolve(got);
      else reject(err);
    }
    s.on('data', onData);
    s.on('close', onClose);
  });
}

describe('a 1xx that says the origin connection ends with it', () => {
  for (const [name, extra] of [
    ['fast path', ''],
    // A Content-Length on the request sends it to node:http (http-fast-head.ts).
    ['node:http', 'content-length: 0\r\n'],
  ] as const) {
    it(`${name}: the 103 and then the final answer, on one client connection`, async () => {
      const s = await rawConnect(gw.httpPort);
      s.on('error', () => undefined);
      try {
        for (const [path, c] of Object.entries(CASES)) {
          const before = gw.closed.length;
          s.write(`GET http://${o}${path} HTTP/1.1\r\nhost: ${o}\r\n${extra}\r\n`);
          const got = await readAnswer(s, c.body);
          const heads = got.split('\r\n\r\n').filter((h) => h.startsWith('HTTP/')).map((h) => h.slice(0, 12));
          expect(heads, path).toEqual(['HTTP/1.1 103', 'HTTP/1.1 200']);
          expect(got, path).toContain('\r\nLink: </s.css>; rel=preload\r\n');
          expect(got.endsWith(`\r\n\r\n${c.body}`), path).toBe(true);
          const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before && f.destination.port === origin.port);
          expect(rec, path).toMatchObject({ closeReason: 'closed', bytesIn: 7 });
        }
      } finally {
        s.destroy();
      }
    });
  }

  it('an HTTP/1.0 client gets the final answer alone', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    try {
      s.write(`GET http://${o}/10-then-10 HTTP/1.0\r\nhost: ${o}\r\n\r\n`);
      const got = await readAnswer(s, 'body-aa');
      expect(got).toMatch(/^HTTP\/1\.1 200 /);
      expect(got).not.toContain(' 103 ');
    } finally {
      s.destroy();
    }
  });
});
