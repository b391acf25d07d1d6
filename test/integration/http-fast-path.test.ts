/**
 * The absolute-URI fast path (gateway/listeners/http-fast-path.ts): simple GET and HEAD requests
 * served on the raw socket, and every way a connection leaves it for node:http or ends. Raw sockets
 * throughout, so each test controls exactly which bytes arrive in which packet.
 */
import { once } from 'node:events';
import { createServer } from 'node:net';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, type Origin, pattern, rawConnect, rawExchange, readUntil, startOrigin } from './http-harness.ts';
import { closedPort } from '../helpers/closed-port.ts';

let gw: TestGateway;
let origin: Origin;
let o: string;
let deadPort: number;
/** /endless exchanges the origin has seen end (the gateway aborted or finished them). */
let endlessEnded = 0;

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url === '/no-content') {
      res.writeHead(204);
      res.end();
      return true;
    }
    if (req.url?.startsWith('/latin1/')) {
      // node:http writes header values as latin1: U+00E9 goes out as the one byte 0xE9.
      res.writeHead(200, { 'x-name': 'caf\u00e9', 'content-length': Number(req.url.slice(8)) });
      res.end(pattern(Number(req.url.slice(8))));
      return true;
    }
    if (req.url === '/stall') {
      // Headers and 3 of 10 body bytes, then silence (the socket is closed when the test ends).
      res.writeHead(200, { 'content-length': 10 });
      res.write('abc');
      return true;
    }
    if (req.url === '/endless') {
      // Up to 64 MiB as fast as the gateway takes it, stopping when the exchange is cut.
      res.writeHead(200, { 'content-length': 64 * 1024 * 1024 });
      const chunk = Buffer.alloc(64 * 1024, 120);
      let left = 1024;
      const pump = (): void => {
        while (left > 0) {
          left--;
          if (!res.write(chunk)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      res.on('close', () => {
        left = 0;
        endlessEnded++;
      });
      pump();
      return true;
    }
    if (req.url === '/no-date') {
      res.sendDate = false;
      res.writeHead(200, { 'content-length': 2 });
      res.end('nd');
      return true;
    }
    return false;
  });
  o = `127.0.0.1:${origin.port}`;
  // The gateway first: a port freed before it listens may become one of its listeners' (bound to
  // port 0), and a request to it is then a self-dial, 403 deny-range, not the dead origin's 502.
  gw = await startTestGateway();
  deadPort = await closedPort();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

const get = (path: string, extra = ''): string => `GET http://${o}${path} HTTP/1.1\r\nHost: ${o}\r\n${extra}\r\n`;

/** Resolves once `cond` holds (polled; bounded). */
async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Everything the socket receives, read as text. */
function collect(s: Socket): { text: () => string } {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  return { text: () => Buffer.concat(chunks).toString('latin1') };
}

describe('absolute-URI fast path', () => {
  it('a keep-alive connection: GET, then a POST with a body (node:http takes over), then a GET; three exact records', async () => {
    const before = gw.closed.length;
    const s = await rawConnect(gw.httpPort);
    s.write(get('/size/7'));
    await readUntil(s, 'abcdefg');
    s.write(`POST http://${o}/post HTTP/1.1\r\nHost: ${o}\r\nContent-Length: 5\r\n\r\nhello`);
    await readUntil(s, 'echo:POST:5');
    s.write(get('/size/3'));
    const last = (await readUntil(s, '\r\n\r\nabc')).toString('latin1');
    expect(last).toMatch(/^HTTP\/1\.1 200 /);
    s.destroy();
    await gw.waitForClosed((f) => f.bytesIn === 3 && gw.closed.indexOf(f) >= before);
    const recs = gw.closed.slice(before).filter((f) => f.protocol === 'http');
    expect(recs.map((f) => [f.bytesOut, f.bytesIn, f.closeReason])).toEqual([
      [0, 7, 'closed'],
      [5, 'echo:POST:5'.length, 'closed'],
      [0, 3, 'closed'],
    ]);
    expect(new Set(recs.map((f) => f.client.port)).size).toBe(1);
  });

  it('a head split over two packets goes to node:http and is served', async () => {
    const s = await rawConnect(gw.httpPort);
    const head = get('/size/4');
    s.write(head.slice(0, 20));
    await new Promise((r) => setTimeout(r, 30));
    s.write(head.slice(20));
    const got = (await readUntil(s, '\r\n\r\nabcd')).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
    s.destroy();
  });

  it('a failed origin (502) keeps the connection: the next request on it is served', async () => {
    const before = gw.closed.length;
    const s = await rawConnect(gw.httpPort);
    const seen = collect(s);
    s.write(`GET http://127.0.0.1:${deadPort}/ HTTP/1.1\r\nHost: x\r\n\r\n`);
    await readUntil(s, '"flowId"');
    const first = seen.text();
    expect(first).toMatch(/^HTTP\/1\.1 502 /);
    expect(first).not.toMatch(/connection: close/i);
    s.write(get('/size/6'));
    await readUntil(s, 'abcdef');
    s.destroy();
    await gw.waitForClosed((f) => f.bytesIn === 6 && gw.closed.indexOf(f) >= before);
    const recs = gw.closed.slice(before).filter((f) => f.protocol === 'http');
    expect(recs.map((f) => f.destination.port)).toEqual([deadPort, origin.port]);
    expect(jsonBody(first)).toMatchObject({ reason: recs[0]?.closeReason, flowId: recs[0]?.id });
    expect(recs[1]?.closeReason).toBe('closed');
  });

  it('an admission refusal (403) keeps the connection: a second request on it gets its own answer and record', async () => {
    const own = await startTestGateway({ mode: 'enforce', roles: { dev: { allow: [{ host: 'allowed.example', ports: [80] }] } }, defaultRoles: ['dev'] });
    try {
      const s = await rawConnect(own.httpPort);
      const seen = collect(s);
      s.write(get('/size/1'));
      await waitFor(() => (seen.text().match(/"flowId"/g) ?? []).length === 1);
      s.write(get('/size/2'));
      await waitFor(() => (seen.text().match(/"flowId"/g) ?? []).length === 2);
      const answers = seen.text().match(/HTTP\/1\.1 \d{3}[^\r]*/g);
      expect(answers).toEqual(['HTTP/1.1 403 Forbidden', 'HTTP/1.1 403 Forbidden']);
      expect(seen.text()).toMatch(/\r\nx-egress-verdict: block\r\n/i);
      s.destroy();
      const recs = own.closed.filter((f) => f.protocol === 'http');
      expect(recs.map((f) => f.verdict)).toEqual(['block', 'block']);
    } finally {
      await own.stop();
    }
  });

  // Regression: a refused or failed HEAD got the JSON body after its head (76 bytes for a 403), which
  // a keep-alive client reads as the start of its next response.
  it('a HEAD refused (403) or failed (502) is answered with its head only; the next response follows it directly', async () => {
    const head = (target: string): string => `HEAD ${target} HTTP/1.1\r\nHost: x\r\n\r\n`;
    const s = await rawConnect(gw.httpPort);
    const seen = collect(s);
    s.write(head(`http://127.0.0.1:${deadPort}/`));
    await readUntil(s, '\r\n\r\n');
    s.write(get('/size/6'));
    await readUntil(s, 'abcdef');
    s.destroy();
    expect(seen.text()).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n(?:[^\r]+\r\n)*content-length: \d+\r\n(?:[^\r]+\r\n)*\r\nHTTP\/1\.1 200 OK\r\n/i);
    expect(seen.text()).not.toMatch(/"flowId"/);
    const own = await startTestGateway({ mode: 'enforce', roles: { dev: { allow: [{ host: 'allowed.example', ports: [80] }] } }, defaultRoles: ['dev'] });
    try {
      const t = await rawConnect(own.httpPort);
      const answers = collect(t);
      t.write(head(`http://${o}/size/1`));
      await readUntil(t, '\r\n\r\n');
      t.write(get('/size/2'));
      await waitFor(() => /"flowId"/.test(answers.text()));
      t.destroy();
      const text = answers.text();
      expect(text).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n(?:[^\r]+\r\n)*\r\nHTTP\/1\.1 403 Forbidden\r\n/);
      expect(text.match(/"flowId"/g)).toHaveLength(1);
      expect(own.closed.filter((f) => f.protocol === 'http').map((f) => f.closeReason)).toEqual(['not-allowlisted', 'not-allowlisted']);
    } finally {
      await own.stop();
    }
  });

  it('Connection: close is answered with connection: close, then the gateway closes the connection', async () => {
    const r = await rawExchange(gw.httpPort, get('/size/5', 'Connection: close\r\n'));
    expect(r.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(r.response).toMatch(/\r\nconnection: close\r\n/i);
    expect(r.response.endsWith('\r\n\r\nabcde')).toBe(true);
  });

  it('a chunked origin response is re-chunked whole; HEAD of it has no body; 204 has none either', async () => {
    const s = await rawConnect(gw.httpPort);
    const seen = collect(s);
    s.write(get('/chunked/70000'));
    await readUntil(s, '\r\n0\r\n\r\n');
    const text = seen.text();
    expect(text).toMatch(/\r\ntransfer-encoding: chunked\r\n/i);
    // De-chunk what came and compare with what the origin sent.
    let body = '';
    let i = text.indexOf('\r\n\r\n') + 4;
    for (;;) {
      const eol = text.indexOf('\r\n', i);
      const size = Number.parseInt(text.slice(i, eol), 16);
      if (size === 0) break;
      body += text.slice(eol + 2, eol + 2 + size);
      i = eol + 2 + size + 2;
    }
    expect(body).toBe(pattern(70000).toString('latin1'));
    const mark = seen.text().length;
    s.write(`HEAD http://${o}/chunked/100 HTTP/1.1\r\nHost: ${o}\r\n\r\n`);
    await waitFor(() => seen.text().slice(mark).includes('\r\n\r\n'));
    s.write(get('/no-content'));
    await waitFor(() => seen.text().slice(mark).includes('HTTP/1.1 204'));
    s.write(get('/size/2'));
    await readUntil(s, '\r\n\r\nab');
    const rest = seen.text().slice(mark);
    const heads = rest.split('\r\n\r\n');
    // HEAD's answer, the 204, then the 200 with its two bytes: no body or chunk framing in between.
    expect(heads.map((h) => h.slice(0, 12))).toEqual(['HTTP/1.1 200', 'HTTP/1.1 204', 'HTTP/1.1 200', 'ab']);
    expect(heads[0]).not.toMatch(/transfer-encoding/i);
    s.destroy();
  });

  it('an origin response without Date gets one; Via is added', async () => {
    const r = await rawExchange(gw.httpPort, get('/no-date', 'Connection: close\r\n'));
    expect(r.response).toMatch(/\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n/i);
    expect(r.response).toMatch(new RegExp(`\\r\\nvia: 1\\.1 ${gw.ctx.via.pseudonym}(\\r\\n|$)`, 'i'));
    expect(r.response.endsWith('\r\n\r\nnd')).toBe(true);
  });

  it('a header byte above 0x7f reaches the client as the origin sent it, whatever the body size', async () => {
    // 2 bytes: head and body in one write; 20,000: head, then the body; HEAD: the head alone.
    for (const [method, size] of [['GET', 2], ['GET', 20000], ['HEAD', 2]] as const) {
      const s = await rawConnect(gw.httpPort);
      const bytes: Buffer[] = [];
      s.on('data', (c: Buffer) => bytes.push(c));
      s.write(`${method} http://${o}/latin1/${size} HTTP/1.1\r\nHost: ${o}\r\nConnection: close\r\n\r\n`);
      await once(s, 'end');
      const all = Buffer.concat(bytes);
      const headEnd = all.indexOf('\r\n\r\n') + 4;
      expect(all.subarray(0, headEnd).includes(Buffer.from('\r\nx-name: caf\xe9\r\n', 'latin1'))).toBe(true);
      expect(all.subarray(headEnd)).toEqual(method === 'HEAD' ? Buffer.alloc(0) : pattern(size));
      s.destroy();
    }
  });

  it('idle limits: KEEP_ALIVE_MS between requests even when limits.idleTimeoutMs is shorter; idleTimeoutMs while a response stalls', async () => {
    const own = await startTestGateway({ limits: { idleTimeoutMs: 300 } });
    try {
      // Between requests: 5 s (node:http's keepAliveTimeout), not the 300 ms idle limit.
      const s = await rawConnect(own.httpPort);
      s.on('error', () => undefined);
      s.write(get('/size/3'));
      await readUntil(s, 'abc');
      const answered = Date.now();
      const closed = once(s, 'close');
      await new Promise((r) => setTimeout(r, 1000));
      expect(s.destroyed).toBe(false);
      await closed;
      expect(Date.now() - answered).toBeGreaterThanOrEqual(4500);
      expect(Date.now() - answered).toBeLessThan(7000);
      // While a response is served and the client socket is silent: the 300 ms idle limit.
      const t = await rawConnect(own.httpPort);
      t.on('error', () => undefined);
      const before = own.closed.length;
      t.write(get('/stall'));
      await readUntil(t, 'abc');
      const stalled = Date.now();
      await once(t, 'close');
      expect(Date.now() - stalled).toBeLessThan(2000);
      const rec = await own.waitForClosed((f) => own.closed.indexOf(f) >= before);
      // The gateway cut it, not the client (as node:http records it).
      expect(rec).toMatchObject({ bytesIn: 3, closeReason: 'idle-timeout' });
      expect(own.closed.filter((f) => f.client.port === rec.client.port)).toHaveLength(1);
    } finally {
      await own.stop();
    }
  }, 15_000);

  it('the idle cut of a request being served is recorded idle-timeout (also after a half-close); a client that resets is client-reset', async () => {
    const own = await startTestGateway({ limits: { idleTimeoutMs: 300 } });
    try {
      const recordsOf = (port: number) => own.closed.filter((f) => f.client.port === port);
      // A client that stops reading a large response: the gateway cuts it after 300 ms of silence.
      const s = await rawConnect(own.httpPort);
      s.on('error', () => undefined);
      const port = s.localPort as number;
      const endedBefore = endlessEnded;
      s.write(get('/endless'));
      await readUntil(s, 'xxxx');
      s.pause();
      const cut = await own.waitForClosed((f) => f.client.port === port, 5000);
      expect(cut.closeReason).toBe('idle-timeout');
      expect(cut.bytesIn).toBeGreaterThan(0);
      expect(cut.bytesIn).toBeLessThan(64 * 1024 * 1024);
      s.destroy();
      // A client that resets while the response stalls: client-reset, before any idle cut.
      const t = await rawConnect(own.httpPort);
      t.on('error', () => undefined);
      const tPort = t.localPort as number;
      t.write(get('/stall'));
      await readUntil(t, 'abc');
      t.resetAndDestroy();
      const left = await own.waitForClosed((f) => f.client.port === tPort, 5000);
      expect(left).toMatchObject({ bytesIn: 3, closeReason: 'client-reset' });
      // A client that only half-closes (FIN) still waits for the rest: the stall is cut by the idle
      // limit as for any client, not held for ever.
      const u = await rawConnect(own.httpPort);
      u.on('error', () => undefined);
      const uPort = u.localPort as number;
      u.write(get('/stall'));
      await readUntil(u, 'abc');
      u.end();
      const stalled = await own.waitForClosed((f) => f.client.port === uPort, 5000);
      expect(stalled).toMatchObject({ bytesIn: 3, closeReason: 'idle-timeout' });
      u.destroy();
      // One record each, also once the origin request has been aborted (undici then reports an error).
      await waitFor(() => endlessEnded > endedBefore);
      expect(recordsOf(port)).toHaveLength(1);
      expect(recordsOf(tPort)).toHaveLength(1);
      expect(recordsOf(uPort)).toHaveLength(1);
      expect(own.flows.activeCount).toBe(0);
    } finally {
      await own.stop();
    }
  }, 15_000);

  it('drain: a request completed on node:http while draining gets 503 with connection: close', async () => {
    const own = await startTestGateway();
    const sink = createServer((c) => c.on('error', () => undefined));
    sink.listen(0, '127.0.0.1');
    await once(sink, 'listening');
    try {
      // An open tunnel keeps the drain waiting.
      const tunnel = await rawConnect(own.httpPort);
      tunnel.on('error', () => undefined);
      tunnel.write(`CONNECT 127.0.0.1:${(sink.address() as { port: number }).port} HTTP/1.1\r\n\r\n`);
      await readUntil(tunnel, '\r\n\r\n');
      // A head split over two packets is node:http's; its second half arrives during the drain.
      const s = await rawConnect(own.httpPort);
      s.on('error', () => undefined);
      const head = get('/size/9');
      s.write(head.slice(0, 20));
      await new Promise((r) => setTimeout(r, 50));
      const draining = own.drain(5000);
      await new Promise((r) => setTimeout(r, 200));
      const closed = once(s, 'close');
      s.write(head.slice(20));
      const answer = (await readUntil(s, '"}')).toString('latin1');
      expect(answer).toMatch(/^HTTP\/1\.1 503 /);
      expect(answer).toMatch(/\r\nconnection: close\r\n/i);
      await closed;
      tunnel.destroy();
      await draining;
    } finally {
      await own.stop();
      sink.close();
    }
  });

  it('drain closes an idle keep-alive connection and keeps its record', async () => {
    const own = await startTestGateway();
    try {
      const s = await rawConnect(own.httpPort);
      s.on('error', () => undefined);
      const closed = once(s, 'close');
      s.write(get('/size/9'));
      await readUntil(s, 'abcdefghi');
      await own.drain(1000);
      await closed;
      const rec = await own.waitForClosed((f) => f.bytesIn === 9);
      expect(rec.closeReason).toBe('closed');
    } finally {
      await own.stop();
    }
  });
});
