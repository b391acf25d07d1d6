/**
 * A pooled origin connection is not kept idle for as long as the origin asks. An origin a client
 * chooses can answer `Keep-Alive: timeout=600`; undici honours up to 600 s by default, and pooled
 * connections are no client's flows and count against no limit: one client held 19,941 of the
 * gateway's 20,000 descriptors that way, and every other client got EMFILE. Now an idle pooled
 * connection is closed after ORIGIN_KEEPALIVE_MAX_MS at most.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ORIGIN_KEEPALIVE_MAX_MS } from '../../gateway/listeners/http-forward.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawExchange } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let port: number;
const closedAt: number[] = [];
const sockets = new Set<Socket>();

beforeAll(async () => {
  origin = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => {
      sockets.delete(s);
      closedAt.push(Date.now());
    });
    s.on('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=600\r\n\r\nok'));
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway();
});
afterAll(async () => {
  await gw?.stop();
  for (const s of sockets) s.destroy();
  origin?.close();
});

it(`an origin asking for a 600 s keep-alive gets its pooled connection closed within ${ORIGIN_KEEPALIVE_MAX_MS} ms of idleness`, async () => {
  const { response } = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
  expect(response).toMatch(/^HTTP\/1\.1 200 [\s\S]*ok$/);
  const answered = Date.now();
  expect(sockets.size).toBe(1); // pooled by the gateway, idle
  const deadline = answered + ORIGIN_KEEPALIVE_MAX_MS + 5000;
  while (closedAt.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  expect(closedAt).toHaveLength(1);
}, ORIGIN_KEEPALIVE_MAX_MS + 15_000);
