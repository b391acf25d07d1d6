/**
 * Regression: a pipelined request whose client left before its answer kept its flow open for ever.
 * Its flow was closed only on the ServerResponse's 'close', which node never emits for a response
 * still queued behind another when the socket closes; the undici request stayed in flight with it
 * (holding an origin connection) and the flow counted against maxFlowsPerIdentity until restart.
 * A client that only half-closes (FIN) has not left: its pipelined requests are answered, in order.
 */
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Origin, rawConnect, readUntil, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
/** Origin sockets of /hold requests (answered only by answerHeld), to see the gateway let go of them. */
const holding = new Map<Socket, { url: string; res: ServerResponse }>();

/** Origin connections still holding a request whose path contains `tag`. */
function held(tag: string): number {
  let n = 0;
  for (const { url } of holding.values()) if (url.includes(tag)) n++;
  return n;
}

/** Answer every held request whose path contains `tag` with `held:<path>`. */
function answerHeld(tag: string): void {
  for (const [s, { url, res }] of holding) {
    if (!url.includes(tag)) continue;
    holding.delete(s);
    const body = `held:${url}`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
    res.end(body);
  }
}

/** Read until the server closes the connection (bounded). */
async function readToClose(s: Socket): Promise<string> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const timer = setTimeout(() => s.destroy(), 8000);
  await once(s, 'close');
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url?.startsWith('/hold') !== true) return false;
    const s = res.socket;
    if (s) {
      holding.set(s, { url: req.url, res });
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

/** The bodies of the answers in `raw`, in order. */
function heldBodies(raw: string): string[] {
  return [...raw.matchAll(/held:[^\r\n]*?(\d)(?=HTTP\/|$)/g)].map((m) => m[0]);
}

describe('pipelined requests whose client leaves before the answers', () => {
  it('five pipelined GETs, then FIN (a half-close): each is answered in order, every flow closed, then the connection', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const port = s.localPort as number;
    const read = readToClose(s);
    s.write(pipelined(5, '/hold/fin'));
    // Every request reached the origin (so each has its flow and its undici request) before the FIN.
    await until('five held origin requests', () => held('/hold/fin') === 5, 8000);
    s.end();
    // The origin answers after the FIN has reached the gateway (an answer ahead of it proves nothing).
    await new Promise((r) => setTimeout(r, 100));
    answerHeld('/hold/fin');
    const raw = await read;
    expect(heldBodies(raw)).toEqual([0, 1, 2, 3, 4].map((i) => `held:/hold/fin${i}`));
    await until('five closed records', () => gw.closed.filter((r) => r.client.port === port).length >= 5, 8000);
    const recs = gw.closed.filter((r) => r.client.port === port);
    expect(recs.map((r) => [r.closeReason, r.bytesIn])).toEqual([0, 1, 2, 3, 4].map((i) => ['closed', `held:/hold/fin${i}`.length]));
    await until('no active flow', () => gw.flows.activeCount === 0, 8000);
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

  it('after the fast path hands the connection to node:http: pipelined GETs then FIN are answered, no flow left open', async () => {
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
    const read = readToClose(s);
    s.end();
    // The origin answers after the FIN has reached the gateway (an answer ahead of it proves nothing).
    await new Promise((r) => setTimeout(r, 100));
    answerHeld('/hold/handover');
    expect(heldBodies(await read)).toEqual([0, 1, 2, 3, 4].map((i) => `held:/hold/handover${i}`));
    await until('six records for the connection', () => gw.closed.filter((r) => r.client.port === port).length >= 6, 8000);
    const recs = gw.closed.filter((r) => r.client.port === port);
    expect(recs).toHaveLength(6);
    expect(recs.filter((r) => r.closeReason === 'closed')).toHaveLength(6);
    await until('no active flow', () => gw.flows.activeCount === 0, 8000);
  });
});
