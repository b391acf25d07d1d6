/**
 * An origin's 1xx responses reach the client on the absolute-URI path, fast path and node:http alike
 * (RFC 9110 §15.2: a proxy forwards them). Regression: both paths dropped every one — an origin's
 * `103 Early Hints` with its Link never reached an HTTP/1.1 client (curl -i through the gateway
 * showed only the 200). Each is relayed with the final response's rewriting (hop-by-hop, Connection-
 * named and proxy-credential fields removed, our Via added, no Content-Length), never to an HTTP/1.0
 * client, never into another response's bytes (a pipelined response queued behind another), and the
 * flow's bytesIn stays the final body only. The cap on how many are relayed is in
 * http-origin-interim.test.ts.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil, run } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let o: string;
/** The Expect field of each request the origin received, by path. */
const expectSeen = new Map<string, string | undefined>();

/**
 * /hints → 102 Processing, then a 103 with a Link and fields the relay must remove, then 200 `final`
 * (a request body is read whole first). /slow → 200 with a 10-byte body sent in two halves 300 ms
 * apart. The 103 is written with writeEarlyHints: its extra fields go out as given.
 */
function answer(req: IncomingMessage, res: ServerResponse): void {
  expectSeen.set(req.url ?? '', req.headers.expect);
  if (req.url === '/slow') {
    res.writeHead(200, { 'content-length': '10' });
    res.write('slow1');
    setTimeout(() => res.end('slow2'), 300);
    return;
  }
  req.resume();
  req.on('end', () => {
    res.writeProcessing();
    res.writeEarlyHints({
      link: '</a.css>; rel=preload; as=style',
      'x-hint': 'kept',
      'proxy-authenticate': 'Basic realm="origin"',
      connection: 'x-secret',
      'x-secret': 'origin-only',
      'content-length': '0',
    });
    setTimeout(() => res.writeHead(200, { 'content-length': '5' }).end('final'), 30);
  });
}

beforeAll(async () => {
  origin = createServer(answer);
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  o = `127.0.0.1:${(origin.address() as { port: number }).port}`;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  origin?.closeAllConnections();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

/** The heads in `raw` before the final response's, each as its lines (status line first). */
function interimHeads(raw: string): string[][] {
  const heads: string[][] = [];
  let rest = raw;
  while (/^HTTP\/1\.1 1\d\d /.test(rest)) {
    const end = rest.indexOf('\r\n\r\n');
    heads.push(rest.slice(0, end).split('\r\n'));
    rest = rest.slice(end + 4);
  }
  return heads;
}

/** The 103 the relay must send for /hints: its Link and x-hint, our Via, nothing else. */
const relayed103 = (): string[] => ['HTTP/1.1 103 Early Hints', 'Link: </a.css>; rel=preload; as=style', 'x-hint: kept', `via: 1.1 ${gw.ctx.via.pseudonym}`];

/** Write `bytes` whole (the fast path takes them), or split over two packets (node:http serves them). */
async function send(s: Socket, bytes: string, split: boolean): Promise<void> {
  if (!split) {
    s.write(bytes);
    return;
  }
  s.write(bytes.slice(0, 12));
  await new Promise((r) => setTimeout(r, 20));
  s.write(bytes.slice(12));
}

describe.each([
  ['fast path', false],
  ['node:http', true],
] as const)('%s', (_name, split) => {
  it('an HTTP/1.1 client gets the 102 and the 103 with its Link, stripped, then the 200; bytesIn is the final body', async () => {
    const s = await rawConnect(gw.httpPort);
    try {
      const before = gw.closed.length;
      await send(s, `GET http://${o}/hints HTTP/1.1\r\nHost: ${o}\r\n\r\n`, split);
      const response = (await readUntil(s, 'final')).toString('latin1');
      const heads = interimHeads(response);
      expect(heads).toEqual([['HTTP/1.1 102 Processing', `via: 1.1 ${gw.ctx.via.pseudonym}`], relayed103()]);
      expect(response).toMatch(/\r\n\r\nHTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nfinal$/);
      const record = await gw.waitForClosed((r) => gw.closed.indexOf(r) >= before);
      expect(record.closeReason).toBe('closed');
      expect(record.bytesIn).toBe(5);
    } finally {
      s.destroy();
    }
  });

  it('an HTTP/1.0 client gets only the 200', async () => {
    const s = await rawConnect(gw.httpPort);
    try {
      await send(s, `GET http://${o}/hints HTTP/1.0\r\nHost: ${o}\r\n\r\n`, split);
      const response = (await readUntil(s, 'final')).toString('latin1');
      expect(response).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(response).not.toMatch(/ 10[23] /);
    } finally {
      s.destroy();
    }
  });
});

describe('node:http only', () => {
  it('a POST with Expect: 100-continue: the gateway\'s own 100, then the origin\'s 102 and 103, then the 200; the origin never sees Expect', async () => {
    const s = await rawConnect(gw.httpPort);
    try {
      const before = gw.closed.length;
      s.write(`POST http://${o}/hints HTTP/1.1\r\nHost: ${o}\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n`);
      expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toBe('HTTP/1.1 100 Continue\r\n\r\n');
      const final = readUntil(s, 'final');
      s.write('abc');
      const response = (await final).toString('latin1');
      expect(interimHeads(response)).toEqual([['HTTP/1.1 102 Processing', `via: 1.1 ${gw.ctx.via.pseudonym}`], relayed103()]);
      expect(expectSeen.get('/hints')).toBeUndefined();
      const record = await gw.waitForClosed((r) => gw.closed.indexOf(r) >= before);
      expect(record.bytesOut).toBe(3);
      expect(record.bytesIn).toBe(5);
    } finally {
      s.destroy();
    }
  });

  it('pipelined behind a slow response: its 1xx never lands inside that response, and both finals arrive whole', async () => {
    const s = await rawConnect(gw.httpPort);
    try {
      // Two requests in one packet: node:http serves them, the second queued behind the first.
      s.write(`GET http://${o}/slow HTTP/1.1\r\nHost: ${o}\r\n\r\nGET http://${o}/hints HTTP/1.1\r\nHost: ${o}\r\n\r\n`);
      const response = (await readUntil(s, 'final')).toString('latin1');
      const first = /^HTTP\/1\.1 200 OK\r\n[\s\S]*?\r\n\r\nslow1slow2/.exec(response);
      expect(first).not.toBeNull();
      // What follows the first response is whole HTTP/1.1 messages: the second's answer ends `final`.
      const rest = response.slice((first as RegExpExecArray)[0].length);
      expect(rest).toMatch(/^HTTP\/1\.1 (103 Early Hints|200 OK)\r\n/);
      expect(rest.slice(rest.indexOf('HTTP/1.1 200 OK'))).toMatch(/\r\n\r\nfinal$/);
    } finally {
      s.destroy();
    }
  });
});

describe('curl', () => {
  it.each([
    ['fast path (GET)', [] as string[]],
    ['node:http (POST)', ['--data', 'abc']],
  ])('%s: curl -i shows the 103 with its Link, then the 200', async (_name, extra) => {
    const result = await run('curl', ['-s', '-S', '-i', '-x', `http://127.0.0.1:${gw.httpPort}`, ...extra, `http://${o}/hints`]);
    expect(result.code).toBe(0);
    const out = result.stdout.toString('latin1');
    expect(interimHeads(out)).toEqual([['HTTP/1.1 102 Processing', `via: 1.1 ${gw.ctx.via.pseudonym}`], relayed103()]);
    expect(out).toMatch(/\r\n\r\nHTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nfinal$/);
  });
});
