/**
 * Regression: the absolute-URI path's origin dial overran `limits.connectTimeoutMs` by about 500 ms.
 * It used undici's connect timeout, which runs on undici's fast timers (a 499 ms tick; a timer
 * fires at the first tick past its delay, and the tick restarts when the timer is the only one):
 * through a real `serve` with a destination dropping SYNs, connectTimeoutMs 1,000 gave the 504 at
 * 1,501-1,539 ms (record durationMs 1,500-1,533; 20 of 20 fast-path GETs and node:http POSTs), 3,000
 * at 3,500-3,526, while CONNECT, SOCKS5, Upgrade and a parent proxy dial, on timers of their own,
 * answered at 1,001-1,052. The direct connector now has a timer of its own too (boundedConnector),
 * cleared at connect: a request whose origin answers after connectTimeoutMs is not cut by it.
 *
 * When the dial is cut is checked against timers of this process, not the wall clock: the gateway
 * runs here (startTestGateway), and Node runs the timers of one duration in the order they were
 * armed, against the loop's clock. A timer of connectTimeoutMs armed before the request is sent
 * fires before the dial's (the flow must be up then), one armed once the dial has started fires after
 * it (the dial socket must be destroyed by then), however late a loaded machine runs them. undici's
 * timer cannot have fired by then: it fires on its third 499 ms tick (1,497 ms), and its ticks only
 * run later under load. The requests go one at a time, so each dial's timer is the only one undici
 * would have had (its ticks restart with it). The bound this replaces, durationMs under 1,400, had
 * 97 ms to spare against the old code and failed the fix at a load average of 15-21; no timeout
 * gives more, as undici's timer fires within one tick (499 ms) past any delay.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DiallingSocket } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type HungDestination, hungDestination } from '../helpers/hung-destination.ts';
import { jsonBody, readUntil } from './http-harness.ts';

const CONNECT_TIMEOUT_MS = 1000;
/** The slow origin answers this long after the request: past connectTimeoutMs, well within idleTimeoutMs. */
const ORIGIN_DELAY_MS = 1300;

let gw: TestGateway;
let dest: HungDestination;
let slowOrigin: Server;
let slowOriginConnections = 0;
const sockets: Socket[] = [];

beforeAll(async () => {
  gw = await startTestGateway({ limits: { connectTimeoutMs: CONNECT_TIMEOUT_MS } });
  dest = await hungDestination();
  slowOrigin = createServer((_req, res) => {
    setTimeout(() => res.end('slow-answer'), ORIGIN_DELAY_MS);
  });
  slowOrigin.on('connection', () => slowOriginConnections++);
  slowOrigin.listen(0, '127.0.0.1');
  await once(slowOrigin, 'listening');
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  dest?.close();
  slowOrigin?.close();
  await gw?.stop();
});

/** A new connection to the HTTP listener. */
async function open(): Promise<Socket> {
  const s = connect({ host: gw.httpHost, port: gw.httpPort });
  s.on('error', () => undefined);
  sockets.push(s);
  await once(s, 'connect');
  return s;
}

/** Resolves when a timer of connectTimeoutMs armed now fires: in the gateway's timer list, after every one armed before it. */
function connectTimerArmedNow(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, CONNECT_TIMEOUT_MS));
}

/** The socket the live flow of the client on `port` is dialling, if it is dialling. */
function diallingOf(port: number): DiallingSocket | null {
  for (const flow of gw.flows.activeFlows().values()) if (flow.client.port === port) return flow.dialling;
  return null;
}

const isClosed = (port: number): boolean => gw.closed.some((r) => r.client.port === port);

describe('absolute-URI origin dial: limits.connectTimeoutMs on the gateway’s own timer', () => {
  it('fast path (GET), node:http (POST) and, for reference, CONNECT: 504 connect-timeout, the dial cut at connectTimeoutMs', async () => {
    const host = `127.0.0.1:${dest.port}`;
    const cases = {
      'fast-path GET': `GET http://${host}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      'node:http POST': `POST http://${host}/x HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 2\r\n\r\nhi`,
      CONNECT: `CONNECT ${host} HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
    };
    // One at a time: each dial's timer alone, as an idle gateway's would be.
    for (const [name, request] of Object.entries(cases)) {
      const s = await open();
      const clientPort = s.localPort as number;
      const answered = readUntil(s, '}', 10_000);
      // Armed before the dial's timer: the flow is still up when it fires.
      const upAtLimit = connectTimerArmedNow().then(() => !isClosed(clientPort));
      s.write(request);
      let dialling: DiallingSocket | null = null;
      await until(`${name}: the dial started`, () => {
        dialling = diallingOf(clientPort);
        return dialling !== null;
      });
      // Armed after the dial's timer: the dial socket is destroyed by then.
      const cutAtLimit = connectTimerArmedNow().then(() => (dialling as unknown as Socket).destroyed);
      expect(await upAtLimit, name).toBe(true);
      expect(await cutAtLimit, name).toBe(true);
      const raw = (await answered).toString('latin1');
      expect(raw.slice(0, raw.indexOf('\r\n')), name).toBe('HTTP/1.1 504 Gateway Timeout');
      expect(jsonBody(raw).reason, name).toBe('connect-timeout');
      const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
      expect(rec, name).toMatchObject({ closeReason: 'connect-timeout', connected: false, bytesIn: 0, bytesOut: 0 });
    }
  }, 30_000);

  it('the timer ends at the connection: an origin answering after connectTimeoutMs is relayed, twice on the pooled connection', async () => {
    const host = `127.0.0.1:${(slowOrigin.address() as { port: number }).port}`;
    const socket = await open();
    const clientPort = socket.localPort as number;
    socket.write(`GET http://${host}/a HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    const raw = (await readUntil(socket, 'slow-answer', 10_000)).toString('latin1');
    expect(raw).toMatch(/^HTTP\/1\.1 200 /);
    // The same origin again: the pooled connection (undici's connector is not called).
    socket.write(`GET http://${host}/b HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    const [second] = await Promise.all([readUntil(socket, 'slow-answer', 10_000), once(socket, 'close')]);
    expect(second.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(slowOriginConnections).toBe(1);
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    expect(rec).toMatchObject({ closeReason: 'closed', connected: true, bytesIn: 'slow-answer'.length });
  }, 30_000);
});
