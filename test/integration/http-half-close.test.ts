/**
 * A client that half-closes (sends its FIN) right after a whole request still gets the whole answer
 * (RFC 9112 §9.6: a half-close is not an abort), on both absolute-URI paths: the fast path (a head in
 * one packet) and node:http (a split head, a body, HTTP/1.0, pipelining). The gateway then closes the
 * connection; the flow is `closed` with the exact bytes. Before, node:http aborted the request on the
 * FIN and the fast path took it as the client leaving: no answer, the record `client-reset`, bytesIn 0.
 * A reset is still the client leaving, a FIN mid-request a client that gave up, and the limits still
 * bound a half-closed client that does not read. Raw sockets (`nc -N`, python's shutdown(SHUT_WR)).
 */
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Origin, pattern, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
/** Responses of /hold requests, answered by the test. */
const holding = new Map<string, ServerResponse>();
/**
 * The body of /unread: 64 MiB, filled before any request. Filled at the first request, on a loaded
 * machine it held the answer's head past the 400 ms limit (limits.idleTimeoutMs, which also bounds
 * the wait for the head), and the flow rightly ended connect-timeout.
 */
const unread = Buffer.alloc(64 * 1024 * 1024, 'u');

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    const url = req.url ?? '';
    if (url.startsWith('/slow')) {
      setTimeout(() => {
        res.writeHead(200, { 'content-length': 4 });
        res.end('slow');
      }, 300);
      return true;
    }
    if (url.startsWith('/hold')) {
      holding.set(url, res);
      return true;
    }
    if (url.startsWith('/unread')) {
      // Answered at once: the harness's /size/N builds its body byte by byte first, which on a loaded
      // machine took longer than the 400 ms grace below (the flow then rightly ended client-reset).
      res.writeHead(200, { 'content-length': unread.length });
      res.end(unread);
      return true;
    }
    return false;
  });
  gw = await startTestGateway();
});

afterAll(async () => {
  for (const res of holding.values()) res.destroy();
  await gw?.stop();
  await origin?.close();
});

const authority = (): string => `127.0.0.1:${origin.port}`;
const get = (path: string, method = 'GET', version = '1.1'): string => `${method} http://${authority()}${path} HTTP/${version}\r\nHost: ${authority()}\r\n\r\n`;

interface HalfClosed {
  /** Everything the client read. */
  got: Buffer;
  /** The gateway ended the connection with a FIN (not a reset, not our timeout). */
  isEndedByGateway: boolean;
  port: number;
}

/**
 * Connect (half-open allowed), write `parts` one write each, FIN, read until the gateway closes
 * (bounded). `beforeFin` and `afterFin` run just before and after the FIN.
 */
async function halfClose(parts: Array<string | Buffer>, hooks: { beforeFin?: () => Promise<void>; afterFin?: () => Promise<void> } = {}): Promise<HalfClosed> {
  const s = await connectClient();
  const port = s.localPort as number;
  const chunks: Buffer[] = [];
  let isEndedByGateway = false;
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('end', () => {
    isEndedByGateway = true;
    s.destroy();
  });
  s.on('error', () => undefined);
  // Before anything is sent: a Connection: close answer may end the connection before our FIN.
  const closed = once(s, 'close');
  const timer = setTimeout(() => s.destroy(), 10_000);
  for (let i = 0; i < parts.length; i++) {
    // Each part its own packet (the split head must not arrive whole); the FIN right after the last.
    if (i > 0) await new Promise((r) => setTimeout(r, 30));
    s.write(parts[i] as string | Buffer);
  }
  await hooks.beforeFin?.();
  s.end();
  await hooks.afterFin?.();
  await closed;
  clearTimeout(timer);
  return { got: Buffer.concat(chunks), isEndedByGateway, port };
}

interface Answer {
  status: number;
  headers: string;
  body: Buffer;
}

