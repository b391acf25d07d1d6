/**
 * A declined Upgrade's connection once its answer is whole: the gateway ends its side, and a client
 * that keeps its own side open (half-open, the listener allows it) is dropped LINGER_MS after the
 * answer is written out, as after the absolute-URI paths' last answer (lingerThenDestroy). Before,
 * node:http no longer watched the upgraded socket and nothing else did: the connection stayed for
 * ever (gw_downstream_cx_active stayed 1 long after the flow's record said closed).
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';

let gw: TestGateway;
let origin: Server;
let port: number;
const originSockets = new Set<Socket>();

beforeAll(async () => {
  origin = createServer((_req, res) => {
    res.writeHead(400, { 'content-length': 0 });
    res.end();
  });
  origin.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    originSockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => originSockets.delete(socket));
    const answer = 'HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nnot you!';
    // Framed and kept alive (the relay ends at the body's end), or ended by the origin's close.
    if (req.url === '/kept') socket.write(answer);
    else socket.end(answer);
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  for (const s of originSockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

const clientsOpen = async (): Promise<number> => {
  const m = /gw_downstream_cx_active\{listener="http"\} (\d+)/.exec((await adminGet(gw, '/metrics')).text);
  return Number(m?.[1] ?? -1);
};

describe("a declined Upgrade's client that keeps its side open", () => {
  for (const path of ['/kept', '/closing']) {
    it(`${path}: gets the answer and our FIN, and is dropped after the linger: no connection left`, async () => {
      const s = connect({ port: gw.httpPort, host: '127.0.0.1', allowHalfOpen: true });
      s.on('error', () => undefined);
      await once(s, 'connect');
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      const ended = once(s, 'end');
      s.write(`GET http://127.0.0.1:${port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
      await ended;
      const got = Buffer.concat(chunks).toString('latin1');
      expect(got).toMatch(/^HTTP\/1\.1 403 /);
      expect(got.endsWith('\r\n\r\nnot you!')).toBe(true);
      const rec = await gw.waitForClosed((r) => r.destination.port === port && r.bytesIn === 8);
      expect(rec.closeReason).toBe('closed');
      // The client never ends its side: the gateway lets it go on its own (LINGER_MS, 2 s).
      await until('the gateway dropped the half-open client', async () => (await clientsOpen()) === 0, 8000);
      s.destroy();
    });
  }
});
