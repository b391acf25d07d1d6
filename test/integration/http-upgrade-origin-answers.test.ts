/**
 * Odd answers to an `Upgrade` from a raw origin that writes exactly the bytes each case needs. A
 * declined Upgrade's answer is relayed with its own framing (http-upgrade.ts), so what the gateway
 * lets through reaches the client as the origin wrote it: framing the absolute-URI paths refuse must
 * be refused here too.
 */
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type ScriptedAnswer, type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody, rawConnect } from './http-harness.ts';

const CHUNKED_HEAD = 'HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n';
const CHUNKED_BODY = '5;name=v\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n';
const HINTS = 'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n';

/** What the origin answers per path; it keeps its connection open after it, as an HTTP/1.1 server does. */
const ANSWERS: Record<string, ScriptedAnswer> = {
  '/one-length': 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno',
  '/dated': 'HTTP/1.1 403 Forbidden\r\nDate: Sun, 06 Dec 2026 04:40:00 GMT\r\nContent-Length: 2\r\n\r\nno',
  // Ambiguous framing (RFC 9112 §6.3): each reader would find the body's end where its own rule says.
  '/length-and-chunked': 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nEVIL!\r\n0\r\n\r\n',
  '/two-lengths': 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nContent-Length: 10\r\n\r\nnoEVILEVIL',
  '/same-length-twice': 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nno',
  '/length-not-digits': 'HTTP/1.1 403 Forbidden\r\nContent-Length: +2\r\n\r\nno',
  '/length-list': 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2, 2\r\n\r\nno',
  // A status past 599 is none (RFC 9110 §15), as one below 100: it was relayed as sent.
  '/status-600': 'HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nno',
  '/status-999': 'HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nno',
  // A control byte in a field value.
  '/control-in-value': 'HTTP/1.1 403 Forbidden\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nno',
  // Chunked, with an extension and a trailer; then bytes that are not the answer's (never relayed).
  '/chunked': `${CHUNKED_HEAD}${CHUNKED_BODY}EXTRA`,
  // The same body in pieces, split inside the size line, the data, its CRLF and the trailer (20 ms apart).
  '/chunked-pieces': [CHUNKED_HEAD, '5;na', 'me=v\r\nhel', 'lo\r', '\n0\r\nX-Tr', 'ailer: t\r\n', '\r', '\nEXTRA'],
  // Interim answers before the final one (RFC 9110 §15.2), then the 101 and the first server frame.
  '/hints-then-101': `${HINTS}HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHELLO`,
  '/many-hints-then-403': `${HINTS.repeat(300)}HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno`,
  // A 100 Continue nobody asked for (the gateway sends no Expect), as undici takes it on the absolute-URI paths.
  '/continue-then-101': 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHELLO',
  // Bare LF line ends (RFC 9112 §2.2: a recipient may refuse them, and llhttp does on the absolute-URI paths).
  '/bare-lf-101': 'HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\nHELLO',
  '/bare-lf-403': 'HTTP/1.1 403 Forbidden\nContent-Length: 2\n\nno',
  '/bare-lf-last-line': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\n\nHELLO',
  '/bare-lf-in-pieces': ['HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket', '\nConnection: Upgrade\n\nHELLO'],
  // CRLFs cut between writes are whole line ends: a valid answer.
  '/crlf-in-pieces': ['HTTP/1.1 403 Forbidden\r', '\nContent-Length: 2\r', '\n\r', '\nno'],
  // A 204 says no Content-Length (RFC 9110 §8.6); the bytes after its head are no body of it.
  '/204-length-2': 'HTTP/1.1 204 No Content\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok',
  '/204-length-0': 'HTTP/1.1 204 No Content\r\nX-A: b\r\ncontent-length: 0\r\n\r\n',
  '/304-length': 'HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n',
  // A 101 must name the protocol it switches to, one the request offered (RFC 9110 §7.8).
  '/101-no-upgrade': 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\nHELLO',
  '/101-empty-upgrade': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: , \r\nConnection: Upgrade\r\n\r\nHELLO',
  '/101-h2c': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nHELLO',
  '/101-versioned': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket/13\r\nConnection: Upgrade\r\n\r\nHELLO',
  '/101-offered-and-not': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nHELLO',
  '/101-WebSocket': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\nHELLO',
  '/101-irc': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: irc/6.9\r\nConnection: Upgrade\r\n\r\nHELLO',
  // Connection options of the origin's hop (RFC 9110 §7.6.1): a field it names, and `close`/`keep-alive` on a second line.
  '/101-connection-options': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nConnection: keep-alive, close\r\nX-End: 2\r\n\r\nHELLO',
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
 * Send an Upgrade for `path` and read everything until the gateway closes the connection (20 s at
 * most: a relay waiting for the origin to close would wait the gateway's 30 s idle timeout); `after(s, read)` runs first, with what has come so far, and may end the client's side.
 * `opts.offer` is the request's Upgrade value; `opts.early`, bytes sent right behind its head.
 */
async function upgrade(path: string, after?: (s: Socket, read: () => string) => Promise<void>, opts: { offer?: string; early?: string } = {}): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('error', () => undefined);
  const closed = once(s, 'close');
  s.write(`GET http://${o}${path} HTTP/1.1\r\nHost: ${o}\r\nConnection: Upgrade\r\nUpgrade: ${opts.offer ?? 'websocket'}\r\n\r\n${opts.early ?? ''}`);
  await after?.(s, () => Buffer.concat(chunks).toString('latin1'));
  const timer = setTimeout(() => s.destroy(new Error('no close within 20 s')), 20_000);
  try {
    await closed;
  } finally {
    clearTimeout(timer);
  }
  return Buffer.concat(chunks).toString('latin1');
}

describe("a declined Upgrade's answer", () => {
  it('with one Content-Length is relayed as sent, and the flow closes', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/one-length');
    expect(got).toMatch(/^HTTP\/1\.1 403 /);
    expect(got.endsWith('\r\n\r\nno')).toBe(true);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 2, bytesOut: 0 });
  });

  // Regression: an answer without Date went on without one (RFC 9110 §6.6.1), where both absolute-URI
  // paths add it; one with the origin's Date keeps it, and only it.
  it('gets a Date when the origin sent none, and keeps the origin\'s', async () => {
    const added = await upgrade('/one-length');
    const head = added.slice(0, added.indexOf('\r\n\r\n'));
    const dates = [...head.matchAll(/\r\ndate: ([^\r]*)/gi)].map((m) => m[1] as string);
    expect(dates).toHaveLength(1);
    expect(new Date(dates[0] as string).toUTCString()).toBe(dates[0]);
    const kept = await upgrade('/dated');
    const keptHead = kept.slice(0, kept.indexOf('\r\n\r\n'));
    expect([...keptHead.matchAll(/\r\ndate: ([^\r]*)/gi)].map((m) => m[1])).toEqual(['Sun, 06 Dec 2026 04:40:00 GMT']);
  });

  // Regression: a chunked answer was relayed until the origin closed its connection, so an origin that
  // keeps it (as HTTP/1.1 servers do) left the client waiting for limits.idleTimeoutMs (3,035 ms at
  // 3,000; 5 minutes by default), the record idle-timeout, as a framed answer with a length did before.
  for (const path of ['/chunked', '/chunked-pieces']) {
    it(`${path}: chunked, kept alive: relayed to its last chunk and trailer, then closed`, async () => {
      const before = gw.closed.length;
      const got = await upgrade(path);
      expect(got).toMatch(/^HTTP\/1\.1 400 /);
      expect(got).toMatch(/\r\ntransfer-encoding: chunked\r\n/i);
      expect(got.endsWith(`\r\n\r\n${CHUNKED_BODY}`)).toBe(true);
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: CHUNKED_BODY.length, bytesOut: 0 });
    });
  }

  // Regression: these were relayed with both fields (or the bad value) as sent, the relay reading the
  // body until the origin closed (the record ended idle-timeout), where the absolute-URI paths answer 502.
  for (const path of ['/length-and-chunked', '/two-lengths', '/same-length-twice', '/length-not-digits', '/length-list', '/control-in-value', '/status-600', '/status-999']) {
    it(`${path}: 502 upstream-bad-response, nothing of it relayed`, async () => {
      const before = gw.closed.length;
      const got = await upgrade(path);
      expect(got, path).toMatch(/^HTTP\/1\.1 502 /);
      expect(jsonBody(got)['reason'], path).toBe('upstream-bad-response');
      expect(got, path).not.toMatch(/^HTTP\/1\.1 403 /m);
      expect(got, path).not.toContain('EVIL');
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec, path).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0, bytesOut: 0 });
    });
  }
});

