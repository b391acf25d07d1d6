/**
 * Signed identity tokens on a keep-alive connection, through the real HTTP listener (fast path and
 * node:http): the identity cached for the connection lives no longer than the token it came from.
 * Regression: the cache key was the token's text, not its expiry, so a token minted with
 * exp = now + 4 s still got 200 eleven seconds past exp on the connection it was first used on,
 * while a new connection got 407. The gateway's clock is a test seam: "later" is a step of it.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signIdentityToken } from '../../gateway/identity/signed-header.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Origin, rawConnect, readUntil, startOrigin } from './http-harness.ts';

const SECRET = 'expiry-secret-0123456789';

describe('signed token expiry on a keep-alive connection', () => {
  let gw: TestGateway;
  let origin: Origin;
  let skewMs = 0;
  const now = (): number => Date.now() + skewMs;

  beforeAll(async () => {
    origin = await startOrigin();
    gw = await startTestGateway(
      {
        identity: { requireAuth: true, headers: { trustedSources: [], user: 'x-egress-user', host: 'x-egress-host', signed: { header: 'x-egress-token', secret: SECRET, maxAgeSec: 60 } } },
      },
      { now },
    );
  });

  afterAll(async () => {
    await gw?.stop();
    await origin?.close();
  });

  /** One request on `sock`; resolves with the status code of its answer, once all of it (head and body) has arrived. */
  async function ask(sock: Socket, token: string, path: string, extra = ''): Promise<number> {
    sock.write(`GET http://127.0.0.1:${origin.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nX-Egress-Token: ${token}\r\n${extra}\r\n`);
    let got = (await readUntil(sock, '\r\n\r\n')).toString('latin1');
    const end = got.indexOf('\r\n\r\n') + 4;
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(got.slice(0, end))?.[1] ?? 0);
    // Bounded: each read brings at least one byte, and the answer is at most `length` bytes long.
    for (let i = 0; i <= length && got.length - end < length; i++) got += (await readUntil(sock, '')).toString('latin1');
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? 0);
  }

  for (const [label, extra] of [
    ['fast-path', ''],
    // A Content-Length field (even 0) keeps the request off the fast path: node:http serves it.
    ['node:http', 'Content-Length: 0\r\nX-Other: 1\r\n'],
  ] as const) {
    it(`${label}: a token past its exp is refused 407 on the connection it was accepted on`, async () => {
      skewMs = 0;
      const mintedAt = now();
      const exp = Math.floor(mintedAt / 1000) + 4;
      const token = signIdentityToken({ user: 'sidecar-user', exp }, SECRET);
      // The gateway's clock at `mintedAt + ms`, however long the requests before took (a loaded machine
      // took over a second for the first one, and the second then came past exp).
      const at = (ms: number): void => {
        skewMs = mintedAt + ms - Date.now();
      };
      const sock = await rawConnect(gw.httpPort);
      sock.on('error', () => undefined);
      try {
        expect(await ask(sock, token, `/before-${label}`, extra)).toBe(200);
        at(2_000); // still inside exp (3 to 4 s ahead when minted): the cached identity is reused
        expect(await ask(sock, token, `/inside-${label}`, extra)).toBe(200);
        at(11_000); // 7 s past exp
        expect(await ask(sock, token, `/after-${label}`, extra)).toBe(407);
        expect(origin.seen.some((s) => s.url === `/after-${label}`)).toBe(false);
        // The two admitted requests were the token's user's, on this one connection.
        await until('two records of sidecar-user on this connection', () => gw.closed.filter((r) => r.client.port === sock.localPort && r.identity.user === 'sidecar-user').length >= 2);
      } finally {
        sock.destroy();
        skewMs = 0;
      }
    });

    // An empty token field is a malformed token (headerValue: null), not the connection's earlier
    // one: the cache is keyed by the token's text, so it must not be reused for it.
    it(`${label}: an empty token after a valid one on the same connection is refused 407, not the cached identity`, async () => {
      const exp = Math.floor(now() / 1000) + 60;
      const token = signIdentityToken({ user: 'sidecar-user', exp }, SECRET);
      const sock = await rawConnect(gw.httpPort);
      sock.on('error', () => undefined);
      try {
        expect(await ask(sock, token, `/valid-${label}`, extra)).toBe(200);
        for (const empty of ['', '   ']) {
          expect(await ask(sock, empty, `/empty-${label}-${empty.length}`, extra), JSON.stringify(empty)).toBe(407);
          expect(origin.seen.some((s) => s.url === `/empty-${label}-${empty.length}`)).toBe(false);
        }
        expect(await ask(sock, token, `/valid-again-${label}`, extra)).toBe(200);
      } finally {
        sock.destroy();
      }
    });
  }
});
