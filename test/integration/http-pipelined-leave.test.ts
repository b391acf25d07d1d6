/**
 * Regression: a pipelined request whose client left before its answer kept its flow open for ever.
 * Its flow was closed only on the ServerResponse's 'close', which node never emits for a response
 * still queued behind another when the socket closes; the undici request stayed in flight with it
 * (holding an origin connection) and the flow counted against maxFlowsPerIdentity until restart.
 */
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Origin, rawConnect, readUntil, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
/** Origin sockets of /hold requests (answered never), to see the gateway let go of them. */
const holding = new Map<Socket, string>();

/** Origin connections still holding a request whose path contains `tag`. */
function held(tag: string): number {
  let n = 0;
  for (const url of holding.values()) if (url.includes(tag)) n++;
  return n;
}

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url?.startsWith('/hold') !== true) return false;
    const s = res.socket;
    if (s) {
      holding.set(s, req.url);
      s.once('close', () => holding.delete(s));
    }
    return true;
  });
  gw = await startTestGateway();
});

afterAll(async () => {
  for (const s of holding.keys()) s.destroy();
  await gw?.stop();
  await origin?.close();
});

function pipelined(n: number, path: string): string {
  let out = '';
  for (let i = 0; i < n; i++) out += `GET http://127.0.0.1:${origin.port}${path}${i} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`;
  return out;
}

/** Every flow of this client port is closed with a record, none stays active, the origin is let go. */
async function expectAllClosed(clientPort: number, n: number, tag: string): Promise<void> {
  await until(`${n} closed records for client port ${clientPort}`, () => gw.closed.filter((r) => r.client.port === clientPort).length >= n, 8000);
  const recs = gw.closed.filter((r) => r.client.port === clientPort);
  expect(recs).toHaveLength(n);
  for (const r of recs) expect(r.closeReason).toBe('client-reset');
  expect(new Set(recs.map((r) => r.id)).size).toBe(n);
  await until('no active flow', () => gw.flows.activeCount === 0, 8000);
  await until('origin connections released', () => held(tag) === 0, 8000);
}

describe('pipelined requests whose client leaves before the answers', () => {
  it('five pipelined GETs, then FIN: every flow gets its client-reset record, none stays active', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort as number;
    s.write(pipelined(5, '/hold/fin'));
    // Every request reached the origin (so each has its flow and its undici request) before the FIN.
    await until('five held origin requests', () => held('/hold/fin') === 5, 8000);
    s.end();
    await expectAllClosed(port, 5, '/hold/fin');
    s.destroy();
  });

  it('five pipelined GETs, then a reset: every flow gets its client-reset record, none stays active', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort as number;
    s.write(pipelined(5, '/hold/rst'));
    await until('five held origin requests', () => held('/hold/rst') === 5, 8000);
    s.resetAndDestroy();
    await expectAllClosed(port, 5, '/hold/rst');
  });

  it('after the fast path hands the connection to node:http: pipelined GETs then FIN leave no flow open', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort as number;
    // One plain GET on the fast path, answered.
    s.write(`GET http://127.0.0.1:${origin.port}/first HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
    await readUntil(s, 'echo:GET:0');
    await gw.waitForClosed((r) => r.client.port === port && r.closeReason === 'closed');
    // Pipelined bytes: the fast path hands over to node:http.
    s.write(pipelined(5, '/hold/handover'));
    await until('five held origin requests', () => held('/hold/handover') === 5, 8000);
    const closed = once(s, 'close');
    s.end();
    await until('six records for the connection', () => gw.closed.filter((r) => r.client.port === port).length >= 6, 8000);
    const recs = gw.closed.filter((r) => r.client.port === port);
    expect(recs).toHaveLength(6);
    expect(recs.filter((r) => r.closeReason === 'client-reset')).toHaveLength(5);
    await until('no active flow', () => gw.flows.activeCount === 0, 8000);
    await until('origin connections released', () => held('/hold/handover') === 0, 8000);
    await closed;
  });
});