// Regression: the first 1xx was taken for the final answer: relayed with `connection: close` as a
// declined Upgrade's, the 101 behind it relayed as its body, no tunnel (what the client sent was
// dropped), the record idle-timeout with the heads counted in bytesIn (82).
describe('interim answers before the final one', () => {
  it('103 and 102 then 101: the 103 is relayed, the 102 too, then the 101 opens the tunnel; heads are not counted', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/hints-then-101', async (s, read) => {
      await until('the first server frame', () => read().endsWith('\r\n\r\nHELLO'));
      s.end('ping');
    });
    const heads = got.split('\r\n\r\n');
    expect(heads[0]).toMatch(/^HTTP\/1\.1 103 /);
    expect(heads[0]).toContain('\r\nLink: </style.css>; rel=preload');
    expect(heads[0]).not.toMatch(/connection: close/i);
    expect(heads[1]).toMatch(/^HTTP\/1\.1 102 /);
    expect(heads[2]).toMatch(/^HTTP\/1\.1 101 /);
    expect(heads[3]).toBe('HELLO');
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ bytesIn: 5, bytesOut: 4 });
  });

  it('300 103s then 403: the first 10 relayed, then the 403 and the close', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/many-hints-then-403');
    expect(got.match(/HTTP\/1\.1 103 /g)?.length).toBe(10);
    expect(got).toMatch(/\r\n\r\nHTTP\/1\.1 403 Forbidden\r\n[\s\S]*\r\n\r\nno$/);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 2 });
  });

  it('a 100 nobody asked for: 502 upstream-bad-response, no tunnel', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/continue-then-101');
    expect(got).toMatch(/^HTTP\/1\.1 502 /);
    expect(got).not.toContain('HELLO');
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0 });
  });
});