/** Split what the client read into responses (Content-Length or chunked framing; none after HEAD). */
function answers(raw: Buffer, heads: readonly boolean[] = []): Answer[] {
  const out: Answer[] = [];
  let at = 0;
  while (at < raw.length) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end < 0) throw new Error(`a partial head: ${raw.subarray(at, at + 200).toString('latin1')}`);
    const headers = raw.subarray(at, end).toString('latin1');
    const status = Number(headers.split(' ')[1]);
    at = end + 4;
    const length = /\r\ncontent-length: *(\d+)/i.exec(headers);
    let body: Buffer = Buffer.alloc(0);
    if (heads[out.length] === true) {
      // HEAD: no body whatever the length says.
    } else if (/\r\ntransfer-encoding: *chunked/i.test(headers)) {
      const parts: Buffer[] = [];
      for (;;) {
        const lineEnd = raw.indexOf('\r\n', at);
        const size = Number.parseInt(raw.subarray(at, lineEnd).toString('latin1'), 16);
        at = lineEnd + 2;
        if (size === 0) {
          at += 2;
          break;
        }
        parts.push(raw.subarray(at, at + size));
        at += size + 2;
      }
      body = Buffer.concat(parts);
    } else if (length) {
      body = raw.subarray(at, at + Number(length[1]));
      at += Number(length[1]);
    }
    out.push({ status, headers, body });
  }
  return out;
}

/** Answer the held request `path` with `body`. */
function answerHeld(path: string, body: string): void {
  const res = holding.get(path);
  if (res === undefined) throw new Error(`${path} is not held`);
  holding.delete(path);
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
  res.end(body);
}

/**
 * When each client port was last connected from. Records are matched by client port, and under load
 * the kernel hands a later connection a port an earlier one in this file had: only records of flows
 * started since the latest connection from the port are that connection's.
 */
const connectedAt = new Map<number, number>();

/** Connect to the gateway's HTTP listener (half-open allowed), noting when its client port was taken. */
async function connectClient(port = gw.httpPort): Promise<Socket> {
  const since = Date.now();
  const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(s, 'connect');
  connectedAt.set(s.localPort as number, since);
  return s;
}

function recordsOf(port: number): FlowRecord[] {
  const since = connectedAt.get(port) ?? 0;
  return gw.closed.filter((r) => r.client.port === port && Date.parse(r.startedAt) >= since);
}

async function closedRecords(port: number, n: number): Promise<FlowRecord[]> {
  await until(`${n} records for client port ${port}`, () => recordsOf(port).length >= n, 8000);
  return recordsOf(port);
}

