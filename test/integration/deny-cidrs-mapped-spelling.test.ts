/**
 * `deny.cidrs` against `allowRanges` for an IPv4-mapped destination: an IPv6 entry that holds the
 * mapped address (`::/80`: it names 2^48 addresses) is less specific than an IPv4 /32 (one address),
 * so the deny entry wins, as it does for the same address written as IPv4. Before, the IPv6 entry's
 * length was scaled as if it were an IPv4 one (80 + 96 against 32 + 96): with `privateRanges: false`,
 * `deny.cidrs: [127.0.0.5/32]` and `allowRanges: ["::/80"]`, CONNECT 127.0.0.5 was 403 `deny-range`
 * but CONNECT [::ffff:127.0.0.5], GET http://[::ffff:127.0.0.5]/ and SOCKS5 ATYP 4 ::ffff:127.0.0.5
 * were allowed and reached the denied origin.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

const DENIED = '127.0.0.5';
let gw: TestGateway;
let origin: Server;
let port = 0;
let connections = 0;

beforeAll(async () => {
  origin = createServer((_req, res) => res.end('denied origin'));
  origin.on('connection', () => connections++);
  origin.listen(0, DENIED);
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway({ allowRanges: ['::/80'], deny: { privateRanges: false, cidrs: [`${DENIED}/32`] } });
});
afterAll(async () => {
  await gw?.stop();
  origin?.close();
});

async function expectRefused(host: string, earlier: Set<unknown>): Promise<void> {
  const rec = await gw.waitForClosed((r) => !earlier.has(r) && r.destination.host === host && r.destination.port === port);
  expect([rec.verdict, rec.reason, rec.closeReason, rec.bytesOut]).toEqual(['block', 'deny-range', 'deny-range', 0]);
  expect(rec.reasons.join(' ')).toContain('is in deny.cidrs');
}

describe(`deny.cidrs ${DENIED}/32, allowRanges ::/80, privateRanges off`, () => {
  for (const [host, literal] of [
    [DENIED, DENIED],
    [`::ffff:${DENIED}`, `[::ffff:${DENIED}]`],
  ]) {
    it(`CONNECT ${literal}: 403 deny-range, the origin never connected`, async () => {
      const earlier = new Set<unknown>(gw.closed);
      const s = await rawConnect(gw.httpPort);
      s.on('error', () => undefined);
      s.write(`CONNECT ${literal}:${port} HTTP/1.1\r\nHost: ${literal}:${port}\r\n\r\n`);
      const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
      s.destroy();
      expect(head).toMatch(/^HTTP\/1\.1 403 /);
      await expectRefused(host as string, earlier);
      expect(connections).toBe(0);
    });

    it(`GET http://${literal}/: 403 deny-range, the origin never connected`, async () => {
      const earlier = new Set<unknown>(gw.closed);
      const { response } = await rawExchange(gw.httpPort, `GET http://${literal}:${port}/ HTTP/1.1\r\nHost: ${literal}:${port}\r\nConnection: close\r\n\r\n`);
      expect(response).toMatch(/^HTTP\/1\.1 403 /);
      expect(response).not.toContain('denied origin');
      await expectRefused(host as string, earlier);
      expect(connections).toBe(0);
    });
  }

  it(`SOCKS5 CONNECT ATYP 4 ::ffff:${DENIED}: 0x02, the origin never connected`, async () => {
    const earlier = new Set<unknown>(gw.closed);
    const s = await rawConnect(gw.socksPort);
    s.on('error', () => undefined);
    s.write(Buffer.from([5, 1, 0]));
    expect(await readBytes(s, 2)).toEqual(Buffer.from([5, 0]));
    const addr = Buffer.alloc(16);
    addr.set([0xff, 0xff, ...DENIED.split('.').map(Number)], 10);
    const p = Buffer.alloc(2);
    p.writeUInt16BE(port);
    s.write(Buffer.concat([Buffer.from([5, 1, 0, 4]), addr, p]));
    const reply = await readBytes(s, 4);
    s.destroy();
    expect(reply[1]).toBe(2);
    await expectRefused(`::ffff:${DENIED}`, earlier);
    expect(connections).toBe(0);
  });
});
