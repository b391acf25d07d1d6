/**
 * The `Retry-After` of a 429 over the new-flow rate says when the identity's bucket holds a token
 * again. Within a second that is 1; after a reload that lowered the rate below what the identity had
 * taken (spec-notes: the flows taken drain at the new rate) it is longer. Before, every 429 said
 * `Retry-After: 1`: at 5/s then 1/s, a client that had taken 5 flows was refused for 5 s, and one
 * that waited as told got four more 429s. The gateway's clock is frozen and moved by the test.
 * Real gateway, raw clients: CONNECT, an absolute-URI GET (fast path) and an Upgrade.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { closedPort } from '../helpers/closed-port.ts';
import { rawExchange } from './http-harness.ts';
import { reloadEdited } from './reload-harness.ts';

let gw: TestGateway | null = null;
afterEach(async () => {
  await gw?.stop();
  gw = null;
});

/** The status and Retry-After of one request on its own connection (null: no Retry-After). */
async function answer(g: TestGateway, request: string): Promise<{ status: number; retryAfter: string | null }> {
  const { response } = await rawExchange(g.httpPort, request);
  const head = response.slice(0, response.indexOf('\r\n\r\n'));
  return { status: Number(response.slice(9, 12)), retryAfter: /\r\nretry-after: ([^\r]*)/i.exec(head)?.[1] ?? null };
}

describe('Retry-After of a 429 over the new-flow rate', () => {
  it('says 1 within the rate, and the seconds the bucket needs after a reload lowered the rate (5/s to 1/s: 5, then 1 s later 4)', async () => {
    let nowMs = Date.now();
    const g = await startTestGateway({ limits: { maxNewFlowsPerSecPerIdentity: 5 } }, { now: () => nowMs });
    gw = g;
    const dead = await closedPort();
    const requests = {
      connect: `CONNECT 127.0.0.1:${dead} HTTP/1.1\r\nHost: 127.0.0.1:${dead}\r\n\r\n`,
      get: `GET http://127.0.0.1:${dead}/ HTTP/1.1\r\nHost: 127.0.0.1:${dead}\r\nConnection: close\r\n\r\n`,
      upgrade: `GET http://127.0.0.1:${dead}/ HTTP/1.1\r\nHost: 127.0.0.1:${dead}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n`,
    };
    // The rate's 5 flows (each 502: nothing listens), then the 6th within the second: 429, 1 s.
    for (let i = 0; i < 5; i++) expect((await answer(g, requests.connect)).status).toBe(502);
    expect(await answer(g, requests.connect)).toEqual({ status: 429, retryAfter: '1' });

    reloadEdited<{ limits: { maxNewFlowsPerSecPerIdentity: number } }>(g, (c) => {
      c.limits.maxNewFlowsPerSecPerIdentity = 1;
    });
    // 5 flows taken, draining at 1 a second: a token in 5 s, on every path.
    for (const request of Object.values(requests)) expect(await answer(g, request)).toEqual({ status: 429, retryAfter: '5' });
    nowMs += 1000;
    expect(await answer(g, requests.get)).toEqual({ status: 429, retryAfter: '4' });
    nowMs += 4000;
    expect((await answer(g, requests.connect)).status).toBe(502);
    const refusals = g.closed.filter((r) => r.reason === 'rate-limit');
    expect(refusals.length).toBe(5);
    for (const r of refusals) expect(r).toMatchObject({ verdict: 'block', closeReason: 'rate-limit' });
  });
});
