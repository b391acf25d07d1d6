/**
 * Via loop detection: a request whose Via already names this gateway came back round a loop of
 * proxies. It is refused 508 `via-loop` (SPEC §4's JSON shape) and recorded, on every path a request
 * reaches admission by: the absolute-URI fast path and node:http's, CONNECT, Upgrade.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, request, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawExchange } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let originPort: number;
const reached: IncomingMessage[] = [];
/** A misrouted front (a reverse proxy pointed back at the gateway): sends what it gets to the gateway again, as a proxy request to itself. */
let relay: Server;
let relayPort: number;
let relayHops = 0;
const RELAY_MAX_HOPS = 5;

beforeAll(async () => {
  origin = createServer((req, res) => {
    reached.push(req);
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  origin.on('upgrade', (req, socket) => {
    reached.push(req);
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  relay = createServer((req, res) => {
    relayHops++;
    if (relayHops > RELAY_MAX_HOPS) {
      res.writeHead(599, { 'content-length': 9 });
      res.end('hop limit');
      return;
    }
    const out = request({ host: gw.httpHost, port: gw.httpPort, method: req.method, path: `http://127.0.0.1:${relayPort}${req.url ?? '/'}`, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  relayPort = (relay.address() as { port: number }).port;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await new Promise((r) => origin.close(r));
  relay.closeAllConnections();
  await new Promise((r) => relay.close(r));
});

describe('Via loop detection', () => {
  // Regression: nothing looked at the Via of a request: one that came back round a loop went
  // through again, and again, a new flow each time, until something else gave out.
  it('a request sent round a loop back to the gateway: the second arrival is refused 508 via-loop, the loop ends after one hop', async () => {
    const before = gw.closed.length;
    const { response } = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${relayPort}/round HTTP/1.1\r\nHost: 127.0.0.1:${relayPort}\r\nConnection: close\r\n\r\n`);
    expect(relayHops).toBe(1);
    // The relay passes the gateway's refusal of its copy back through the gateway to the client.
    expect(response).toMatch(/^HTTP\/1\.1 508 /);
    const body = jsonBody(response);
    expect(body).toMatchObject({ error: 'loop detected', reason: 'via-loop' });
    const rec = await gw.waitForClosed((f) => f.id === body.flowId);
    expect(rec).toMatchObject({ protocol: 'http', closeReason: 'via-loop', bytesOut: 0, bytesIn: 0 });
    expect(rec.destination.port).toBe(relayPort);
    // Two flows: the client's (closed, the 508 relayed to it) and the looped copy's (refused).
    expect(gw.closed.slice(before).map((f) => f.closeReason).sort()).toEqual(['closed', 'via-loop']);
  });

  const requests: Array<[string, (via: string) => string]> = [
    ['absolute-URI GET (fast path)', (via) => `GET http://127.0.0.1:${originPort}/fast HTTP/1.1\r\nHost: x\r\nVia: ${via}\r\nConnection: close\r\n\r\n`],
    ['absolute-URI POST (node:http)', (via) => `POST http://127.0.0.1:${originPort}/node HTTP/1.1\r\nHost: x\r\nVia: ${via}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`],
    ['CONNECT', (via) => `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nVia: ${via}\r\n\r\n`],
    ['Upgrade', (via) => `GET http://127.0.0.1:${originPort}/ws HTTP/1.1\r\nHost: x\r\nVia: ${via}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`],
  ];
  for (const [what, head] of requests) {
    it(`${what} whose Via names egressgate: 508 via-loop, nothing reaches the destination, the flow is recorded`, async () => {
      const reachedBefore = reached.length;
      const { response } = await rawExchange(gw.httpPort, head(`1.1 squid-a (squid/6.6), 1.0 ${gw.ctx.via.pseudonym}`));
      expect(response).toMatch(/^HTTP\/1\.1 508 Loop Detected\r\n/);
      expect(response).toMatch(/\r\ncontent-type: application\/json/i);
      const body = jsonBody(response);
      expect(body).toMatchObject({ error: 'loop detected', reason: 'via-loop' });
      expect(typeof body.flowId).toBe('string');
      const rec = await gw.waitForClosed((f) => f.id === body.flowId);
      expect(rec).toMatchObject({ closeReason: 'via-loop', bytesOut: 0, bytesIn: 0 });
      expect(rec.destination.port).toBe(originPort);
      expect(reached.length).toBe(reachedBefore);
    });
  }

  it('a Via of other proxies (one whose name only contains egressgate too) is no loop: forwarded, our entry added', async () => {
    const { response } = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${originPort}/through HTTP/1.1\r\nHost: x\r\nVia: 1.1 egressgate-eu, 1.0 squid (egressgate)\r\nConnection: close\r\n\r\n`);
    expect(response).toMatch(/^HTTP\/1\.1 200 /);
    expect(reached.at(-1)?.headers.via).toBe(`1.1 egressgate-eu, 1.0 squid (egressgate), 1.1 ${gw.ctx.via.pseudonym}`);
  });
});
