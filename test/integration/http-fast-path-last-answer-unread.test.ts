/**
 * The fast path's last answer (`connection: close`) to a client that never reads it and keeps
 * sending: the linger starts at 'finish', which never comes, and every byte the client sends re-arms
 * the socket's idle timer. Regression: the connection was held for as long as the client sent
 * (20 s of a byte every 500 ms, idleTimeoutMs 1500). Now it is reset after limits.idleTimeoutMs
 * without write progress (resetIfWriteStalls). Real gateway, a raw client that never reads.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { closedPort } from '../helpers/closed-port.ts';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';

let gw: TestGateway;
let origin: Server;
let originPort = 0;
/** Less than loopback's buffers hold for a client that does not read: its flow completes. */
const fill = Buffer.alloc(3_800_000, 97);

beforeAll(async () => {
  origin = createServer((_req, res) => {
    res.writeHead(200, { 'content-length': String(fill.length) });
    res.end(fill);
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  gw = await startTestGateway({ limits: { idleTimeoutMs: 1500, maxNewFlowsPerSecPerIdentity: 1_000_000, maxFlowsPerIdentity: 1_000_000 } });
});

afterAll(async () => {
  await gw?.stop();
  origin?.closeAllConnections();
  await new Promise<void>((r) => origin.close(() => r()));
});

const clientsOpen = async (): Promise<number> => {
  const m = /gw_downstream_cx_active\{listener="http"\} (\d+)/.exec((await adminGet(gw, '/metrics')).text);
  return Number(m?.[1] ?? -1);
};

describe('the fast path\'s last answer, never read', () => {
  it('a client that keeps sending but never reads is reset after idleTimeoutMs without write progress', async () => {
    const s: Socket = connect({ port: gw.httpPort, host: '127.0.0.1' });
    s.on('error', () => undefined);
    await once(s, 'connect');
    s.pause();
    // Fill the client's side: a body it never reads (its flow completes), then 502s (a closed port)
    // written whatever the backlog, until the answers queue on the gateway's socket.
    const filled = once(gw.flows, 'close');
    s.write(`GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nhost: 127.0.0.1:${originPort}\r\n\r\n`);
    await filled;
    const port = await closedPort();
    const refused = `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`;
    for (let i = 0; i < 3000 && !s.destroyed; i++) {
      const closed = once(gw.flows, 'close');
      s.write(refused);
      await closed;
    }
    const last = once(gw.flows, 'close');
    s.write(`GET http://127.0.0.1:${port}/ HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nconnection: close\r\n\r\n`);
    await last;
    // A byte at every look: the socket's idle timer never runs out. Before, it was never dropped.
    await until(
      'the non-reading client dropped',
      async () => {
        if (!s.destroyed) s.write('x');
        return (await clientsOpen()) === 0;
      },
      20_000,
    );
    s.destroy();
  }, 60_000);
});
