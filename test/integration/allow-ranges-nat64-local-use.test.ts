/**
 * An `allowRanges` exception admits a local-use NAT64 address (64:ff9b:1::/48, RFC 8215) only when
 * it covers every IPv4 address the address may carry: the translator's RFC 6052 layout (/48, /56,
 * /64 or /96) decides which one is reached, and the address does not say which. Before, the range was
 * taken from the first reading that was not public but the exception was matched against the /48
 * reading: with `allowRanges: [10.0.0.0/8]`, 64:ff9b:1:a00:0:100:a9fe:a9fe (/48 reading 10.0.0.1, /96
 * reading 169.254.169.254) was admitted and dialled (502 `unreachable` here, no NAT64 route; a /96
 * translator would have reached the metadata service), and with `deny.cidrs: [169.254.0.0/16]` and
 * `allowRanges: [10.0.0.1/32]` too. The other way round, 64:ff9b:1:abcd::a00:5 (/96 reading 10.0.0.5,
 * the other readings public) was refused `deny-range` though 10.0.0.0/8 is excepted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseIPv6 } from '../../policy/address.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

const PORT = 80;
/** /48 reading 10.0.0.1 (excepted), /96 reading 169.254.169.254 (metadata); the /56 and /64 ones are zero padding. */
const METADATA_AT_96 = '64:ff9b:1:a00:0:100:a9fe:a9fe';

/** CONNECT, absolute-URI GET and SOCKS5 CONNECT (ATYP 4) to `ip`, each answered as refused, and its record. */
async function expectRefusedOnEveryPath(gw: TestGateway, ip: string, why: string): Promise<void> {
  const refused = async (path: string, earlier: Set<unknown>): Promise<void> => {
    const rec = await gw.waitForClosed((r) => !earlier.has(r) && r.destination.host === ip);
    expect([path, rec.verdict, rec.reason, rec.closeReason, rec.bytesOut]).toEqual([path, 'block', 'deny-range', 'deny-range', 0]);
    expect(rec.reasons.join(' ')).toContain(why);
  };
  let earlier = new Set<unknown>(gw.closed);
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  s.write(`CONNECT [${ip}]:${PORT} HTTP/1.1\r\nHost: [${ip}]:${PORT}\r\n\r\n`);
  const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
  s.destroy();
  expect(head).toMatch(/^HTTP\/1\.1 403 /);
  await refused('CONNECT', earlier);

  earlier = new Set(gw.closed);
  const { response } = await rawExchange(gw.httpPort, `GET http://[${ip}]/latest/meta-data/ HTTP/1.1\r\nHost: [${ip}]\r\nConnection: close\r\n\r\n`);
  expect(response).toMatch(/^HTTP\/1\.1 403 /);
  expect(response).toContain('"reason":"deny-range"');
  await refused('absolute-URI', earlier);

  earlier = new Set(gw.closed);
  const c = await rawConnect(gw.socksPort);
  c.on('error', () => undefined);
  c.write(Buffer.from([5, 1, 0]));
  expect(await readBytes(c, 2)).toEqual(Buffer.from([5, 0]));
  const port = Buffer.alloc(2);
  port.writeUInt16BE(PORT);
  c.write(Buffer.concat([Buffer.from([5, 1, 0, 4]), Buffer.from(parseIPv6(ip) as Uint8Array), port]));
  const reply = await readBytes(c, 4);
  c.destroy();
  expect(reply[1]).toBe(2);
  await refused('SOCKS5 CONNECT', earlier);
}

describe('allowRanges 10.0.0.0/8, privateRanges on', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({ allowRanges: ['10.0.0.0/8'] });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it(`${METADATA_AT_96} (a /96 translator's 169.254.169.254): 403 / 0x02 deny-range (metadata), not dialled`, async () => {
    await expectRefusedOnEveryPath(gw, METADATA_AT_96, 'is in a denied range (metadata)');
  });

  it('64:ff9b:1:abcd::a00:5 (a /96 translator\'s 10.0.0.5, excepted): the dry run allows it, as for 10.0.0.5', async () => {
    // Judged without a dial (the address leaves this host when admitted): POST /v1/policy/evaluate
    // answers as admission does.
    const evaluate = async (dest: string): Promise<{ verdict: string; reason: string }> => {
      const res = await fetch(`${gw.adminUrl}/v1/policy/evaluate`, {
        method: 'POST',
        headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ dest, source: '127.0.0.1' }),
      });
      expect(res.status).toBe(200);
      return (await res.json()) as { verdict: string; reason: string };
    };
    expect(await evaluate(`10.0.0.5:${PORT}`)).toMatchObject({ verdict: 'allow', reason: 'allowed' });
    expect(await evaluate(`[64:ff9b:1:abcd::a00:5]:${PORT}`)).toMatchObject({ verdict: 'allow', reason: 'allowed' });
  });
});

describe('deny.cidrs 169.254.0.0/16 and allowRanges 10.0.0.1/32, privateRanges off', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({ allowRanges: ['10.0.0.1/32'], deny: { privateRanges: false, cidrs: ['169.254.0.0/16'] } });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it(`${METADATA_AT_96}: 403 / 0x02 deny-range (deny.cidrs): the exception for 10.0.0.1 does not cover 169.254.169.254`, async () => {
    await expectRefusedOnEveryPath(gw, METADATA_AT_96, 'is in deny.cidrs');
  });
});
