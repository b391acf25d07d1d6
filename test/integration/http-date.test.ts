/**
 * The gateway's own HTTP answers carry `Date` (RFC 9110 §6.6.1: a server with a clock sends it on
 * 2xx, 3xx and 4xx): the CONNECT 200 (fast front and node:http's path) and the refusals written on a
 * raw socket or by the absolute-URI fast path, as node:http already does for its ServerResponses.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let originPort: number;
let closedPort: number;
const AUTH = `Proxy-Authorization: Basic ${Buffer.from('alice:wonder').toString('base64')}\r\n`;

beforeAll(async () => {
  origin = createServer((s) => {
    s.on('error', () => undefined);
    s.end();
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  // A port nothing listens on: the dial is refused (502).
  const gone = createServer();
  gone.listen(0, '127.0.0.1');
  await once(gone, 'listening');
  closedPort = (gone.address() as { port: number }).port;
  await new Promise((r) => gone.close(r));
  gw = await startTestGateway({ identity: { requireAuth: true, users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] } });
});

afterAll(async () => {
  await gw?.stop();
  await new Promise((r) => (origin ? origin.close(r) : r(undefined)));
});

/** The Date fields of a response head: each must be an IMF-fixdate within a few seconds of now. */
function dates(head: string): string[] {
  const found = [...head.matchAll(/\r\ndate: ([^\r]*)/gi)].map((m) => m[1] as string);
  for (const d of found) {
    expect(d).toMatch(/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$/);
    expect(Math.abs(Date.parse(d) - Date.now())).toBeLessThan(5000);
  }
  return found;
}

describe("the gateway's own answers carry one Date", () => {
  // Regression: the CONNECT 200 and every refusal written as raw text had no Date.
  it('CONNECT 200, whole in one packet (the front) and split (node:http)', async () => {
    const whole = await rawConnect(gw.httpPort);
    whole.write(`CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n${AUTH}\r\n`);
    const head1 = (await readUntil(whole, '\r\n\r\n')).toString('latin1');
    whole.destroy();
    expect(head1).toMatch(/^HTTP\/1\.1 200 /);
    expect(dates(head1)).toHaveLength(1);

    const split = await rawConnect(gw.httpPort);
    split.write(`CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\n`);
    await new Promise((r) => setTimeout(r, 50));
    split.write(`Host: 127.0.0.1:${originPort}\r\n${AUTH}\r\n`);
    const head2 = (await readUntil(split, '\r\n\r\n')).toString('latin1');
    split.destroy();
    expect(head2).toMatch(/^HTTP\/1\.1 200 /);
    expect(dates(head2)).toHaveLength(1);
  });

  it('refusals: 407 (fast path and node:http), 403 on CONNECT, 502 on the fast path', async () => {
    const cases: Array<[string, string]> = [
      ['407', `GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nConnection: close\r\n\r\n`],
      ['407', `POST http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`],
      ['407', `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n\r\n`],
      // The gateway's own listener: deny-range.
      ['403', `CONNECT 127.0.0.1:${gw.httpPort} HTTP/1.1\r\nHost: 127.0.0.1:${gw.httpPort}\r\n${AUTH}\r\n`],
      ['502', `GET http://127.0.0.1:${closedPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${closedPort}\r\n${AUTH}Connection: close\r\n\r\n`],
    ];
    for (const [status, request] of cases) {
      const { response } = await rawExchange(gw.httpPort, request);
      const head = response.slice(0, response.indexOf('\r\n\r\n') + 2);
      expect(head.slice(0, 12), request.split('\r\n')[0]).toBe(`HTTP/1.1 ${status}`);
      expect(dates(head), `${status} to ${request.split('\r\n')[0]}`).toHaveLength(1);
    }
  });
});
