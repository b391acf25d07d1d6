/**
 * Origin answers at the edges of HTTP/1.1, through both absolute-URI paths: the fast path (the
 * request head in one packet) and node:http (the same head split over two packets, which the fast
 * path hands over). A raw origin writes exactly the bytes each case needs. Both paths must relay
 * or refuse alike, and say why in the flow record.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedAnswer, type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody, rawConnect, readUntil } from './http-harness.ts';

/** `answer`, then the origin's FIN right behind it. */
function thenClose(answer: string): ScriptedAnswer {
  return (s) => s.end(answer, 'latin1');
}

/** What the origin answers per path. */
const ANSWERS: Record<string, ScriptedAnswer> = {
  // RFC 9110 §8.6: a 304 may announce the length of the representation it stands for.
  '/not-modified': 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 10\r\n\r\n',
  '/ok': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  // Smuggling shapes and bad bytes (RFC 9112 §6.3, §5.2): never relayed.
  '/two-lengths': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc',
  '/te-and-length': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
  '/obs-fold': 'HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 1\r\n\r\nf',
  '/not-http': 'SSH-2.0-OpenSSH_9.2\r\n\r\n',
  // A length past 2^53 − 1 (llhttp takes up to 2^64 − 1): undici reads it as a float, so the body
  // cannot be counted to its end; it reached the client as sent, then "ok", the connection kept.
  '/length-past-safe': 'HTTP/1.1 200 OK\r\nContent-Length: 9007199254740993\r\n\r\nok',
  '/length-uint64-max': 'HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nok',
  // Transfer codings besides chunked (RFC 9112 §6.1): the relay re-frames the body and drops the
  // field, so the client would get coded bytes it is never told of (it got "ok" / "okok" as is).
  '/gzip-chunked': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
  '/gzip-then-chunked-fields': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
  // Interim answers undici refuses (RFC 9110 §15.2.1, §15.2.2): the origin broke the protocol, it
  // did not reset (they were recorded upstream-reset).
  '/continue-unasked': 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  '/switching-unasked': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\nraw',
  '/chunked-gzip': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nokok',
  // A status below 100 is none (RFC 9110 §15), though llhttp reads any three digits: undici's own
  // assertion failed it, taken for an unreachable destination (502 `unreachable`, the record too).
  '/status-099': 'HTTP/1.1 099 Early\r\nContent-Length: 2\r\n\r\nok',
  '/status-000': 'HTTP/1.1 000 None\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  // …nor is one past 599 (a client SHOULD take it as a 5xx, RFC 9110 §15): it was relayed as sent.
  '/status-600': 'HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok',
  '/status-999': 'HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok',
  // Reason phrases no field may carry (a Latin-1 server's, a control byte): the status is relayed with
  // its standard phrase. node:http threw on them and the client waited for the idle timeout.
  '/latin1-reason': 'HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 2\r\n\r\nok',
  '/control-reason': 'HTTP/1.1 404 Not\x7fFound\r\nContent-Length: 2\r\n\r\nno',
  // A valid head whose body's framing breaks before its first byte: a chunk-size line ended by a
  // bare LF, a chunk size of 19 hex digits (past 64 bits). Nothing of it may be relayed as a 200.
  '/bad-chunk-line': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n',
  '/huge-chunk-size': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000000\r\nok\r\n0\r\n\r\n',
  // RFC 9110 §8.6: a server must not send Content-Length in a 204; the gateway does not relay it.
  '/no-content-length': 'HTTP/1.1 204 No Content\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n',
  '/no-content-zero': 'HTTP/1.1 204 No Content\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n',
  // …and bytes after a 204 are no body of it (RFC 9112 §6.3): never relayed.
  '/no-content-body': 'HTTP/1.1 204 No Content\r\nContent-Length: 2\r\nX-Kept: 1\r\n\r\nok',
  // A head, then the origin closes before any body byte: the answer can never be relayed.
  '/closed-before-body': thenClose('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n'),
  '/closed-before-chunk': thenClose('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'),
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

const PATHS = [
  ['fast path', false],
  ['node:http', true],
] as const;

/** Send a GET for `path` on `s`, whole or split over two packets (node:http then serves it). */
async function sendGet(s: Socket, path: string, split: boolean): Promise<void> {
  const head = `GET http://${o}${path} HTTP/1.1\r\nHost: ${o}\r\nIf-None-Match: "v1"\r\n\r\n`;
  if (!split) {
    s.write(head);
    return;
  }
  s.write(head.slice(0, 12));
  await new Promise((r) => setTimeout(r, 20));
  s.write(head.slice(12));
}

describe('origin answers at the edges of HTTP/1.1', () => {
  for (const [name, split] of PATHS) {
    it(`${name}: a 304 announcing a Content-Length is relayed without a body, and the connection serves the next request`, async () => {
      const s = await rawConnect(gw.httpPort);
      const before = gw.closed.length;
      await sendGet(s, '/not-modified', split);
      const got = (await readUntil(s, '\r\n\r\n')).toString('latin1');
      expect(got).toMatch(/^HTTP\/1\.1 304 /);
      expect(got).toMatch(/\r\ncontent-length: 10\r\n/i);
      expect(got).toMatch(/\r\netag: "v1"\r\n/i);
      expect(got.endsWith('\r\n\r\n')).toBe(true);
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 0, bytesOut: 0 });
      // Nothing was left in the connection to be read as the next response.
      await sendGet(s, '/ok', split);
      const next = (await readUntil(s, '\r\n\r\nok')).toString('latin1');
      expect(next).toMatch(/^HTTP\/1\.1 200 /);
      s.destroy();
    });

    it(`${name}: a reason phrase no field may carry is replaced by the standard one; status and body are relayed`, async () => {
      const s = await rawConnect(gw.httpPort);
      for (const [path, status, body] of [
        ['/latin1-reason', 200, 'ok'],
        ['/control-reason', 404, 'no'],
      ] as const) {
        const before = gw.closed.length;
        await sendGet(s, path, split);
        const got = (await readUntil(s, `\r\n\r\n${body}`, 5000)).toString('latin1');
        const statusLine = got.slice(0, got.indexOf('\r\n'));
        expect(statusLine, path).toMatch(new RegExp(`^HTTP/1\\.1 ${status} [\\t\\x20-\\x7e\\x80-\\xff]*$`));
        expect(statusLine, path).not.toContain('\x7f');
        const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
        expect(rec, path).toMatchObject({ closeReason: 'closed', bytesIn: 2 });
      }
      s.destroy();
    });

    it(`${name}: a 204 is relayed without Content-Length and without a body, and the connection serves the next request`, async () => {
      const s = await rawConnect(gw.httpPort);
      for (const path of ['/no-content-length', '/no-content-zero', '/no-content-body']) {
        const before = gw.closed.length;
        await sendGet(s, path, split);
        const got = (await readUntil(s, '\r\n\r\n')).toString('latin1');
        expect(got, path).toMatch(/^HTTP\/1\.1 204 /);
        expect(got, path).not.toMatch(/\r\ncontent-length:/i);
        expect(got, path).not.toMatch(/\r\ntransfer-encoding:/i);
        expect(got, path).toMatch(/\r\nx-kept: 1\r\n/i);
        expect(got.endsWith('\r\n\r\n'), path).toBe(true);
        const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
        expect(rec, path).toMatchObject({ closeReason: 'closed', bytesIn: 0, bytesOut: 0 });
      }
      // Nothing was left in the connection to be read as the next response.
      await sendGet(s, '/ok', split);
      const next = (await readUntil(s, '\r\n\r\nok')).toString('latin1');
      expect(next).toMatch(/^HTTP\/1\.1 200 /);
      s.destroy();
    });

    it(`${name}: an origin that closes after its head, before any body byte, gets 502 upstream-reset, and the connection goes on`, async () => {
      const s = await rawConnect(gw.httpPort);
      for (const path of ['/closed-before-body', '/closed-before-chunk']) {
        const before = gw.closed.length;
        await sendGet(s, path, split);
        const got = (await readUntil(s, '"}')).toString('latin1');
        expect(got, path).toMatch(/^HTTP\/1\.1 502 /);
        expect(jsonBody(got)['reason'], path).toBe('upstream-reset');
        const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
        expect(rec, path).toMatchObject({ closeReason: 'upstream-reset', bytesIn: 0 });
      }
      s.destroy();
    });

    it(`${name}: malformed origin answers get 502 upstream-bad-response, and the connection goes on`, async () => {
      const s = await rawConnect(gw.httpPort);
      for (const path of ['/bad-chunk-line', '/huge-chunk-size', '/two-lengths', '/te-and-length', '/obs-fold', '/not-http', '/length-past-safe', '/length-uint64-max', '/gzip-chunked', '/gzip-then-chunked-fields', '/chunked-gzip', '/continue-unasked', '/switching-unasked', '/status-099', '/status-000', '/status-600', '/status-999']) {
        const before = gw.closed.length;
        await sendGet(s, path, split);
        // The refusal body is JSON ending in the flow id.
        const got = (await readUntil(s, '"}')).toString('latin1');
        expect(got, path).toMatch(/^HTTP\/1\.1 502 /);
        expect(jsonBody(got)['reason'], path).toBe('upstream-bad-response');
        const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before && f.closeReason === 'upstream-bad-response');
        expect(rec.bytesIn, path).toBe(0);
      }
      s.destroy();
    });
  }
});
