/**
 * `DELETE /v1/flows/{id}` of an absolute-URI request in flight resets its origin connection too
 * (SPEC §4: a killed flow is closed at once, TCP reset on both sides), on both absolute-URI paths,
 * held (the origin slow to answer), mid-upload and mid-download, direct and through an http parent.
 * Before, the client got its reset (http-kill-reset.test.ts) but the origin a clean FIN: undici
 * closes an aborted request's socket normally, so to an origin reading until close a truncated
 * upload looked whole. Another client's keep-alive requests to the same origin, on the gateway's
 * pooled connections, keep working during and after the kill, and their connection is never reset.
 */
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

/** One origin connection: the request lines it was sent, and how it ended (`ECONNRESET`, `end`, or null while open). */
interface OriginConn {
  socket: Socket;
  lines: string[];
  bodyBytes: number;
  ending: string | null;
}

/**
 * A raw origin: `/hold…` takes the request (and its body) and never answers; `/long…` sends the head
 * of a 100,000-byte body and 1,000 bytes of it, then holds; `/close…` 1,000 bytes of a body that runs until
 * the connection closes, then holds; `/quick…` answers `ok` at once, keep-alive;
 * `/later…` answers `ok` when the test says (answerLater).
 */
interface RawOrigin {
  port: number;
  conns: OriginConn[];
  connOf(tag: string): OriginConn | undefined;
  answerLater(tag: string): void;
  close(): Promise<void>;
}

