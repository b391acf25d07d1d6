/**
 * Our `Via` on an absolute-URI answer names the version the origin's status line said (RFC 9110
 * §7.6.3, the received-protocol), as the Upgrade path's does: `1.0 egressgate-…` for an HTTP/1.0
 * origin's answer (and a 1xx before it), `1.1 …` for an HTTP/1.1 one, read per response from
 * undici's parser (http-origin-reads.ts isReceivedInHttp10). Regression: every absolute-URI answer
 * said 1.1, on both paths. Real gateway, raw client, raw origin.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { rawConnect, readUntil } from './http-harness.ts';

const ANSWERS = {
  // Kept alive, so the HTTP/1.1 answer after it may come on the same origin connection.
  '/http10': 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 9\r\n\r\nanswer-10',
  '/http11': 'HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nanswer-11',
  // (Without keep-alive on the 103 the 200 behind it is relayed too: http-origin-interim-last-message.test.ts.)
  '/http10-hints': 'HTTP/1.0 103 Early Hints\r\nConnection: keep-alive\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 9\r\n\r\nanswer-hh',
  // Close-delimited, as most HTTP/1.0 servers answer.
  '/http10-close': (s: Socket) => s.end('HTTP/1.0 200 OK\r\n\r\nanswer-cl', 'latin1'),
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

/** The Via fields of every head in `got` (1xx and final), in order. */
function vias(got: string): string[] {
  return [...got.matchAll(/\r\nvia: ([^\r]*)/gi)].map((m) => m[1] as string);
}

describe('Via on an absolute-URI answer', () => {
  for (const [name, split] of [
    ['fast path', false],
    ['node:http', true],
  ] as const) {
    it(`${name}: names the version each answer was received in`, async () => {
      // A Content-Length on the request sends it to node:http (http-fast-head.ts).
      const extra = split ? 'content-length: 0\r\n' : '';
      const s = await rawConnect(gw.httpPort);
      try {
        for (const [path, version] of [
          ['/http10', '1.0'],
          ['/http11', '1.1'],
          ['/http10', '1.0'],
          ['/http10-close', '1.0'],
          ['/http11', '1.1'],
        ] as const) {
          s.write(`GET http://${o}${path} HTTP/1.1\r\nhost: ${o}\r\n${extra}\r\n`);
          const got = (await readUntil(s, path === '/http11' ? 'answer-11' : path === '/http10' ? 'answer-10' : 'answer-cl')).toString('latin1');
          expect(got, path).toMatch(/^HTTP\/1\.1 200 /);
          expect(vias(got), path).toEqual([expect.stringMatching(new RegExp(`^${version.replace('.', '\\.')} egressgate-[0-9a-f]{12}$`))]);
        }
        // A 1xx from an HTTP/1.0 origin says 1.0 too, as the final answer behind it.
        s.write(`GET http://${o}/http10-hints HTTP/1.1\r\nhost: ${o}\r\n${extra}\r\n`);
        const got = (await readUntil(s, 'answer-hh')).toString('latin1');
        expect(got).toMatch(/^HTTP\/1\.1 103 /);
        const found = vias(got);
        expect(found).toHaveLength(2);
        for (const v of found) expect(v).toMatch(/^1\.0 egressgate-[0-9a-f]{12}$/);
      } finally {
        s.destroy();
      }
    });
  }
});
