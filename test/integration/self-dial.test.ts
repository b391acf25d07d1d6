/**
 * The gateway never dials its own listeners, however the destination spells their address: an
 * IPv4-mapped IPv6 address in its compressed form (`::ffff:7f00:1`, what the URL parser and DNS hand
 * back), in dotted form, the NAT64 form, and the unspecified address (Linux dials 0.0.0.0 as
 * 127.0.0.1). Before, only `127.0.0.1` and `::ffff:127.0.0.1` were recognised: a client could reach the
 * gateway's own HTTP listener through a tunnel and send requests from the gateway's address (trusted
 * for identity headers when `headers.trustedSources` names it), or reach the admin API.
 * The config allows every range, as an operator allowing an internal subnet that holds the gateway
 * would: the self-dial guard must not depend on deny-range.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SocksClient } from 'socks';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

let gw: TestGateway;
let adminPort: number;

beforeAll(async () => {
  gw = await startTestGateway({ allowRanges: ['0.0.0.0/0', '::/0'] });
  adminPort = Number(new URL(gw.adminUrl).port);
});
afterAll(async () => {
  await gw?.stop();
});

const SPELLINGS = ['[::ffff:7f00:1]', '[::ffff:127.0.0.1]', '[0:0:0:0:0:ffff:7f00:1]', '[64:ff9b::7f00:1]', '0.0.0.0', '127.0.0.1'];

describe('CONNECT to one of the gateway listeners', () => {
  for (const host of SPELLINGS) {
    it(`${host}: 403 deny-range and a refused record`, async () => {
      const earlier = new Set(gw.closed);
      const s = await rawConnect(gw.httpPort);
      s.on('error', () => undefined);
      s.write(`CONNECT ${host}:${gw.httpPort} HTTP/1.1\r\nHost: ${host}:${gw.httpPort}\r\n\r\n`);
      const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
      s.destroy();
      expect(head).toMatch(/^HTTP\/1\.1 403 /);
      const rec = await gw.waitForClosed((r) => !earlier.has(r) && r.destination.port === gw.httpPort);
      expect(rec.verdict).toBe('block');
      expect(rec.closeReason).toBe('deny-range');
      expect(rec.bytesOut).toBe(0);
    });
  }
});

describe('absolute-URI request to the admin listener', () => {
  for (const host of ['[::ffff:7f00:1]', '0.0.0.0']) {
    it(`${host}: 403, never the admin API's answer`, async () => {
      const { response } = await rawExchange(gw.httpPort, `GET http://${host}:${adminPort}/healthz HTTP/1.1\r\nHost: ${host}:${adminPort}\r\nConnection: close\r\n\r\n`);
      expect(response).toMatch(/^HTTP\/1\.1 403 /);
      expect(response).toContain('deny-range');
      expect(response).not.toContain('"status":"ok"');
    });
  }
});

/** A SOCKS5 CONNECT with the destination as a domain name (ATYP 0x03): the reply code. */
async function socksDomainConnect(name: string, port: number): Promise<number> {
  const s = await rawConnect(gw.socksPort);
  s.on('error', () => undefined);
  s.write(Buffer.from([5, 1, 0]));
  const portBytes = Buffer.alloc(2);
  portBytes.writeUInt16BE(port);
  s.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), Buffer.from(name, 'latin1'), portBytes]));
  const got = await readBytes(s, 4);
  s.destroy();
  expect(got.subarray(0, 2)).toEqual(Buffer.from([5, 0]));
  return got[3] as number;
}

describe('SOCKS5 CONNECT to one of the gateway listeners', () => {
  for (const name of ['::ffff:127.0.0.1', '::ffff:7f00:1', '0.0.0.0']) {
    it(`${name} as a domain name (ATYP 0x03): 0x02 not allowed`, async () => {
      expect(await socksDomainConnect(name, gw.httpPort)).toBe(2);
    });
  }

  for (const host of ['::ffff:7f00:1', '0.0.0.0']) {
    it(`${host}: not allowed`, async () => {
      await expect(
        SocksClient.createConnection({
          proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
          command: 'connect',
          destination: { host, port: gw.httpPort },
          timeout: 5000,
        }),
      ).rejects.toThrow(/NotAllowed/);
    });
  }
});

it('a listener port on another loopback address is still reachable (only the listeners themselves are refused)', async () => {
  const { createServer } = await import('node:net');
  const other = createServer((c) => {
    c.on('error', () => undefined);
    c.end('other');
  });
  other.listen(gw.httpPort, '127.0.0.2');
  await once(other, 'listening');
  try {
    const s = await rawConnect(gw.httpPort);
    s.write(`CONNECT 127.0.0.2:${gw.httpPort} HTTP/1.1\r\n\r\n`);
    const got = (await readUntil(s, 'other')).toString('latin1');
    s.destroy();
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
  } finally {
    other.close();
  }
});
