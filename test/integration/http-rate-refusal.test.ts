/**
 * Regression: a refused request cost almost as much as a served one. A 429 (rate limit) kept the
 * connection alive, so every request a client pipelined behind it was still parsed, opened as a
 * flow, recorded and answered (one address made ~19k refusals/s and grew the flow log 205 MiB in
 * 20 s). Now a 429 is a connection's last answer (`connection: close`), on node:http and on the
 * fast path: the requests behind it are dropped without a flow, a CONNECT or Upgrade among them
 * (node:http announces those as soon as it has parsed their heads: they were still admitted once).
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Origin, rawConnect, startOrigin } from './http-harness.ts';

const PER_SEC = 3;
/** How long the origin takes to answer /slow: longer than the rate's bucket takes to refill (1 s). */
const SLOW_MS = 1100;
let gw: TestGateway | null = null;
let origin: Origin;
/** A CONNECT and Upgrade destination: answers an Upgrade with 101, then echoes. Counts connections. */
let sink: Server;
let sinkPort: number;
let sinkConnections = 0;
const sinkSockets = new Set<Socket>();

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url !== '/slow') return false;
    const timer = setTimeout(() => res.end('slow'), SLOW_MS);
    res.on('close', () => clearTimeout(timer));
    return true;
  });
  sink = createServer((c) => {
    sinkConnections++;
    sinkSockets.add(c);
    c.on('error', () => undefined);
    c.on('close', () => sinkSockets.delete(c));
    c.once('data', (first: Buffer) => {
      if (first.toString('latin1').startsWith('GET ')) c.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      c.pipe(c);
    });
  });
  sink.listen(0, '127.0.0.1');
  await once(sink, 'listening');
  sinkPort = (sink.address() as { port: number }).port;
});

afterEach(async () => {
  await gw?.stop();
  gw = null;
});

afterAll(async () => {
  await origin?.close();
  for (const c of sinkSockets) c.destroy();
  await new Promise<void>((r) => (sink ? sink.close(() => r()) : r()));
});

function get(i: number): string {
  return `GET http://127.0.0.1:${origin.port}/r${i} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`;
}

function count(text: string, what: RegExp): number {
  return text.match(what)?.length ?? 0;
}