// Regression: a head with bare LF line ends was waited on for its CRLFCRLF: with idleTimeoutMs 3,000
// the client got 504 connect-timeout at 3,087 ms (a 101) and 3,003 ms (a 403), where the absolute-URI
// paths answer the same head 502 upstream-bad-response at once. Now 502 as soon as the bare LF is seen.
describe('an answer head with bare LF line ends', () => {
  for (const path of ['/bare-lf-101', '/bare-lf-403', '/bare-lf-last-line', '/bare-lf-in-pieces']) {
    it(`${path}: 502 upstream-bad-response at once, nothing of it relayed, no tunnel`, async () => {
      const before = gw.closed.length;
      const got = await upgrade(path, undefined, { early: 'early' });
      expect(got, path).toMatch(/^HTTP\/1\.1 502 /);
      expect(jsonBody(got)['reason'], path).toBe('upstream-bad-response');
      expect(got, path).not.toMatch(/HELLO|Forbidden/);
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec, path).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0, bytesOut: 0 });
    });
  }

  it('CRLFs cut between the origin\'s writes are line ends: the 403 is relayed', async () => {
    const before = gw.closed.length;
    const got = await upgrade('/crlf-in-pieces');
    expect(got).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*\r\n\r\nno$/);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 2 });
  });
});

