/**
 * The per-identity new-flow rate table is bounded (maxRateKeys; 100,000 by default, a test seam sets
 * it low). Past the bound it forgets buckets that are full again first, then the least recently used: a client that
 * makes many identities (trusted identity headers here; rotating IPv6 sources or usernames alike)
 * does not reset a live identity's count.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawExchange } from './http-harness.ts';

const MAX_RATE_KEYS = 50;
const PER_SEC = 3;
let gw: TestGateway;
let origin: Server;
let port: number;
/** The gateway's clock: frozen, moved by the test, so every bucket drains exactly as the test says. */
let nowMs = Math.floor(Date.now() / 1000) * 1000 + 100;

beforeAll(async () => {
  origin = createServer((_req, res) => {
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway(
    {
      identity: { headers: { trustedSources: ['127.0.0.1/32'], user: 'x-egress-user', host: 'x-egress-host', signed: null } },
      limits: { maxNewFlowsPerSecPerIdentity: PER_SEC },
    },
    { now: () => nowMs, maxRateKeys: MAX_RATE_KEYS },
  );
});

afterAll(async () => {
  await gw?.stop();
  await new Promise((r) => origin.close(r));
});

/** The status of one request as `user` (a trusted identity header). */
async function statusAs(user: string): Promise<number> {
  const { response } = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: x\r\nX-Egress-User: ${user}\r\nConnection: close\r\n\r\n`);
  return Number(response.slice(9, 12));
}

describe('new-flow rate table past its bound', () => {
  // Regression: past 100,000 keys the table was cleared whole, so whoever could make that many
  // identities reset everybody's new-flow count, a limited identity's included.
  it("many new identities do not reset a live identity's count: buckets full again go first", async () => {
    // Second S: 49 identities, one flow each; their buckets are full again 1 s later.
    for (let i = 0; i < MAX_RATE_KEYS - 1; i++) expect(await statusAs(`old-${i}`)).toBe(200);
    nowMs += 1000;
    // Second S+1: alice uses her 3 flows; the 4th is over the rate.
    for (let i = 0; i < PER_SEC; i++) expect(await statusAs('alice')).toBe(200);
    expect(await statusAs('alice')).toBe(429);
    // Still S+1: 10 new identities push the table past its bound.
    for (let i = 0; i < 10; i++) expect(await statusAs(`new-${i}`)).toBe(200);
    // alice is still over her rate this second.
    expect(await statusAs('alice')).toBe(429);
    // A second later her bucket is full again.
    nowMs += 1000;
    expect(await statusAs('alice')).toBe(200);
  });

  it('when every bucket is in use, the least recently used is forgotten first', async () => {
    nowMs += 1000;
    // One second, 2 × the bound of identities: each new one over the bound forgets the oldest.
    for (let i = 0; i < 2 * MAX_RATE_KEYS; i++) expect(await statusAs(`burst-${i}`)).toBe(200);
    // The newest identities' counts are still there: a second flow is their 2nd, a 4th would be over.
    const newest = `burst-${2 * MAX_RATE_KEYS - 1}`;
    for (let i = 1; i < PER_SEC; i++) expect(await statusAs(newest)).toBe(200);
    expect(await statusAs(newest)).toBe(429);
  });
});
