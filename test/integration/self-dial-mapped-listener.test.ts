/**
 * A listener bound on an IPv4-mapped address (`listen.http: "[::ffff:127.0.0.1]:3128"`, or the
 * mapped wildcard `[::ffff:0.0.0.0]`) takes IPv4 connections, and the gateway never dials it (SPEC §4).
 * Before, its address was kept as written (`[::ffff:127.0.0.1]:p`) while a destination is compared
 * in its dialled form, plain IPv4 (`127.0.0.1:p`): with loopback allowed, CONNECT 127.0.0.1:<http port>,
 * CONNECT [::ffff:127.0.0.1]:<http port> and CONNECT 127.0.0.2:<socks port> (the mapped wildcard) were
 * each 200 and tunnelled into the gateway's own listener, as SOCKS5 CONNECT to them was.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

let gw: TestGateway;

beforeAll(async () => {
  // Loopback allowed, as an operator allowing an internal subnet that holds the gateway would: the
  // self-dial guard must not depend on deny-range.
  gw = await startTestGateway({ allowRanges: ['0.0.0.0/0', '::/0'] }, { http: '[::ffff:127.0.0.1]:0', socks: '[::ffff:0.0.0.0]:0' });
});
afterAll(async () => {
  await gw?.stop();
});

async function expectRefusedRecord(port: number, earlier: Set<unknown>): Promise<void> {
  const rec = await gw.waitForClosed((r) => !earlier.has(r) && r.destination.port === port);
  expect([rec.verdict, rec.reason, rec.closeReason, rec.bytesOut]).toEqual(['block', 'deny-range', 'deny-range', 0]);
  expect(rec.reasons.join(' ')).toContain('a listener of this gateway');
}

describe('listeners on [::ffff:127.0.0.1] (http) and [::ffff:0.0.0.0] (socks)', () => {
  it('the listeners are bound where asked', () => {
    expect(gw.http).toMatch(/^\[::ffff:127\.0\.0\.1\]:\d+$/);
    expect(gw.socks).toMatch(/^\[::ffff:0\.0\.0\.0\]:\d+$/);
  });

  const connects: Array<[string, () => string, () => number]> = [
    ['127.0.0.1:<http port>', () => `127.0.0.1:${gw.httpPort}`, () => gw.httpPort],
    ['[::ffff:127.0.0.1]:<http port>', () => `[::ffff:127.0.0.1]:${gw.httpPort}`, () => gw.httpPort],
    ['127.0.0.2:<socks port> (the mapped wildcard takes every local address)', () => `127.0.0.2:${gw.socksPort}`, () => gw.socksPort],
  ];
  for (const [name, dest, port] of connects) {
    it(`CONNECT ${name}: 403 deny-range, not tunnelled`, async () => {
      const earlier = new Set<unknown>(gw.closed);
      const s = await rawConnect(gw.httpPort);
      s.on('error', () => undefined);
      s.write(`CONNECT ${dest()} HTTP/1.1\r\nHost: ${dest()}\r\n\r\n`);
      const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
      s.destroy();
      expect(head).toMatch(/^HTTP\/1\.1 403 /);
      await expectRefusedRecord(port(), earlier);
    });
  }

  it('GET http://127.0.0.1:<http port>/: 403 deny-range, never the proxy answering itself', async () => {
    const earlier = new Set<unknown>(gw.closed);
    const { response } = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${gw.httpPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${gw.httpPort}\r\nConnection: close\r\n\r\n`);
    expect(response).toMatch(/^HTTP\/1\.1 403 /);
    expect(response).toContain('"reason":"deny-range"');
    await expectRefusedRecord(gw.httpPort, earlier);
  });

  it('SOCKS5 CONNECT 127.0.0.1:<socks port> (ATYP 1): 0x02, not connected', async () => {
    const earlier = new Set<unknown>(gw.closed);
    const s = await rawConnect(gw.socksPort);
    s.on('error', () => undefined);
    s.write(Buffer.from([5, 1, 0]));
    expect(await readBytes(s, 2)).toEqual(Buffer.from([5, 0]));
    const port = Buffer.alloc(2);
    port.writeUInt16BE(gw.socksPort);
    s.write(Buffer.concat([Buffer.from([5, 1, 0, 1, 127, 0, 0, 1]), port]));
    const reply = await readBytes(s, 4);
    s.destroy();
    expect(reply[1]).toBe(2);
    await expectRefusedRecord(gw.socksPort, earlier);
  });
});
