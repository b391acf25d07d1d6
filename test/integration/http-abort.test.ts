/**
 * Ends that are not clean on the absolute-URI path: an origin that dies mid-body, a client that
 * leaves mid-download, and a kill (admin DELETE / detector) of a request in flight. Each leaves one
 * closed flow record with the right closeReason and the bytes that actually crossed.
 */
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pattern, rawConnect, readUntil, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
const held: Socket[] = [];

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url === '/die-mid-body') {
      res.writeHead(200, { 'content-length': 10_000 });
      res.write(pattern(3000), () => res.socket?.destroy());
      return true;
    }
    if (req.url === '/stream-forever') {
      // Sends a first part, then holds the response open until the test ends.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(pattern(1000));
      if (res.socket) held.push(res.socket);
      return true;
    }
    return false;
  });
  gw = await startTestGateway();
});

afterAll(async () => {
  for (const s of held) s.destroy();
  await gw?.stop();
  await origin?.close();
});

function get(s: Socket, path: string): void {
  s.write(`GET http://127.0.0.1:${origin.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
}

describe('unclean ends of absolute-URI requests', () => {
  it('origin dies mid-body: the client sees a truncated response, flow closed upstream-reset with the bytes that came', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    get(s, '/die-mid-body');
    await closed;
    const text = Buffer.concat(chunks).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text).toMatch(/content-length: 10000/i);
    const body = text.slice(text.indexOf('\r\n\r\n') + 4);
    expect(body.length).toBe(3000);
    const rec = await gw.waitForClosed((f) => f.destination.port === origin.port && f.bytesIn === 3000);
    expect(rec.closeReason).toBe('upstream-reset');
  });

  it('client leaves mid-download: flow closed client-reset, the origin request is aborted', async () => {
    const s = await rawConnect(gw.httpPort);
    get(s, '/stream-forever');
    await readUntil(s, 'abcdefghij');
    const originSocket = held.at(-1);
    expect(originSocket).toBeDefined();
    const originClosed = once(originSocket as Socket, 'close');
    // A reset: the client left at once (a FIN alone is a half-close, seen as leaving only
    // finGraceMs later: http-half-close.test.ts).
    s.resetAndDestroy();
    const rec = await gw.waitForClosed((f) => f.destination.port === origin.port && f.closeReason === 'client-reset');
    expect(rec.bytesIn).toBe(1000);
    await originClosed;
  });

  it('a kill of a request in flight resets the client and closes the flow with the kill reason', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    get(s, '/stream-forever');
    await readUntil(s, 'abcdefghij');
    const live = gw.flows.list({ state: 'active' }).find((f) => f.protocol === 'http' && f.destination.port === origin.port);
    expect(live).toBeDefined();
    expect(gw.flows.kill(live?.id ?? '', 'admin')).toBe(true);
    await closed;
    const rec = await gw.waitForClosed((f) => f.id === live?.id);
    expect(rec).toMatchObject({ closeReason: 'admin', bytesIn: 1000, bytesOut: 0 });
  });

  it.each([
    ['GET (fast path)', (p: string) => `GET http://127.0.0.1:${origin.port}${p} HTTP/1.1\r\nHost: x\r\n\r\n`],
    ['POST (node:http)', (p: string) => `POST http://127.0.0.1:${origin.port}${p} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi`],
  ])('a %s killed while its admission runs never reaches the origin; the client is cut', async (_what, request) => {
    const path = `/killed-in-admission-${Math.random().toString(36).slice(2)}`;
    // The kill lands after the flow is opened and before the handler continues past admission.
    gw.flows.once('open', (flow: { id: string }) => queueMicrotask(() => gw.flows.kill(flow.id, 'admin')));
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    // A reset (the fast path) or a close (node:http): either way the connection ends with no answer.
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(request(path));
    await closed;
    expect(Buffer.concat(chunks).toString('latin1')).not.toMatch(/^HTTP\/1\.1 200/);
    const rec = await gw.waitForClosed((f) => f.closeReason === 'admin' && f.bytesIn === 0 && f.destination.port === origin.port);
    expect(rec.bytesOut).toBe(0);
    await new Promise((r) => setTimeout(r, 50));
    expect(origin.seen.some((r) => r.url === path)).toBe(false);
  });
});
