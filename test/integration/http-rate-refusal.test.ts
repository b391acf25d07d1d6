/**
 * Regression: a refused request cost almost as much as a served one. A 429 (rate limit) kept the
 * connection alive, so every request a client pipelined behind it was still parsed, opened as a
 * flow, recorded and answered (one address made ~19k refusals/s and grew the flow log 205 MiB in
 * 20 s). Now a 429 is a connection's last answer (`connection: close`), on node:http and on the
 * fast path: the requests behind it are dropped without a flow.
 */
import { once } from 'node:events';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Origin, rawConnect, startOrigin } from './http-harness.ts';

const PER_SEC = 3;
let gw: TestGateway | null = null;
let origin: Origin;

beforeAll(async () => {
  origin = await startOrigin();
});

afterEach(async () => {
  await gw?.stop();
  gw = null;
});

afterAll(async () => {
  await origin?.close();
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
    // The rate is per second: a batch that straddles a second boundary may get twice the rate.
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
    // At most 2 × the rate are admitted before a 429 (a second boundary between them).
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
});
