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
 * `serve` runs as a process of its own and the requests one at a time, so each dial's timer is the
 * only one undici would have had: the old code fired at 1,497 ms every time, never within the bound.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { servedForFile } from '../helpers/flow-log-fixture.ts';
import { type HungDestination, hungDestination } from '../helpers/hung-destination.ts';
import { jsonBody, readUntil } from './http-harness.ts';

const CONNECT_TIMEOUT_MS = 1000;
/**
 * How far past connectTimeoutMs a timed-out dial's record may end. The old code's records ended
 * 500-533 ms past it (its timer fires on undici's third 499 ms tick, 1,497 ms); the fixed dial's at
 * 0-5 ms (as CONNECT's: 1-17). 400 ms leaves a loaded machine most of the gap and the old code none.
 */
const LATE_BOUND_MS = 400;
/** The slow origin answers this long after the request: past connectTimeoutMs, well within idleTimeoutMs. */
const ORIGIN_DELAY_MS = 1300;

const { served, recordOf } = servedForFile('egw-origin-connect-timeout-', { connectTimeoutMs: CONNECT_TIMEOUT_MS });
let dest: HungDestination;
let slowOrigin: Server;
let slowOriginConnections = 0;
const sockets: Socket[] = [];

beforeAll(async () => {
  dest = await hungDestination();
  slowOrigin = createServer((_req, res) => {
    setTimeout(() => res.end('slow-answer'), ORIGIN_DELAY_MS);
  });
  slowOrigin.on('connection', () => slowOriginConnections++);
  slowOrigin.listen(0, '127.0.0.1');
  await once(slowOrigin, 'listening');
});
afterAll(() => {
  for (const s of sockets) s.destroy();
  dest?.close();
  slowOrigin?.close();
});

/** Send `request` on a new connection to the HTTP listener: the answer up to `marker`, and the client's port. */
async function send(request: string, marker: string): Promise<{ raw: string; clientPort: number; socket: Socket }> {
  const s = connect({ host: served().http.host, port: served().http.port });
  s.on('error', () => undefined);
  sockets.push(s);
  await once(s, 'connect');
  s.write(request);
  const raw = (await readUntil(s, marker, 10_000)).toString('latin1');
  return { raw, clientPort: s.localPort as number, socket: s };
}

describe('absolute-URI origin dial: limits.connectTimeoutMs on the gateway’s own timer', () => {
  it('fast path (GET), node:http (POST) and, for reference, CONNECT: 504 connect-timeout, recorded within connectTimeoutMs + 400 ms', async () => {
    const host = `127.0.0.1:${dest.port}`;
    const cases = {
      'fast-path GET': `GET http://${host}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      'node:http POST': `POST http://${host}/x HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 2\r\n\r\nhi`,
      CONNECT: `CONNECT ${host} HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
    };
    // One at a time: each dial's timer alone, as an idle gateway's would be.
    for (const [name, request] of Object.entries(cases)) {
      const { raw, clientPort } = await send(request, '}');
      expect(raw.slice(0, raw.indexOf('\r\n')), name).toBe('HTTP/1.1 504 Gateway Timeout');
      expect(jsonBody(raw).reason, name).toBe('connect-timeout');
      const rec = await recordOf(clientPort);
      expect(rec, name).toMatchObject({ closeReason: 'connect-timeout', connected: false, bytesIn: 0, bytesOut: 0 });
      expect(rec.durationMs, name).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS);
      expect(rec.durationMs, `${name}: ${rec.durationMs} ms`).toBeLessThan(CONNECT_TIMEOUT_MS + LATE_BOUND_MS);
    }
  }, 30_000);

  it('the timer ends at the connection: an origin answering after connectTimeoutMs is relayed, twice on the pooled connection', async () => {
    const host = `127.0.0.1:${(slowOrigin.address() as { port: number }).port}`;
    const { raw, clientPort, socket } = await send(`GET http://${host}/a HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 'slow-answer');
    expect(raw).toMatch(/^HTTP\/1\.1 200 /);
    // The same origin again: the pooled connection (undici's connector is not called).
    socket.write(`GET http://${host}/b HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    const [second] = await Promise.all([readUntil(socket, 'slow-answer', 10_000), once(socket, 'close')]);
    expect(second.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(slowOriginConnections).toBe(1);
    const rec = await recordOf(clientPort);
    expect(rec).toMatchObject({ closeReason: 'closed', connected: true, bytesIn: 'slow-answer'.length });
  }, 30_000);
});