async function startRawOrigin(): Promise<RawOrigin> {
  const conns: OriginConn[] = [];
  const server: Server = createServer({ allowHalfOpen: true }, (s) => {
    const conn: OriginConn = { socket: s, lines: [], bodyBytes: 0, ending: null };
    conns.push(conn);
    s.on('error', (err: NodeJS.ErrnoException) => {
      conn.ending ??= err.code ?? 'error';
    });
    s.on('end', () => {
      conn.ending ??= 'end';
    });
    let buf = '';
    s.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buf.slice(0, end);
        const line = head.split('\r\n')[0] as string;
        const length = Number(/^content-length: *(\d+)$/im.exec(head)?.[1] ?? 0);
        // A request whose body has not all come: count what has, answer nothing (every such request here is held).
        if (buf.length - end - 4 < length) {
          if (conn.lines[conn.lines.length - 1] !== line) conn.lines.push(line);
          conn.bodyBytes = buf.length - end - 4;
          return;
        }
        conn.lines.push(line);
        conn.bodyBytes = length;
        buf = buf.slice(end + 4 + length);
        const path = line.split(' ')[1] as string;
        if (path.startsWith('/quick')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        if (path.startsWith('/long')) s.write(`HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n${'a'.repeat(1000)}`);
        if (path.startsWith('/close')) s.write(`HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n${'a'.repeat(1000)}`);
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const connOf = (tag: string): OriginConn | undefined => conns.find((c) => c.lines.some((l) => l.includes(tag)));
  return {
    port: (server.address() as AddressInfo).port,
    conns,
    connOf,
    answerLater: (tag) => connOf(tag)?.socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'),
    close: async () => {
      for (const c of conns) c.socket.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/**
 * An http parent proxy that carries a reset through: a reset of the gateway's connection to it
 * resets its connection to the origin (as squid does), a close closes it. It records how each
 * gateway connection ended.
 */
async function startResettingParent(): Promise<{ port: number; endings: Array<string | null>; close(): Promise<void> }> {
  const endings: Array<string | null> = [];
  const sockets: Socket[] = [];
  const server = createServer({ allowHalfOpen: true }, (c) => {
    sockets.push(c);
    const at = endings.push(null) - 1;
    let up: Socket | null = null;
    c.on('error', (err: NodeJS.ErrnoException) => {
      endings[at] ??= err.code ?? 'error';
      if (err.code === 'ECONNRESET') up?.resetAndDestroy();
      else up?.destroy();
    });
    c.on('end', () => {
      endings[at] ??= 'end';
      up?.end();
    });
    let head = Buffer.alloc(0);
    const onHead = (d: Buffer): void => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) return;
      c.removeListener('data', onHead);
      const target = head.subarray(0, end).toString('latin1').split(' ')[1] as string;
      const i = target.lastIndexOf(':');
      const rest = head.subarray(end + 4);
      up = connect({ host: target.slice(0, i), port: Number(target.slice(i + 1)), allowHalfOpen: true }, () => {
        c.write('HTTP/1.1 200 Connection established\r\n\r\n');
        if (rest.length > 0) up?.write(rest);
        c.pipe(up as Socket);
        (up as Socket).pipe(c);
      });
      up.on('error', () => c.destroy());
    };
    c.on('data', onHead);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    endings,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

let origin: RawOrigin;
let gw: TestGateway | null = null;
const clients: Socket[] = [];

beforeAll(async () => {
  origin = await startRawOrigin();
});

afterEach(async () => {
  for (const s of clients.splice(0)) s.destroy();
  await gw?.stop();
  gw = null;
});

afterAll(async () => {
  await origin?.close();
});

async function client(): Promise<Socket> {
  const s = await rawConnect((gw as TestGateway).httpPort);
  s.on('error', () => undefined);
  clients.push(s);
  return s;
}

/** How a client connection ended: its socket's error code, or `end` for a clean FIN. */
function ending(s: Socket): Promise<string> {
  return new Promise((resolve) => {
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    s.once('end', () => resolve('end'));
  });
}

async function adminDelete(id: string): Promise<number> {
  const g = gw as TestGateway;
  const res = await fetch(`${g.adminUrl}/v1/flows/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${g.adminToken}` } });
  await res.arrayBuffer();
  return res.status;
}

/** The live http flow of the client connection from `clientPort`. */
async function liveFlow(clientPort: number): Promise<string> {
  const g = gw as TestGateway;
  let id = '';
  await until(`a live http flow from port ${clientPort}`, async () => {
    const res = await fetch(`${g.adminUrl}/v1/flows?state=active`, { headers: { authorization: `Bearer ${g.adminToken}` } });
    const { flows } = (await res.json()) as { flows: Array<{ id: string; protocol: string; client: { port: number } }> };
    id = flows.find((r) => r.protocol === 'http' && r.client.port === clientPort)?.id ?? '';
    return id !== '';
  });
  return id;
}

/** A keep-alive request on `s` for `path`, answered `ok`. */
async function keepAliveGet(s: Socket, path: string): Promise<void> {
  const read = readUntil(s, '\r\n\r\nok');
  s.write(`GET http://127.0.0.1:${origin.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
  const got = (await read).toString('latin1');
  expect(got.startsWith('HTTP/1.1 200')).toBe(true);
}

type Case = [what: string, request: (tag: string) => string, ready: (tag: string, s: Socket) => Promise<unknown>];

const atOrigin = (tag: string, bodyBytes = 0) => () => until(`the origin has ${tag}`, () => (origin.connOf(tag)?.bodyBytes ?? -1) >= bodyBytes);

const cases: Case[] = [
  ['held, fast path (a GET the origin does not answer)', (t) => `GET http://127.0.0.1:${origin.port}/hold${t} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`, (t) => atOrigin(t)()],
  [
    'held, node:http (a whole POST the origin does not answer)',
    (t) => `POST http://127.0.0.1:${origin.port}/hold${t} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nContent-Length: 5\r\n\r\nhello`,
    (t) => atOrigin(t, 5)(),
  ],
  [
    'mid-upload, node:http (1,500 of 5,000 body bytes sent)',
    (t) => `POST http://127.0.0.1:${origin.port}/hold${t} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nContent-Length: 5000\r\n\r\n${'c'.repeat(1500)}`,
    (t) => atOrigin(t, 1500)(),
  ],
  ['mid-download, fast path', (t) => `GET http://127.0.0.1:${origin.port}/long${t} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`, (_t, s) => readUntil(s, 'aaaa')],
  ['mid-download, node:http (HTTP/1.0)', (t) => `GET http://127.0.0.1:${origin.port}/long${t} HTTP/1.0\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`, (_t, s) => readUntil(s, 'aaaa')],
  // A body that runs until the origin closes: undici must not take the reset's close for its end.
  ['mid-download of a close-delimited body, fast path', (t) => `GET http://127.0.0.1:${origin.port}/close${t} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`, (_t, s) => readUntil(s, 'aaaa')],
  [
    'mid-download of a close-delimited body, node:http (HTTP/1.0)',
    (t) => `GET http://127.0.0.1:${origin.port}/close${t} HTTP/1.0\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`,
    (_t, s) => readUntil(s, 'aaaa'),
  ],
];

let serial = 0;

describe('an admin kill of an absolute-URI request in flight resets its origin connection', () => {
  it.each(cases)('%s, direct; another client keeps its pooled keep-alive connection', async (_what, request, ready) => {
    gw = await startTestGateway();
    const tag = `?kill=${++serial}`;
    // Another client's keep-alive requests to the same origin: one before, one in flight across the kill, one after.
    const other = await client();
    await keepAliveGet(other, `/quick?before=${serial}`);
    const otherLater = keepAliveGet(other, `/later?during=${serial}`);
    // Awaited below; a failure before then must not leave it rejected unheard.
    otherLater.catch(() => undefined);
    await until('the other request is at the origin', () => origin.connOf(`/later?during=${serial}`) !== undefined);

    const s = await client();
    const ended = ending(s);
    s.write(request(tag));
    await ready(tag, s);
    const id = await liveFlow(s.localPort as number);
    expect(await adminDelete(id)).toBe(200);
    expect(await ended, 'the client sees a reset').toBe('ECONNRESET');
    const killed = origin.connOf(tag) as OriginConn;
    await until('the origin connection ended', () => killed.ending !== null);
    expect(killed.ending, 'the origin sees a reset, not a clean end').toBe('ECONNRESET');

    // The other client's request, held by the origin across the kill, is answered now.
    origin.answerLater(`/later?during=${serial}`);
    await otherLater;
    await keepAliveGet(other, `/quick?after=${serial}`);
    const others = origin.conns.filter((c) => c.lines.some((l) => l.includes(`during=${serial}`) || l.includes(`before=${serial}`) || l.includes(`after=${serial}`)));
    expect(others.filter((c) => c.ending === 'ECONNRESET').map((c) => c.lines)).toEqual([]);
    expect(others.some((c) => c === killed)).toBe(false);
    // undici, its request aborted, does not open another connection to the origin for it (http-origin-dial.ts isRedialOfAborted).
    expect(origin.conns.filter((c) => c.lines.length === 0)).toHaveLength(0);

    const rec = await (gw as TestGateway).waitForClosed((r) => r.id === id);
    expect(rec.closeReason).toBe('admin');
    expect((gw as TestGateway).closed.filter((r) => r.id === id)).toHaveLength(1);
  });

  it.each(cases)('%s, through an http parent', async (_what, request, ready) => {
    const parent = await startResettingParent();
    try {
      gw = await startTestGateway({ upstream: `http://127.0.0.1:${parent.port}` });
      const tag = `?parent=${++serial}`;
      const s = await client();
      const ended = ending(s);
      s.write(request(tag));
      await ready(tag, s);
      const id = await liveFlow(s.localPort as number);
      expect(await adminDelete(id)).toBe(200);
      expect(await ended, 'the client sees a reset').toBe('ECONNRESET');
      const killed = origin.connOf(tag) as OriginConn;
      await until('the origin connection ended', () => killed.ending !== null);
      expect(parent.endings.filter((e) => e !== null), 'the parent sees a reset').toEqual(['ECONNRESET']);
      expect(killed.ending, 'the origin sees a reset, carried by the parent').toBe('ECONNRESET');
      const rec = await (gw as TestGateway).waitForClosed((r) => r.id === id);
      expect(rec.closeReason).toBe('admin');
      expect((gw as TestGateway).closed.filter((r) => r.id === id)).toHaveLength(1);
    } finally {
      await parent.close();
    }
  });
});

describe('a kill after its request is done at the origin leaves the pooled connection alone', () => {
  it('a pipelined response still queued behind another: its kill does not close the connection another request is now on', async () => {
    gw = await startTestGateway();
    const n = ++serial;
    // node:http (a Content-Length): the second request's answer waits behind the first's, held by the
    // origin, so its flow stays live after its origin connection went back to the pool.
    const a = await client();
    const aEnded = ending(a);
    a.write(`POST http://127.0.0.1:${origin.port}/hold?first=${n} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nContent-Length: 1\r\n\r\nx`);
    await until('the first request is at the origin', () => origin.connOf(`first=${n}`) !== undefined);
    a.write(`GET http://127.0.0.1:${origin.port}/quick?second=${n} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nContent-Length: 0\r\n\r\n`);
    await until('the second request is answered by the origin', () => origin.connOf(`second=${n}`) !== undefined);
    const second = origin.connOf(`second=${n}`) as OriginConn;
    // Another client's request, held by the origin: it goes on the pooled connection the second one used.
    const other = await client();
    const otherLater = keepAliveGet(other, `/later?other=${n}`);
    otherLater.catch(() => undefined);
    await until('the other request is at the origin', () => origin.connOf(`other=${n}`) !== undefined);
    expect(origin.connOf(`other=${n}`)).toBe(second);

    const g = gw as TestGateway;
    const res = await fetch(`${g.adminUrl}/v1/flows?state=active`, { headers: { authorization: `Bearer ${g.adminToken}` } });
    const { flows } = (await res.json()) as { flows: Array<{ id: string; client: { port: number }; bytesIn: number }> };
    const killed = flows.filter((f) => f.client.port === a.localPort && f.bytesIn > 0);
    expect(killed).toHaveLength(1);
    expect(await adminDelete((killed[0] as { id: string }).id)).toBe(200);
    expect(await aEnded).toBe('ECONNRESET');

    origin.answerLater(`/later?other=${n}`);
    await otherLater;
    expect(second.ending).toBe(null);
  });
});