describe('a client that half-closes after its request gets the whole answer', () => {
  it('a GET whose head came in one packet (the fast path)', async () => {
    const r = await halfClose([get('/size/1000?fast')]);
    const [a] = answers(r.got);
    expect(a?.status).toBe(200);
    expect(a?.body.equals(pattern(1000))).toBe(true);
    expect(r.isEndedByGateway).toBe(true);
    const [rec] = await closedRecords(r.port, 1);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 1000, bytesOut: 0 });
  });

  it('a GET whose head came in two packets (node:http)', async () => {
    const head = get('/size/1000?split');
    const r = await halfClose([head.slice(0, 20), head.slice(20)]);
    const [a] = answers(r.got);
    expect(a?.status).toBe(200);
    expect(a?.body.equals(pattern(1000))).toBe(true);
    expect(r.isEndedByGateway).toBe(true);
    const [rec] = await closedRecords(r.port, 1);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 1000, bytesOut: 0 });
  });

  it('a POST with Content-Length and one with a chunked body', async () => {
    const withLength = await halfClose([`POST http://${authority()}/post HTTP/1.1\r\nHost: ${authority()}\r\nContent-Length: 5\r\n\r\nhello`]);
    const chunked = await halfClose([`POST http://${authority()}/post HTTP/1.1\r\nHost: ${authority()}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n`]);
    for (const [r, sent] of [[withLength, 5], [chunked, 8]] as const) {
      const [a] = answers(r.got);
      expect(a?.status).toBe(200);
      expect(a?.body.toString()).toBe(`echo:POST:${sent}`);
      expect(r.isEndedByGateway).toBe(true);
      const [rec] = await closedRecords(r.port, 1);
      expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: `echo:POST:${sent}`.length, bytesOut: sent });
    }
  });

  it('a HEAD, an HTTP/1.0 GET and a Connection: close GET', async () => {
    const head = await halfClose([get('/size/1000?head', 'HEAD')]);
    const [h] = answers(head.got, [true]);
    expect(h?.status).toBe(200);
    expect(h?.headers).toMatch(/\r\ncontent-length: 1000/i);
    expect(head.got.length).toBe((h?.headers.length ?? 0) + 4);
    expect(head.isEndedByGateway).toBe(true);
    expect((await closedRecords(head.port, 1))[0]).toMatchObject({ closeReason: 'closed', bytesIn: 0, bytesOut: 0 });
    const old = await halfClose([get('/size/700?old', 'GET', '1.0')]);
    const close = await halfClose([`GET http://${authority()}/size/600?close HTTP/1.1\r\nHost: ${authority()}\r\nConnection: close\r\n\r\n`]);
    for (const [r, n] of [[old, 700], [close, 600]] as const) {
      const [a] = answers(r.got);
      expect(a?.status).toBe(200);
      expect(a?.body.equals(pattern(n))).toBe(true);
      expect(r.isEndedByGateway).toBe(true);
      expect((await closedRecords(r.port, 1))[0]).toMatchObject({ closeReason: 'closed', bytesIn: n, bytesOut: 0 });
    }
  });

  it('an origin that answers 300 ms after the FIN, and one that streams 4 MiB', async () => {
    const slow = await halfClose([get('/slow')]);
    expect(answers(slow.got)[0]?.body.toString()).toBe('slow');
    expect(slow.isEndedByGateway).toBe(true);
    expect((await closedRecords(slow.port, 1))[0]).toMatchObject({ closeReason: 'closed', bytesIn: 4 });
    const big = 4 * 1024 * 1024;
    for (const path of [`/size/${big}?fast`, `/chunked/${big}?fast`]) {
      const r = await halfClose([get(path)]);
      const [a] = answers(r.got);
      expect(a?.status).toBe(200);
      expect(a?.body.equals(pattern(big))).toBe(true);
      expect(r.isEndedByGateway).toBe(true);
      expect((await closedRecords(r.port, 1))[0]).toMatchObject({ closeReason: 'closed', bytesIn: big });
    }
  });

  it('pipelined requests ahead of the FIN are each answered in order (node:http, and read ahead on the fast path)', async () => {
    // One packet of three requests: node:http.
    const packet = await halfClose([get('/size/10?p1') + get('/slow?p2') + get('/size/30?p3')]);
    expect(answers(packet.got).map((a) => a.body.length)).toEqual([10, 4, 30]);
    expect(packet.isEndedByGateway).toBe(true);
    expect((await closedRecords(packet.port, 3)).map((r) => [r.closeReason, r.bytesIn])).toEqual([['closed', 10], ['closed', 4], ['closed', 30]]);
    // The fast path serves the first; the next two are read ahead while its origin holds it, then the FIN.
    const ahead = await halfClose([get('/hold/a1'), get('/size/20?a2'), get('/size/40?a3')], {
      beforeFin: () => until('the first request at the origin', () => holding.has('/hold/a1'), 5000),
      // The origin answers once the FIN has reached the gateway (an answer ahead of it proves nothing).
      afterFin: async () => {
        await new Promise((r) => setTimeout(r, 100));
        answerHeld('/hold/a1', 'first');
      },
    });
    expect(answers(ahead.got).map((a) => a.body.toString('latin1'))).toEqual(['first', pattern(20).toString('latin1'), pattern(40).toString('latin1')]);
    expect(ahead.isEndedByGateway).toBe(true);
    expect((await closedRecords(ahead.port, 3)).map((r) => [r.closeReason, r.bytesIn])).toEqual([['closed', 5], ['closed', 20], ['closed', 40]]);
  });

  it('a request the fast path does not serve, pipelined behind one it is answering, then the FIN: each answered in order', async () => {
    // The fast path takes the first (/hold, one packet) and is still answering it when the rest and
    // the FIN come (the origin answers 100 ms after the FIN). Before, what it does not serve itself (a
    // body, HTTP/1.0) got no answer behind a FIN read with it: one answer, one record, the origin saw
    // one request. `finLater`: the FIN in a packet of its own, 50 ms after the last request.
    const behind = async (tag: string, rest: string[], finLater = false): Promise<HalfClosed> =>
      halfClose([get(`/hold/${tag}`), ...rest], {
        beforeFin: async () => {
          await until(`/hold/${tag} at the origin`, () => holding.has(`/hold/${tag}`), 5000);
          if (finLater) await new Promise((r) => setTimeout(r, 50));
        },
        afterFin: async () => {
          await new Promise((r) => setTimeout(r, 100));
          answerHeld(`/hold/${tag}`, 'first');
        },
      });
    const post = (tag: string): string => `POST http://${authority()}/post?${tag} HTTP/1.1\r\nHost: ${authority()}\r\nContent-Length: 5\r\n\r\nhello`;
    const chunked = (tag: string): string => `POST http://${authority()}/post?${tag} HTTP/1.1\r\nHost: ${authority()}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`;
    const echo = (n: number): [string, number, number] => ['closed', `echo:POST:${n}`.length, n];
    const cases: Array<{ tag: string; rest: string[]; finLater?: boolean; bodies: string[]; records: Array<[string, number, number]>; seen: string[] }> = [
      { tag: 'cl', rest: [post('cl')], bodies: ['first', 'echo:POST:5'], records: [['closed', 5, 0], echo(5)], seen: ['POST /post?cl hello'] },
      { tag: 'cl-late', rest: [post('cl-late')], finLater: true, bodies: ['first', 'echo:POST:5'], records: [['closed', 5, 0], echo(5)], seen: ['POST /post?cl-late hello'] },
      { tag: 'te-late', rest: [chunked('te-late')], finLater: true, bodies: ['first', 'echo:POST:3'], records: [['closed', 5, 0], echo(3)], seen: ['POST /post?te-late abc'] },
      { tag: 'old-behind', rest: [get('/size/30?old-behind', 'GET', '1.0')], bodies: ['first', pattern(30).toString('latin1')], records: [['closed', 5, 0], ['closed', 30, 0]], seen: ['GET /size/30?old-behind '] },
      {
        tag: 'fast-post',
        rest: [get('/size/20?fast-post'), post('fast-post')],
        bodies: ['first', pattern(20).toString('latin1'), 'echo:POST:5'],
        records: [['closed', 5, 0], ['closed', 20, 0], echo(5)],
        seen: ['GET /size/20?fast-post ', 'POST /post?fast-post hello'],
      },
      {
        tag: 'post-fast',
        rest: [post('post-fast'), get('/size/40?post-fast')],
        finLater: true,
        bodies: ['first', 'echo:POST:5', pattern(40).toString('latin1')],
        records: [['closed', 5, 0], echo(5), ['closed', 40, 0]],
        seen: ['POST /post?post-fast hello', 'GET /size/40?post-fast '],
      },
    ];
    for (const c of cases) {
      const r = await behind(c.tag, c.rest, c.finLater);
      expect(answers(r.got).map((a) => [a.status, a.body.toString('latin1')]), c.tag).toEqual(c.bodies.map((b) => [200, b]));
      expect(r.isEndedByGateway, c.tag).toBe(true);
      const records = await closedRecords(r.port, c.records.length);
      expect(records.map((x) => [x.closeReason, x.bytesIn, x.bytesOut]), c.tag).toEqual(c.records);
      const seen = origin.seen.filter((q) => q.url.endsWith(`?${c.tag}`)).map((q) => `${q.method} ${q.url} ${q.body.toString('latin1')}`);
      expect(seen, c.tag).toEqual(c.seen);
    }
  });

  it('CONNECT and a declined Upgrade already relayed the answer to a half-closed client', async () => {
    const tunnel = await halfClose([`CONNECT ${authority()} HTTP/1.1\r\nHost: ${authority()}\r\n\r\n${get('/size/900?tunnel').replace(`http://${authority()}`, '')}`]);
    const raw = tunnel.got.toString('latin1');
    expect(raw.startsWith('HTTP/1.1 200')).toBe(true);
    const inner = answers(tunnel.got.subarray(raw.indexOf('\r\n\r\n') + 4));
    expect(inner[0]?.body.equals(pattern(900))).toBe(true);
    expect(tunnel.isEndedByGateway).toBe(true);
    const [t] = await closedRecords(tunnel.port, 1);
    expect(t?.closeReason).toBe('closed');
    expect(t?.bytesIn).toBe(tunnel.got.length - raw.indexOf('\r\n\r\n') - 4);
    const upgrade = await halfClose([`GET http://${authority()}/size/800?upgrade HTTP/1.1\r\nHost: ${authority()}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n`]);
    const [u] = answers(upgrade.got);
    expect(u?.status).toBe(200);
    expect(u?.body.equals(pattern(800))).toBe(true);
    expect((await closedRecords(upgrade.port, 1))[0]).toMatchObject({ closeReason: 'closed', bytesIn: 800 });
  });
});