// Regression: a declined Upgrade's 204 reached the client with the origin's `Content-Length: 2` (or
// 0), where both absolute-URI paths drop it (RFC 9110 §8.6). A 304 keeps its own (RFC 9110 §15.4.5).
describe("a declined Upgrade's 204", () => {
  for (const path of ['/204-length-2', '/204-length-0']) {
    it(`${path}: relayed without Content-Length, its other fields kept, nothing after its head`, async () => {
      const before = gw.closed.length;
      const got = await upgrade(path);
      expect(got, path).toMatch(/^HTTP\/1\.1 204 /);
      expect(got, path).not.toMatch(/content-length/i);
      expect(got, path).toContain('\r\nX-A: b\r\n');
      expect(got.endsWith('\r\n\r\n'), path).toBe(true);
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec, path).toMatchObject({ closeReason: 'closed', bytesIn: 0, bytesOut: 0 });
    });
  }

  it('a 304 keeps its Content-Length', async () => {
    const got = await upgrade('/304-length');
    expect(got).toMatch(/^HTTP\/1\.1 304 [\s\S]*\r\nContent-Length: 2\r\n/);
  });
});

// Regression: a 101 without Upgrade, or naming a protocol the request did not offer, opened the
// tunnel: the client got the 101 and the origin's `HELLO`, its own `early` and `ping` went to the
// origin, recorded closed with bytesIn 5, bytesOut 9. RFC 9110 §7.8: a 101 MUST name the protocol(s)
// it switches to, from those the client listed. Now 502 upstream-bad-response, nothing tunnelled.
describe('a 101 that does not switch to an offered protocol', () => {
  const refused: Array<[string, string]> = [
    ['/101-no-upgrade', 'websocket'],
    ['/101-empty-upgrade', 'websocket'],
    ['/101-h2c', 'websocket'],
    ['/101-versioned', 'websocket'],
    ['/101-offered-and-not', 'websocket'],
    ['/101-irc', 'IRC/7, websocket'],
  ];
  for (const [path, offer] of refused) {
    it(`${path} to \`Upgrade: ${offer}\`: 502 upstream-bad-response, nothing tunnelled`, async () => {
      const before = gw.closed.length;
      const got = await upgrade(path, undefined, { offer, early: 'early' });
      expect(got, path).toMatch(/^HTTP\/1\.1 502 /);
      expect(jsonBody(got)['reason'], path).toBe('upstream-bad-response');
      expect(got, path).not.toMatch(/HELLO|^HTTP\/1\.1 101 /m);
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec, path).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0, bytesOut: 0 });
    });
  }

  const accepted: Array<[string, string]> = [
    ['/101-WebSocket', 'websocket'],
    ['/101-irc', 'h2c, IRC/6.9'],
  ];
  for (const [path, offer] of accepted) {
    it(`${path} to \`Upgrade: ${offer}\` (case aside, the same token): the tunnel opens`, async () => {
      const before = gw.closed.length;
      const got = await upgrade(
        path,
        async (s, read) => {
          await until('the first server frame', () => read().endsWith('\r\n\r\nHELLO'));
          s.end('ping');
        },
        { offer, early: 'early' },
      );
      expect(got, path).toMatch(/^HTTP\/1\.1 101 /);
      const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
      expect(rec, path).toMatchObject({ bytesIn: 5, bytesOut: 9 });
    });
  }
});

// Regression: a 101's Connection fields were relayed as the origin sent them, though an intermediary
// must remove a received Connection field or replace it with its own options (RFC 9110 §7.6.1): the
// client got `Connection: Upgrade, X-Hop` (X-Hop itself removed) and `Connection: keep-alive, close`.
describe("a 101's Connection fields", () => {
  it('are replaced by our own `connection: Upgrade`; the fields they name are removed; the tunnel opens', async () => {
    const before = gw.closed.length;
    const got = await upgrade(
      '/101-connection-options',
      async (s, read) => {
        await until('the first server frame', () => read().endsWith('\r\n\r\nHELLO'));
        s.end('ping');
      },
      { early: 'early' },
    );
    const head = got.slice(0, got.indexOf('\r\n\r\n'));
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    expect(head.match(/^connection:.*$/gim)).toEqual(['connection: Upgrade']);
    expect(head).toMatch(/\r\nUpgrade: websocket(?:\r\n|$)/);
    expect(head).toMatch(/\r\nX-End: 2(?:\r\n|$)/);
    expect(head).not.toMatch(/X-Hop/i);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 5, bytesOut: 9 });
  });
});
