/**
 * Regression: the per-identity new-flow rate (limits.maxNewFlowsPerSecPerIdentity) counted in fixed
 * one-second windows, so a burst straddling a second's boundary got twice the rate: at 5/s, 5 flows at
 * S + 990 ms and 5 more at S + 1010 ms were all admitted. Now a token bucket (capacity the rate,
 * refilled at the rate a second): the second half of the burst is refused, 429 over HTTP and 0x02
 * over SOCKS5, each with one `rate-limit` record, and the bucket refills a token every 1/rate s.
 * The gateway's clock is frozen and moved by the test, so where the boundary falls is exact.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect, rawExchange } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

const PER_SEC = 5;
let gw: TestGateway | null = null;
let origin: Server;
let port: number;
/** The gateway's clock: 10 ms before a second's end. */
let nowMs = Math.floor(Date.now() / 1000) * 1000 + 990;

beforeAll(async () => {
  origin = createServer((_req, res) => {
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
});

afterEach(async () => {
  await gw?.stop();
  gw = null;
});

afterAll(async () => {
  await new Promise((r) => origin.close(r));
});

async function start(): Promise<TestGateway> {
  gw = await startTestGateway({ limits: { maxNewFlowsPerSecPerIdentity: PER_SEC } }, { now: () => nowMs });
  return gw;
}

/** The status of one absolute-URI GET, on its own connection. */
async function httpStatus(g: TestGateway): Promise<number> {
  const { response } = await rawExchange(g.httpPort, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  return Number(response.slice(9, 12));
}

/** The reply code of one SOCKS5 CONNECT to the origin (0x00 succeeded, 0x02 not allowed). */
async function socksReply(g: TestGateway): Promise<number> {
  const s = await rawConnect(g.socksPort);
  s.on('error', () => undefined);
  try {
    s.write(Buffer.from([5, 1, 0]));
    await readBytes(s, 2);
    s.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]));
    const reply = await readBytes(s, 10);
    return reply[1] as number;
  } finally {
    s.destroy();
  }
}

/** `n` requests one after another (each one's answer awaited): the statuses in order. */
async function burst(n: number, one: () => Promise<number>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await one());
  return out;
}

describe('new-flow rate across a second boundary', () => {
  it('HTTP: 5 at S+990 ms and 5 at S+1010 ms admit 5, the other 5 get 429 with rate-limit records; 200 ms later one more', async () => {
    const g = await start();
    const before = await burst(PER_SEC, () => httpStatus(g));
    nowMs += 20; // the next second
    const after = await burst(PER_SEC, () => httpStatus(g));
    expect(before).toEqual(Array(PER_SEC).fill(200));
    expect(after).toEqual(Array(PER_SEC).fill(429));
    await until('10 records', () => g.closed.length >= 2 * PER_SEC, 5000);
    expect(g.closed.filter((r) => r.closeReason === 'rate-limit' && r.verdict === 'block')).toHaveLength(PER_SEC);
    // 1/rate s later the bucket holds one token again: one admitted, the next refused.
    nowMs += 1000 / PER_SEC;
    expect(await burst(2, () => httpStatus(g))).toEqual([200, 429]);
    nowMs += 2000; // a quiet identity's bucket is full again: the rate, no more
    expect(await burst(PER_SEC + 1, () => httpStatus(g))).toEqual([...Array(PER_SEC).fill(200), 429]);
  });

  it('SOCKS5: the same burst admits 5 CONNECTs, the other 5 get 0x02 with rate-limit records', async () => {
    nowMs = Math.floor(nowMs / 1000) * 1000 + 3990;
    const g = await start();
    const before = await burst(PER_SEC, () => socksReply(g));
    nowMs += 20;
    const after = await burst(PER_SEC, () => socksReply(g));
    expect(before).toEqual(Array(PER_SEC).fill(0));
    expect(after).toEqual(Array(PER_SEC).fill(2));
    await until('10 records', () => g.closed.length >= 2 * PER_SEC, 5000);
    const limited = g.closed.filter((r) => r.closeReason === 'rate-limit');
    expect(limited).toHaveLength(PER_SEC);
    expect(limited.every((r) => r.protocol === 'socks5' && r.verdict === 'block')).toBe(true);
  });
});
