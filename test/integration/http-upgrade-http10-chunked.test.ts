/**
 * An HTTP/1.0 request carrying `Upgrade` goes to the origin as a plain HTTP/1.1 request
 * (http-upgrade.ts), so the origin may answer it chunked. An HTTP/1.0 client cannot read chunked
 * (RFC 9112 §6.1: no Transfer-Encoding in an answer to HTTP/1.0): it gets the chunk data alone, the
 * end told by the close, as the absolute-URI paths give it; a coding it could not undo is 502; a body
 * cut short resets it rather than ending as if whole. Before, the origin's chunked answer was relayed
 * byte for byte: `Transfer-Encoding: chunked` and its size lines reached the 1.0 client as content.
 * Real gateway, raw client, raw origin writing exactly the bytes each case needs.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedAnswer, type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody, rawConnect, run } from './http-harness.ts';

const CHUNKED_HEAD = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n';
const CHUNKED_BODY = '5;name=v\r\nhello\r\n3\r\nabc\r\n0\r\nX-Sum: 8\r\n\r\n';

/** What the origin answers per path; it keeps its connection open after it unless a piece is null (then it closes). */
const ANSWERS: Record<string, ScriptedAnswer> = {
  '/chunked': `${CHUNKED_HEAD}${CHUNKED_BODY}EXTRA`,
  // The same body in pieces, split inside the size line, the data, its CRLF and the trailer (20 ms apart).
  '/chunked-pieces': [CHUNKED_HEAD, '5;na', 'me=v\r\nhel', 'lo\r', '\n3\r\nab', 'c\r\n0\r\nX-S', 'um: 8\r\n', '\r', '\nEXTRA'],
  '/gzip-chunked': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
  // The origin closes inside the second chunk's data: 5 + 2 of its 8 bytes came.
  '/cut-short': [`${CHUNKED_HEAD}5\r\nhello\r\n8\r\nab`, null],
  // Framing the relay cannot follow (a size that is not hex) after the first chunk.
  '/bad-size': `${CHUNKED_HEAD}5\r\nhello\r\nzz\r\nEVIL\r\n0\r\n\r\n`,
};

let gw: TestGateway;
let origin: ScriptedOrigin;
let o: string;

beforeAll(async () => {
  origin = await scriptedOrigin(ANSWERS);
  o = origin.authority;
  // A wide idle timeout: a relay that waited for the origin to close would still be open at the end.
  gw = await startTestGateway({ limits: { idleTimeoutMs: 30_000 } });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/**
 * Send `GET path` with `Connection: Upgrade` and `Upgrade: websocket` in `version`, and read
 * everything until the gateway closes (20 s at most).
 */
async function upgradeIn(version: string, path: string): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  // A reset rejects the wait: no answer here is to end in one.
  const closed = once(s, 'close');
  s.write(`GET http://${o}${path} ${version}\r\nHost: ${o}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
  const timer = setTimeout(() => s.destroy(new Error('no close within 20 s')), 20_000);
  try {
    await closed;
  } finally {
    clearTimeout(timer);
  }
  return Buffer.concat(chunks).toString('latin1');
}

/**
 * The same request from curl in HTTP/1.0 (`-0`) for an answer the gateway is to cut: curl's exit
 * code (56: the connection was reset while it read), what it got, and the flow's record. curl, not a
 * node socket: libuv may report a reset right behind bytes already read as an end.
 */
async function cutIn(path: string): Promise<{ code: number | null; body: string; reason: string | null; bytesIn: number }> {
  const before = gw.closed.length;
  const got = await run('curl', ['-s', '-0', '-x', `127.0.0.1:${gw.httpPort}`, '-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket', `http://${o}${path}`]);
  const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
  return { code: got.code, body: got.stdout.toString('latin1'), reason: rec.closeReason, bytesIn: rec.bytesIn };
}

function headOf(got: string): string {
  return got.slice(0, got.indexOf('\r\n\r\n') + 4);
}

describe('a chunked answer to an HTTP/1.0 request carrying Upgrade', () => {
  for (const path of ['/chunked', '/chunked-pieces']) {
    it(`${path}: reaches the client without Transfer-Encoding, its data alone, ended by the close; bytesIn the data`, async () => {
      const before = gw.closed.length;
      const got = await upgradeIn('HTTP/1.0', path);
      expect(got).toMatch(/^HTTP\/1\.1 200 /);
      const head = headOf(got);
      expect(head).not.toMatch(/\r\ntransfer-encoding:/i);
      expect(head).not.toMatch(/\r\ntrailer:/i);
      expect(head).toMatch(/\r\nconnection: close\r\n/i);
      expect(got.slice(head.length)).toBe('helloabc');
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 8, bytesOut: 0 });
    });
  }

  it('in another coding than chunked alone is 502 upstream-bad-response, nothing of it relayed', async () => {
    const before = gw.closed.length;
    const got = await upgradeIn('HTTP/1.0', '/gzip-chunked');
    expect(got).toMatch(/^HTTP\/1\.1 502 /);
    expect(jsonBody(got).reason).toBe('upstream-bad-response');
    expect(got).not.toContain('hello');
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0 });
  });

  it('cut short by the origin resets the client, which would take a clean close for the whole body', async () => {
    expect(await cutIn('/cut-short')).toEqual({ code: 56, body: 'helloab', reason: 'upstream-reset', bytesIn: 7 });
  });

  it('whose framing breaks resets the client after the data before it: upstream-bad-response', async () => {
    expect(await cutIn('/bad-size')).toEqual({ code: 56, body: 'hello', reason: 'upstream-bad-response', bytesIn: 5 });
  });

  it('to an HTTP/1.1 Upgrade is still relayed with its framing (a declined upgrade)', async () => {
    const before = gw.closed.length;
    const got = await upgradeIn('HTTP/1.1', '/chunked');
    expect(headOf(got)).toMatch(/\r\ntransfer-encoding: chunked\r\n/i);
    expect(got.endsWith(`\r\n\r\n${CHUNKED_BODY}`)).toBe(true);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: CHUNKED_BODY.length });
  });
});
