/**
 * An origin's HTTP/1.0 answer carrying Transfer-Encoding has faulty framing (RFC 9112 §6.1: treat it
 * so, even with a Content-Length, and close the connection), on both absolute-URI paths: 502
 * upstream-bad-response, nothing of it relayed, and its origin connection is not used again. Before,
 * undici read it as chunked and, with `Connection: keep-alive`, pooled that connection for the next
 * request. An HTTP/1.1 chunked answer stays relayed on a pooled connection. Real gateway, raw client,
 * raw origin that says which of its connections answered (`/whoami`: the gateway's source port).
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody, rawConnect, readUntil } from './http-harness.ts';

const ANSWERS = {
  '/whoami': (s: Socket) => {
    const port = String(s.remotePort);
    s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${port.length + 1}\r\n\r\n${port}.`, 'latin1');
  },
  '/te-10': 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
  '/te-10-gzip': 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
  '/te-11': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
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

/** GET `path` on `s`, whole or split over two packets (node:http then serves it); the answer up to `marker`. */
async function get(s: Socket, path: string, split: boolean, marker: string): Promise<string> {
  const head = `GET http://${o}${path} HTTP/1.1\r\nHost: ${o}\r\n\r\n`;
  const answer = readUntil(s, marker);
  if (split) {
    s.write(head.slice(0, 12));
    await new Promise((r) => setTimeout(r, 20));
    s.write(head.slice(12));
  } else s.write(head);
  return (await answer).toString('latin1');
}

/** The origin connection's port /whoami names in its answer. */
async function whoami(s: Socket, split: boolean): Promise<string> {
  const got = await get(s, '/whoami', split, '.');
  return got.slice(got.indexOf('\r\n\r\n') + 4, -1);
}

describe("an origin's HTTP/1.0 answer with Transfer-Encoding", () => {
  for (const [name, split] of [
    ['fast path', false],
    ['node:http', true],
  ] as const) {
    it(`${name}: 502 upstream-bad-response, nothing relayed, its origin connection not used again`, async () => {
      const s = await rawConnect(gw.httpPort);
      for (const path of ['/te-10', '/te-10-gzip']) {
        const first = await whoami(s, split);
        const before = gw.closed.length;
        const got = await get(s, path, split, '"}');
        expect(got, path).toMatch(/^HTTP\/1\.1 502 /);
        expect(jsonBody(got)['reason'], path).toBe('upstream-bad-response');
        const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
        expect(rec, path).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0 });
        expect(gw.logs.some((l) => l['flowId'] === rec.id && String(l['err']).includes('transfer-encoding-in-http/1.0')), path).toBe(true);
        // The next request to that origin goes on another connection; the client's goes on.
        expect(await whoami(s, split), path).not.toBe(first);
      }
      s.destroy();
    });

    it(`${name}: an HTTP/1.1 chunked answer is relayed, its connection pooled for the next request`, async () => {
      const s = await rawConnect(gw.httpPort);
      const first = await whoami(s, split);
      const before = gw.closed.length;
      const got = await get(s, '/te-11', split, '0\r\n\r\n');
      expect(got).toMatch(/^HTTP\/1\.1 200 /);
      expect(got.endsWith('\r\n\r\n2\r\nok\r\n0\r\n\r\n')).toBe(true);
      expect(await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before)).toMatchObject({ closeReason: 'closed', bytesIn: 2 });
      expect(await whoami(s, split)).toBe(first);
      s.destroy();
    });
  }
});
