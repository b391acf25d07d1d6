/**
 * Hostile and malformed input on the HTTP listener, as raw bytes: every shape gets its 4xx (or a
 * close), a warn log line with the reason, nothing reaches the origin (never an ambiguous forward),
 * and other clients — including a tunnel already open — keep being served.
 */
import { createServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, rawConnect, rawExchange, readUntil, run, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
let o: string;

beforeAll(async () => {
  origin = await startOrigin();
  o = `127.0.0.1:${origin.port}`;
  gw = await startTestGateway({ limits: { maxHeaderBytes: 8192, headerTimeoutMs: 600 } });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

const cases: Array<[string, () => string, number]> = [
  ['Content-Length with Transfer-Encoding', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 400],
  ['Transfer-Encoding with Content-Length 0', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n`, 400],
  ['duplicate differing Content-Length', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!`, 400],
  ['duplicate equal Content-Length', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello`, 400],
  ['Content-Length list', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nContent-Length: 5, 5\r\n\r\nhello`, 400],
  ['obs-fold', () => `GET http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nX-Folded: a\r\n  b\r\n\r\n`, 400],
  ['Transfer-Encoding not ending in chunked', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n`, 400],
  ['Transfer-Encoding identity', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nTransfer-Encoding: identity\r\n\r\nhello`, 400],
  ['Transfer-Encoding chunked twice', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n`, 400],
  ['Transfer-Encoding gzip, chunked with Content-Length', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`, 400],
  // RFC 9112 §6.1: a transfer coding the server does not understand gets 501 (Not Implemented).
  ['Transfer-Encoding gzip, chunked', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`, 501],
  ['Transfer-Encoding in two fields, gzip then chunked', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 501],
  ['whitespace before the colon', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nContent-Length : 5\r\n\r\nhello`, 400],
  ['bare LF line endings', () => `GET http://${o}/s HTTP/1.1\nHost: ${o}\n\n`, 400],
  // A lower-case `get` is a token, an extension method: forwarded (http-extension-method.test.ts).
  ['a method that is not a token', () => `G@T http://${o}/s HTTP/1.1\r\nHost: ${o}\r\n\r\n`, 400],
  ['TLS ClientHello on the plain port', () => '\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n', 400],
  // It names HTTP/2.0 in an HTTP/1 request line: 505, as other such lines (http-request-line-answered-at-once.test.ts).
  ['HTTP/2 preface', () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 505],
  ['NUL in a header value', () => `GET http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nX: a\x00b\r\n\r\n`, 400],
  ['bad chunk size', () => `POST http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n`, 400],
  ['origin-form target', () => `GET /s HTTP/1.1\r\nHost: ${o}\r\n\r\n`, 400],
  ['https:// absolute target', () => `GET https://${o}/s HTTP/1.1\r\nHost: ${o}\r\n\r\n`, 400],
  ['userinfo in the authority', () => `GET http://user:pw@${o}/s HTTP/1.1\r\nHost: ${o}\r\n\r\n`, 400],
  ['empty label in the host', () => `GET http://a..example/s HTTP/1.1\r\nHost: a\r\n\r\n`, 400],
  ['HTTP/0.9 request', () => `GET http://${o}/s\r\n\r\n`, 400],
  ['CONNECT without a port', () => 'CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n', 400],
  ['CONNECT to port 0', () => 'CONNECT 127.0.0.1:0 HTTP/1.1\r\nHost: x\r\n\r\n', 400],
  ['CONNECT to an unbracketed IPv6', () => 'CONNECT ::1:443 HTTP/1.1\r\nHost: x\r\n\r\n', 400],
  ['Upgrade with an origin-form target', () => `GET /chat HTTP/1.1\r\nHost: ${o}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`, 400],
  ['Upgrade request with a body', () => `POST http://${o}/chat HTTP/1.1\r\nHost: ${o}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello`, 400],
  ['headers over maxHeaderBytes', () => `GET http://${o}/s HTTP/1.1\r\nHost: ${o}\r\nX-Big: ${'a'.repeat(10_000)}\r\n\r\n`, 431],
  ['many small headers over maxHeaderBytes', () => `GET http://${o}/s HTTP/1.1\r\nHost: ${o}\r\n${'X-H: 0123456789\r\n'.repeat(800)}\r\n`, 431],
];

describe('malformed and hostile requests', () => {
  it.each(cases)('%s → %i, a JSON body, connection closed, nothing forwarded, a log line', async (_name, bytes, status) => {
    const seenBefore = origin.seen.length;
    const logsBefore = gw.logs.length;
    const { response } = await rawExchange(gw.httpPort, bytes());
    expect(Number(response.split(' ')[1])).toBe(status);
    const i = response.indexOf('\r\n\r\n');
    expect(JSON.parse(response.slice(i + 4))).toMatchObject({ flowId: null });
    expect(origin.seen.length).toBe(seenBefore);
    if (status === 501) expect(JSON.parse(response.slice(i + 4))).toEqual({ error: 'transfer coding not implemented', reason: 'transfer-coding-not-implemented', flowId: null });
    // Closed after the answer, which says so: the body's framing is not trusted.
    if (status === 400 || status === 501) expect(response.slice(0, i)).toMatch(/\r\nconnection: close(\r\n|$)/i);
    const warned = gw.logs.slice(logsBefore).filter((l) => l.level === 'warn');
    expect(warned.length).toBeGreaterThan(0);
  });

  // Regression: the refused CONNECT target was logged as sent, the password of its userinfo with it.
  it('CONNECT with userinfo in its target: 400, logged without the password', async () => {
    const logsBefore = gw.logs.length;
    const { response } = await rawExchange(gw.httpPort, `CONNECT alice:s3cret-pw@${o} HTTP/1.1\r\nHost: ${o}\r\n\r\n`);
    expect(Number(response.split(' ')[1])).toBe(400);
    const warned = gw.logs.slice(logsBefore).filter((l) => l.msg === 'bad CONNECT target refused');
    expect(warned).toEqual([expect.objectContaining({ level: 'warn', target: `[userinfo]@${o}` })]);
    expect(JSON.stringify(gw.logs.slice(logsBefore))).not.toContain('s3cret-pw');
  });

  it('slowloris: a head never finished gets 408 after headerTimeoutMs while others are served', async () => {
    const slow = await rawConnect(gw.httpPort);
    const chunks: Buffer[] = [];
    slow.on('data', (c: Buffer) => chunks.push(c));
    slow.on('error', () => undefined);
    const closed = new Promise<void>((r) => slow.once('close', () => r()));
    slow.write(`GET http://${o}/slow HTTP/1.1\r\nHost: ${o}\r\nX-A: 1\r\n`);
    // Meanwhile a well-behaved client is served normally.
    const r = await run('curl', ['-sS', '--noproxy', '', '-x', `http://127.0.0.1:${gw.httpPort}`, `http://${o}/while-slow`]);
    expect(r.stdout.toString()).toBe('echo:GET:0');
    await closed;
    const answer = Buffer.concat(chunks).toString('latin1');
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(answer).toMatch(/"reason":"header-timeout"/);
    expect(gw.logs.some((l) => l.code === 'EGW_HEADER_TIMEOUT')).toBe(true);
    expect(origin.seen.some((s) => s.url === '/slow')).toBe(false);
  });

  it('a tunnel opened before the barrage still works, and new clients are served after it', async () => {
    const t = await rawConnect(gw.httpPort);
    t.write(`CONNECT ${o} HTTP/1.1\r\nHost: ${o}\r\n\r\n`);
    await readUntil(t, '\r\n\r\n');
    await Promise.all(cases.map(([, bytes]) => rawExchange(gw.httpPort, bytes())));
    t.write(`GET /after-barrage HTTP/1.1\r\nHost: ${o}\r\nConnection: close\r\n\r\n`);
    const got = await readUntil(t, 'echo:GET:0');
    expect(got.toString()).toMatch(/^HTTP\/1\.1 200/);
    t.destroy();
    const r = await run('curl', ['-sS', '--noproxy', '', '-x', `http://127.0.0.1:${gw.httpPort}`, `http://${o}/size/100`]);
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(100);
    const rec = await gw.waitForClosed((f) => f.protocol === 'http' && f.bytesIn === 100);
    expect(rec.closeReason).toBe('closed');
  });
});

/** A raw TCP origin that counts the connections it accepts and the bytes it reads, answering nothing. */
async function startCountingOrigin(): Promise<{ port: number; connections: () => number; bytes: () => string; close: () => Promise<void> }> {
  const sockets: Socket[] = [];
  let read = '';
  const server = createServer((s) => {
    sockets.push(s);
    s.on('error', () => undefined);
    s.on('data', (c: Buffer) => {
      read += c.toString('latin1');
    });
  });
  server.listen(0, '127.0.0.1');
  await new Promise<void>((r) => server.once('listening', () => r()));
  return {
    port: (server.address() as { port: number }).port,
    connections: () => sockets.length,
    bytes: () => read,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/**
 * Send `bytes` on a new connection, whole in one packet or split after 3 bytes (the fast paths take
 * only a whole head: split, node:http reads it), and collect until the gateway closes (bounded).
 */
async function sendAndRead(bytes: string, isSplit: boolean): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('error', () => undefined);
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  const timer = setTimeout(() => s.destroy(), 10_000);
  if (isSplit) {
    s.write(bytes.slice(0, 3), 'latin1');
    await new Promise((r) => setTimeout(r, 100));
  }
  s.write(isSplit ? bytes.slice(3) : bytes, 'latin1');
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

// Regression: RFC 9112 §3.2 (a server MUST answer 400 to a request with more than one Host field
// line or a Host field with an invalid value) was not applied: node:http keeps the first Host and the
// gateway rebuilds Host from the target, so such requests were served (200, or a CONNECT's tunnel),
// and on the fast path a Host of any printable bytes was served too. And a Content-Length past
// 2^53 − 1 was forwarded rounded (undici reads it as a float): 9007199254740993 reached the origin as
// 9007199254740992, one byte less than the client framed.
describe('Host and Content-Length fields the gateway must refuse', () => {
  let sink: Awaited<ReturnType<typeof startCountingOrigin>>;
  let a: string;

  beforeAll(async () => {
    sink = await startCountingOrigin();
    a = `127.0.0.1:${sink.port}`;
  });
  afterAll(async () => {
    await sink?.close();
  });

  const refused: Array<[string, (a: string) => string, string]> = [
    ['Host twice (the same value)', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nHost: ${t}\r\n\r\n`, 'duplicate-host'],
    ['Host twice (two authorities)', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nhost: other.example\r\n\r\n`, 'duplicate-host'],
    ['Host with a space inside', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: a b.example\r\n\r\n`, 'invalid-host'],
    ['Host with userinfo', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: user@${t}\r\n\r\n`, 'invalid-host'],
    ['Host with a path', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: ${t}/x\r\n\r\n`, 'invalid-host'],
    ['Host with a non-numeric port', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: example.com:8o\r\n\r\n`, 'invalid-host'],
    ['Host with an unclosed IPv6 literal', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: [::1\r\n\r\n`, 'invalid-host'],
    ['Host with a bad percent-encoding', (t) => `GET http://${t}/h HTTP/1.1\r\nHost: a%zz\r\n\r\n`, 'invalid-host'],
    ['POST with Host twice', (t) => `POST http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nHost: ${t}\r\nContent-Length: 5\r\n\r\nhello`, 'duplicate-host'],
    ['Content-Length 2^53 + 1', (t) => `POST http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nContent-Length: 9007199254740993\r\n\r\nhello`, 'content-length-not-safe-integer'],
    ['Content-Length 2^64 − 1', (t) => `POST http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nContent-Length: 18446744073709551615\r\n\r\nhello`, 'content-length-not-safe-integer'],
    // Regression: node:http keeps the first of two Max-Forwards, so 0 then 5 was answered by the
    // gateway itself (200) and 5 then 0 forwarded with 4, where a proxy in front may read the last.
    ['TRACE with Max-Forwards twice (0, 5)', (t) => `TRACE http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nMax-Forwards: 0\r\nMax-Forwards: 5\r\n\r\n`, 'duplicate-max-forwards'],
    ['OPTIONS with Max-Forwards twice (5, 0)', (t) => `OPTIONS http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nMax-Forwards: 5\r\nmax-forwards: 0\r\n\r\n`, 'duplicate-max-forwards'],
    ['OPTIONS with Max-Forwards twice (the same value)', (t) => `OPTIONS http://${t}/h HTTP/1.1\r\nHost: ${t}\r\nMax-Forwards: 3\r\nMax-Forwards: 3\r\n\r\n`, 'duplicate-max-forwards'],
    ['Upgrade with Host twice', (t) => `GET http://${t}/ws HTTP/1.1\r\nHost: ${t}\r\nHost: ${t}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`, 'duplicate-host'],
    ['CONNECT with Host twice', (t) => `CONNECT ${t} HTTP/1.1\r\nHost: ${t}\r\nHost: ${t}\r\n\r\n`, 'duplicate-host'],
    ['CONNECT with an invalid Host', (t) => `CONNECT ${t} HTTP/1.1\r\nHost: ${t}, other.example\r\n\r\n`, 'invalid-host'],
  ];
  it.each(refused)('%s: 400 bad-request, connection closed, a warn line, nothing reaches the origin, whole or split', async (_name, bytes, why) => {
    for (const isSplit of [false, true]) {
      const logsBefore = gw.logs.length;
      const closedBefore = gw.closed.length;
      const answer = await sendAndRead(bytes(a), isSplit);
      expect(answer, `split: ${isSplit}`).toMatch(/^HTTP\/1\.1 400 /);
      const end = answer.indexOf('\r\n\r\n');
      expect(answer.slice(0, end)).toMatch(/\r\nconnection: close(\r\n|$)/i);
      expect(JSON.parse(answer.slice(end + 4))).toEqual({ error: 'bad request', reason: 'bad-request', flowId: null });
      expect(gw.logs.slice(logsBefore).filter((l) => l.level === 'warn' && l.why === why)).toHaveLength(1);
      // Refused before admission: no flow, no record.
      expect(gw.closed.length).toBe(closedBefore);
    }
    expect([sink.connections(), sink.bytes()]).toEqual([0, '']);
  });

  // What RFC 9112 §3.2 and RFC 3986 §3.2.2 allow is still served: the Host is not the target's
  // authority (the gateway rebuilds it from the target), a name with sub-delims, an IPv6 literal,
  // an empty port, an empty value; and a Content-Length of 20 digits that is a safe number (zeros)
  // is read as that number.
  const accepted: Array<[string, string]> = [
    ['a bracketed IPv6 literal with a port', 'Host: [::1]:8080\r\n'],
    ['an empty port', 'Host: example.com:\r\n'],
    ['sub-delims and a percent-encoding', "Host: a!b$c&'d%41.example\r\n"],
    ['an empty value', 'Host:\r\n'],
    ['a Content-Length with leading zeros', 'Content-Length: 00000000000000000000\r\n'],
    // A GET's Max-Forwards is not the gateway's to read (RFC 9110 §7.6.2): passed on as it came.
    ['Max-Forwards twice on a GET', 'Max-Forwards: 0\r\nMax-Forwards: 5\r\n'],
  ];
  it.each(accepted)('Host or Content-Length with %s: served, whole or split', async (_name, field) => {
    const o = `127.0.0.1:${origin.port}`;
    for (const isSplit of [false, true]) {
      const answer = await sendAndRead(`GET http://${o}/ok-${isSplit} HTTP/1.1\r\n${field}Connection: close\r\n\r\n`, isSplit);
      expect(answer, `split: ${isSplit}`).toMatch(/^HTTP\/1\.1 200 /);
      expect(answer.endsWith('echo:GET:0')).toBe(true);
    }
  });
});
