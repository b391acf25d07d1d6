/**
 * A local-use NAT64 address (64:ff9b:1::/48, RFC 8215) is matched against `deny.cidrs` under every
 * RFC 6052 layout its translator may use, as `privateRanges` classifies it: a /96 translator (the
 * usual deployment, at 64:ff9b:1:<site>::/96) carries the IPv4 address in the last 32 bits, where the
 * /48 layout reads the site bits. Before, only the /48 reading was matched: with
 * `privateRanges: false` and 169.254.169.254/32 in `deny.cidrs`, `64:ff9b::a9fe:a9fe` was refused
 * but `64:ff9b:1::a9fe:a9fe` and `64:ff9b:1:abcd::a9fe:a9fe` were admitted and dialled (502
 * `unreachable` on this machine, which has no NAT64 route; a translator would have reached the
 * metadata service).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseIPv6 } from '../../policy/address.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

let gw: TestGateway;
const PORT = 80;

beforeAll(async () => {
  gw = await startTestGateway({ allowRanges: [], deny: { privateRanges: false, cidrs: ['169.254.169.254/32'] } });
});

afterAll(async () => {
  await gw?.stop();
});

/** The metadata address in local-use NAT64 forms: the /48 layout's zero site, and a /96 translator's site. */
const SPELLINGS = ['64:ff9b:1::a9fe:a9fe', '64:ff9b:1:abcd::a9fe:a9fe', '64:ff9b:1:abcd:0:1:a9fe:a9fe'];

async function expectRefused(host: string, earlier: Set<unknown>): Promise<void> {
  const rec = await gw.waitForClosed((r) => !earlier.has(r) && r.destination.host === host);
  expect([rec.verdict, rec.reason, rec.closeReason, rec.bytesOut]).toEqual(['block', 'deny-range', 'deny-range', 0]);
  expect(rec.reasons.join(' ')).toContain('is in deny.cidrs');
}

describe('169.254.169.254/32 in deny.cidrs, privateRanges off: a local-use NAT64 spelling of it', () => {
  for (const ip of SPELLINGS) {
    it(`CONNECT [${ip}]: 403 deny-range, not dialled`, async () => {
      const earlier = new Set(gw.closed);
      const s = await rawConnect(gw.httpPort);
      s.on('error', () => undefined);
      s.write(`CONNECT [${ip}]:${PORT} HTTP/1.1\r\nHost: [${ip}]:${PORT}\r\n\r\n`);
      const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
      s.destroy();
      expect(head).toMatch(/^HTTP\/1\.1 403 /);
      await expectRefused(ip, earlier);
    });

    it(`GET http://[${ip}]/: 403 deny-range, not dialled`, async () => {
      const earlier = new Set(gw.closed);
      const { response } = await rawExchange(gw.httpPort, `GET http://[${ip}]/latest/meta-data/ HTTP/1.1\r\nHost: [${ip}]\r\nConnection: close\r\n\r\n`);
      expect(response).toMatch(/^HTTP\/1\.1 403 /);
      expect(response).toContain('"reason":"deny-range"');
      await expectRefused(ip, earlier);
    });

    it(`SOCKS5 CONNECT ATYP 4 ${ip}: 0x02, not dialled`, async () => {
      const earlier = new Set(gw.closed);
      const s = await rawConnect(gw.socksPort);
      s.on('error', () => undefined);
      s.write(Buffer.from([5, 1, 0]));
      expect(await readBytes(s, 2)).toEqual(Buffer.from([5, 0]));
      const addr = Buffer.from(parseIPv6(ip) as Uint8Array);
      const port = Buffer.alloc(2);
      port.writeUInt16BE(PORT);
      s.write(Buffer.concat([Buffer.from([5, 1, 0, 4]), addr, port]));
      const reply = await readBytes(s, 4);
      s.destroy();
      expect(reply[1]).toBe(2);
      await expectRefused(ip, earlier);
    });
  }
});

// An IPv4 /32 in deny.cidrs names one address, as an IPv6 /128 does: it outranks an allowRanges
// exception for the whole NAT64 prefix (/96). Compared as written (32 against 96), the exception won
// and CONNECT [64:ff9b::a9fe:a9fe] was admitted and dialled (502 `unreachable` here, no NAT64 route).
describe('allowRanges 64:ff9b::/96 with 169.254.169.254/32 in deny.cidrs', () => {
  let wide: TestGateway;
  beforeAll(async () => {
    wide = await startTestGateway({ allowRanges: ['64:ff9b::/96'], deny: { privateRanges: true, cidrs: ['169.254.169.254/32'] } });
  });
  afterAll(async () => {
    await wide?.stop();
  });

  it('CONNECT [64:ff9b::a9fe:a9fe]: 403 deny-range, the more specific deny entry wins', async () => {
    const ip = '64:ff9b::a9fe:a9fe';
    const s = await rawConnect(wide.httpPort);
    s.on('error', () => undefined);
    s.write(`CONNECT [${ip}]:${PORT} HTTP/1.1\r\nHost: [${ip}]:${PORT}\r\n\r\n`);
    const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
    s.destroy();
    expect(head).toMatch(/^HTTP\/1\.1 403 /);
    const rec = await wide.waitForClosed((r) => r.destination.host === ip);
    expect([rec.verdict, rec.reason, rec.bytesOut]).toEqual(['block', 'deny-range', 0]);
    expect(rec.reasons.join(' ')).toContain('is in deny.cidrs');
  });
});