describe('a 429 ends its connection', () => {
  it('node:http: 40 pipelined requests over the rate get the 200s up to it, one 429 with connection: close, then the close', async () => {
    const g = await startTestGateway({ limits: { maxNewFlowsPerSecPerIdentity: PER_SEC } });
    gw = g;
    const s = await rawConnect(g.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort as number;
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const closed = once(s, 'close');
    let batch = '';
    for (let i = 0; i < 40; i++) batch += get(i);
    s.write(batch);
    const timer = setTimeout(() => s.destroy(), 10_000);
    await closed;
    clearTimeout(timer);
    const text = Buffer.concat(chunks).toString('latin1');
    const ok = count(text, /HTTP\/1\.1 200 /g);
    // The bucket holds the rate and refills while the batch is answered: more than the rate only on a
    // slow machine, never more than twice it here.
    expect(ok).toBeGreaterThanOrEqual(1);
    expect(ok).toBeLessThanOrEqual(2 * PER_SEC);
    expect(count(text, /HTTP\/1\.1 429 /g)).toBe(1);
    expect(count(text, /HTTP\/1\.1 /g)).toBe(ok + 1);
    const refusal = text.slice(text.indexOf('HTTP/1.1 429 '));
    expect(refusal).toMatch(/\r\nconnection: close\r\n/i);
    // One record per answer, not one per request sent.
    await until('records of the connection', () => g.closed.filter((r) => r.client.port === port).length >= ok + 1, 5000);
    const recs = g.closed.filter((r) => r.client.port === port);
    expect(recs).toHaveLength(ok + 1);
    expect(recs.filter((r) => r.closeReason === 'rate-limit')).toHaveLength(1);
    await until('no active flow', () => g.flows.activeCount === 0, 5000);
  });

  it('fast path: requests one by one until a 429, which says connection: close and ends the connection', async () => {
    const g = await startTestGateway({ limits: { maxNewFlowsPerSecPerIdentity: PER_SEC } });
    gw = g;
    const s = await rawConnect(g.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort as number;
    let text = '';
    let isClosed = false;
    s.on('data', (c: Buffer) => {
      text += c.toString('latin1');
    });
    s.once('close', () => {
      isClosed = true;
    });
    let answers = 0;
    // At most 2 × the rate are admitted before a 429 (the bucket refilling while they are answered).
    for (let i = 0; i < 4 * PER_SEC && !text.includes('HTTP/1.1 429 '); i++) {
      s.write(get(i));
      await until(`answer ${i + 1}`, () => count(text, /HTTP\/1\.1 \d{3} /g) > answers || isClosed, 5000);
      answers = count(text, /HTTP\/1\.1 \d{3} /g);
    }
    expect(count(text, /HTTP\/1\.1 429 /g)).toBe(1);
    const refusal = text.slice(text.indexOf('HTTP/1.1 429 '));
    expect(refusal).toMatch(/\r\nconnection: close\r\n/i);
    // A request sent after the 429 is not served: the gateway ends the connection.
    if (!isClosed) s.write(get(99));
    await until('the connection closes', () => isClosed, 5000);
    const ok = count(text, /HTTP\/1\.1 200 /g);
    expect(count(text, /HTTP\/1\.1 /g)).toBe(ok + 1);
    await until('records of the connection', () => g.closed.filter((r) => r.client.port === port).length >= ok + 1, 5000);
    expect(g.closed.filter((r) => r.client.port === port)).toHaveLength(ok + 1);
  });

  // Regression: node:http announces a CONNECT or Upgrade as soon as it has parsed its head, and it
  // was judged once the responses ahead of it were out, 429 or not: it was admitted (a dial and a
  // tunnel flow, once the rate's bucket had refilled) or refused again with a record of its own.
  for (const kind of ['CONNECT', 'Upgrade'] as const) {
    it(`${kind === 'CONNECT' ? 'a' : 'an'} ${kind} pipelined behind the 429 is not admitted: no dial, no flow, no record; the connection ends after the 429`, async () => {
      const g = await startTestGateway({ limits: { maxNewFlowsPerSecPerIdentity: 1 } });
      gw = g;
      const o = `127.0.0.1:${origin.port}`;
      const last =
        kind === 'CONNECT'
          ? `CONNECT 127.0.0.1:${sinkPort} HTTP/1.1\r\nHost: 127.0.0.1:${sinkPort}\r\n\r\n`
          : `GET http://127.0.0.1:${sinkPort}/ws HTTP/1.1\r\nHost: 127.0.0.1:${sinkPort}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`;
      // First answered after SLOW_MS (the CONNECT or Upgrade is judged in the next second, where the
      // rate would admit it), then at once (within the same second, where the rate refuses it).
      for (const first of ['/slow', '/r0']) {
        // Both GETs within one second of the rate (it counts per wall-clock second): the second gets the 429.
        await new Promise((r) => setTimeout(r, 1010 - (Date.now() % 1000)));
        const dialsBefore = sinkConnections;
        const s = await rawConnect(g.httpPort);
        s.on('error', () => undefined);
        const port = s.localPort as number;
        const chunks: Buffer[] = [];
        s.on('data', (c: Buffer) => chunks.push(c));
        const closed = once(s, 'close');
        s.write(`GET http://${o}${first} HTTP/1.1\r\nHost: ${o}\r\n\r\nGET http://${o}/r1 HTTP/1.1\r\nHost: ${o}\r\n\r\n${last}`);
        let isGivenUp = false;
        const timer = setTimeout(() => {
          isGivenUp = true;
          s.destroy();
        }, 5000 + SLOW_MS);
        await closed;
        clearTimeout(timer);
        // The gateway ended the connection: the test did not give up on it.
        expect(isGivenUp).toBe(false);
        const text = Buffer.concat(chunks).toString('latin1');
        expect(text.match(/HTTP\/1\.1 \d{3} [^\r]*/g)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 429 Too Many Requests']);
        expect(text.slice(text.indexOf('HTTP/1.1 429 '))).toMatch(/\r\nconnection: close\r\n/i);
        await until('records of the connection', () => g.closed.filter((r) => r.client.port === port).length >= 2, 5000);
        await until('no active flow', () => g.flows.activeCount === 0, 5000);
        expect(sinkConnections - dialsBefore).toBe(0);
        const recs = g.closed.filter((r) => r.client.port === port);
        expect(recs.map((r) => `${r.protocol} ${r.destination.port} ${r.closeReason}`).sort()).toEqual([
          `http ${origin.port} closed`,
          `http ${origin.port} rate-limit`,
        ]);
        s.destroy();
      }
    }, 20_000);
  }
});