describe('what a half-close is not', () => {
  it('a reset while the answer is awaited still ends the flow client-reset at once (both paths)', async () => {
    for (const [tag, parts] of [['/hold/rst-fast', [get('/hold/rst-fast')]], ['/hold/rst-node', [get('/hold/rst-node').slice(0, 20), get('/hold/rst-node').slice(20)]]] as const) {
      const s = await connectClient();
      s.on('error', () => undefined);
      const port = s.localPort as number;
      for (const part of parts) {
        s.write(part);
        await new Promise((r) => setTimeout(r, 30));
      }
      await until(`${tag} at the origin`, () => holding.has(tag), 5000);
      s.resetAndDestroy();
      const [rec] = await closedRecords(port, 1);
      expect(rec).toMatchObject({ closeReason: 'client-reset', bytesIn: 0 });
    }
  });

  it('a FIN mid-body: the request is not completed at the origin, 400, the flow client-reset', async () => {
    const before = origin.seen.length;
    const r = await halfClose([`POST http://${authority()}/post?partial HTTP/1.1\r\nHost: ${authority()}\r\nContent-Length: 10\r\n\r\nhello`]);
    expect(answers(r.got)[0]?.status).toBe(400);
    expect(r.isEndedByGateway).toBe(true);
    const [rec] = await closedRecords(r.port, 1);
    expect(rec?.closeReason).toBe('client-reset');
    expect(origin.seen.slice(before).some((q) => q.url === '/post?partial')).toBe(false);
  });

  it('a FIN, then an origin silent for finGraceMs: the client counts as gone (client-reset), the origin request aborted (both paths)', async () => {
    // finGraceMs is min(connectTimeoutMs, idleTimeoutMs): a client that closed its socket sends the
    // same FIN as one that half-closed, and TCP tells them apart only once something is written.
    const own = await startTestGateway({ limits: { connectTimeoutMs: 500 } });
    try {
      for (const [path, split] of [['/hold/grace-fast', false], ['/hold/grace-node', true]] as const) {
        const s = connect({ port: own.httpPort, host: '127.0.0.1', allowHalfOpen: true });
        await once(s, 'connect');
        s.on('error', () => undefined);
        const port = s.localPort as number;
        const closed = once(s, 'close');
        s.on('end', () => s.destroy());
        const head = get(path);
        if (split) {
          s.write(head.slice(0, 20));
          await new Promise((r) => setTimeout(r, 30));
          s.write(head.slice(20));
        } else s.write(head);
        await until(`${path} at the origin`, () => holding.has(path), 5000);
        const originGone = once((holding.get(path) as ServerResponse).socket as Socket, 'close');
        s.end();
        const rec = await own.waitForClosed((f) => f.client.port === port, 5000);
        expect(rec).toMatchObject({ closeReason: 'client-reset', bytesIn: 0 });
        await originGone;
        await closed;
        holding.delete(path);
      }
    } finally {
      await own.stop();
    }
  });

  it('a half-closed client that does not read its answer is still cut by limits.idleTimeoutMs', async () => {
    const own = await startTestGateway({ limits: { idleTimeoutMs: 400 } });
    try {
      const big = 64 * 1024 * 1024;
      for (const parts of [[get('/unread?fast')], [get('/unread?node').slice(0, 20), get('/unread?node').slice(20)]]) {
        const s = connect({ port: own.httpPort, host: '127.0.0.1', allowHalfOpen: true });
        await once(s, 'connect');
        s.on('error', () => undefined);
        const port = s.localPort as number;
        for (const part of parts) {
          s.write(part);
          await new Promise((r) => setTimeout(r, 30));
        }
        s.end();
        // Never read: the gateway's writes stall once the socket buffers are full.
        const rec = await own.waitForClosed((f) => f.client.port === port, 8000);
        expect(rec.closeReason).toBe('idle-timeout');
        expect(rec.bytesIn).toBeLessThan(big);
        s.destroy();
      }
    } finally {
      await own.stop();
    }
  }, 20_000);
});
