/**
 * One IPv4-mapped IPv6 destination is one `destination.ip` (and `destination.host`) in the records,
 * whichever path and spelling reached it: RFC 5952 text with the dotted-quad tail RFC 5952 §5
 * recommends, `::ffff:127.0.0.3`. Before, an absolute-URI request, a CONNECT and a SOCKS5 domain
 * request (ATYP 0x03) were recorded as `::ffff:7f00:3` (the URL parser's spelling) while a SOCKS5
 * IPv6 request (ATYP 0x04) was recorded as `::ffff:127.0.0.3`: a grep or join by address found half.
 * The Community ID hashes the address bytes, so it is the same for every spelling too; from an IPv4
 * client it hashes the mapped address as its IPv4 one (the pair of an IPv4 destination; it was null,
 * the two addresses being of two families); from an IPv6 client it is null for every spelling, as
 * for `127.0.0.3` (it was an IPv6 pair, ::1 ↔ ::ffff:127.0.0.3, that no packet carries). `client.ip` of an IPv4 client is its dotted address on
 * an IPv6 listener too (node reports `::ffff:127.0.0.1` there). And a host rule naming the address
 * matched only the URL parser's spelling: SOCKS5 ATYP 0x04 was refused (REP 0x02). A SOCKS5 UDP
 * association gives the same record, and its alerts name the address as the record does (they said
 * `127.0.0.3`, the form the relay sends to).
 */
import { createHash } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Cleanups, associate, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

const CANONICAL = '::ffff:127.0.0.3';
const SPELLINGS = ['::ffff:127.0.0.3', '::ffff:7f00:3', '0:0:0:0:0:FFFF:7F00:3', '::FFFF:127.0.0.3'];
/** A `resolver.hosts` name whose address is the mapped one. */
const MAPPED_NAME = 'mapped.example.test';

let origin: Server;
let originPort: number;
/** A UDP echo on 127.0.0.3, the address every spelling names. */
let echo: UdpSocket;
let echoPort: number;
const gateways: Array<{ name: string; clientHost: string; gw: TestGateway }> = [];

beforeAll(async () => {
  origin = createServer((_req, res) => res.end('ok'));
  origin.listen(0, '127.0.0.3');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  echo = createSocket('udp4');
  echo.on('message', (m, r) => echo.send(Buffer.concat([Buffer.from('echo:'), m]), r.port, r.address));
  echo.bind(0, '127.0.0.3');
  await once(echo, 'listening');
  echoPort = echo.address().port;
  const common = { allowRanges: ['127.0.0.0/8', '::1/128', '::ffff:127.0.0.0/104'], resolver: { hosts: { [MAPPED_NAME]: CANONICAL } } };
  const v4 = await startTestGateway(common);
  const v6 = await startTestGateway({ ...common, listen: { http: '[::1]:0', socks: '[::1]:0' } });
  // An IPv6 listener that takes IPv4 clients (node reports them as ::ffff:127.0.0.1, as on a
  // dual-stack `[::]` listener), without listening beyond loopback.
  const mapped = await startTestGateway({ ...common, listen: { http: '[::ffff:127.0.0.1]:0', socks: '[::ffff:127.0.0.1]:0' } });
  gateways.push(
    { name: 'IPv4 client', clientHost: '127.0.0.1', gw: v4 },
    { name: 'IPv6 client', clientHost: '::1', gw: v6 },
    { name: 'IPv4 client of an IPv6 listener', clientHost: '127.0.0.1', gw: mapped },
  );
});
afterAll(async () => {
  for (const g of gateways) await g.gw.stop();
  origin?.close();
  origin?.closeAllConnections();
  echo?.close();
});

/**
 * Community ID v1 of a flow 127.0.0.1:sport → 127.0.0.3:dport (TCP, or `proto` 17 for UDP), computed
 * here from the spec (seed 0, the smaller address first, base64 of sha1), not with the gateway's own
 * function.
 */
function communityIdV4(sport: number, dport: number, proto = 6): string {
  const m = Buffer.alloc(2 + 4 + 4 + 2 + 4);
  m.set([127, 0, 0, 1, 127, 0, 0, 3, proto, 0], 2);
  m.writeUInt16BE(sport, 12);
  m.writeUInt16BE(dport, 14);
  return `1:${createHash('sha1').update(m).digest('base64')}`;
}

async function open(host: string, port: number): Promise<Socket> {
  const s = connect(port, host);
  s.on('error', () => undefined);
  await once(s, 'connect');
  return s;
}

/** The closed record of the one flow `act` opens (matched by the client port it used). */
async function recordOf(gw: TestGateway, act: () => Promise<Socket>): Promise<FlowRecord> {
  const s = await act();
  const port = s.localPort;
  s.destroy();
  return gw.waitForClosed((r) => r.client.port === port);
}

const paths: Record<string, (gw: TestGateway, host: string, spelling: string) => Promise<Socket>> = {
  'absolute-URI': async (gw, host, spelling) => {
    const s = await open(host, gw.httpPort);
    s.write(`GET http://[${spelling}]:${originPort}/ HTTP/1.1\r\nHost: [${spelling}]:${originPort}\r\nConnection: close\r\n\r\n`);
    expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    return s;
  },
  CONNECT: async (gw, host, spelling) => {
    const s = await open(host, gw.httpPort);
    s.write(`CONNECT [${spelling}]:${originPort} HTTP/1.1\r\nHost: [${spelling}]:${originPort}\r\n\r\n`);
    expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect((await readUntil(s, 'ok')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    return s;
  },
  'SOCKS5 domain (ATYP 3)': async (gw, host, spelling) => {
    const name = Buffer.from(spelling, 'latin1');
    const port = Buffer.alloc(2);
    port.writeUInt16BE(originPort);
    return socksConnect(gw, host, Buffer.concat([Buffer.from([0x05, 0x01, 0x00, 0x03, name.length]), name, port]));
  },
  'SOCKS5 IPv6 (ATYP 4)': async (gw, host) => {
    const req = Buffer.alloc(4 + 16 + 2);
    req.set([0x05, 0x01, 0x00, 0x04]);
    req.set([0xff, 0xff, 127, 0, 0, 3], 4 + 10);
    req.writeUInt16BE(originPort, 20);
    return socksConnect(gw, host, req);
  },
};

async function socksConnect(gw: TestGateway, host: string, request: Buffer): Promise<Socket> {
  const s = await open(host, gw.socksPort);
  s.write(Buffer.from([0x05, 0x01, 0x00]));
  expect([...(await readBytes(s, 2))]).toEqual([0x05, 0x00]);
  s.write(request);
  // VER REP RSV ATYP BND.ADDR BND.PORT: 10 bytes for an IPv4 BND.ADDR, 22 for IPv6.
  let reply = await readBytes(s, 10);
  if (reply[3] === 0x04 && reply.length < 22) reply = Buffer.concat([reply, await readBytes(s, 22 - reply.length)]);
  expect(reply[1]).toBe(0x00);
  return s;
}

describe('an IPv4-mapped destination in the flow records', () => {
  for (const g of [0, 1, 2]) {
    it(`one destination.ip, host and communityId for every path and spelling (${['IPv4 client', 'IPv6 client', 'IPv4 client of an IPv6 listener'][g]})`, async () => {
      const { gw, clientHost } = gateways[g] as (typeof gateways)[number];
      const seen: Array<{ how: string; ip: string | null; host: string | null; cid: string | null; client: string; port: number }> = [];
      for (const [how, act] of Object.entries(paths)) {
        for (const spelling of how.includes('ATYP 4') ? [CANONICAL] : SPELLINGS) {
          const rec = await recordOf(gw, () => act(gw, clientHost, spelling));
          expect(rec.verdict, `${how} ${spelling}`).toBe('allow');
          expect(rec.connected, `${how} ${spelling}`).toBe(true);
          seen.push({ how: `${how} ${spelling}`, ip: rec.destination.ip, host: rec.destination.host, cid: rec.communityId, client: rec.client.ip, port: rec.client.port });
        }
      }
      for (const s of seen) {
        expect(s.ip, s.how).toBe(CANONICAL);
        expect(s.host, s.how).toBe(CANONICAL);
        expect(s.client, s.how).toBe(clientHost);
      }
      // Each flow has its own client port, so the hashes differ from flow to flow: each must be the
      // hash of its tuple, whichever spelling of the address is hashed (the same 16 bytes).
      // The same flow to the dotted address: the mapped spellings must hash as it does.
      const dotted = await recordOf(gw, async () => {
        const s = await open(clientHost, gw.httpPort);
        s.write(`CONNECT 127.0.0.3:${originPort} HTTP/1.1\r\nHost: 127.0.0.3:${originPort}\r\n\r\n`);
        expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
        return s;
      });
      expect(dotted.destination.ip).toBe('127.0.0.3');
      if (clientHost === '::1') {
        // An IPv6 client to an IPv4 destination (the dial is IPv4 on the wire whichever spelling
        // named it): no one packet's pair, so none (it was an IPv6 pair, ::1 ↔ ::ffff:127.0.0.3).
        expect(dotted.communityId).toBeNull();
        for (const s of seen) expect(s.cid, s.how).toBeNull();
      } else {
        // An IPv4 client: the pair an IPv4 destination's flow hashes (it was null: two families).
        expect(dotted.communityId).toBe(communityIdV4(dotted.client.port, originPort));
        for (const s of seen) expect(s.cid, s.how).toBe(communityIdV4(s.port, originPort));
      }
    });
  }
});

// A host rule naming the address matched only the spelling the policy normalised it to: the URL
// parser's `::ffff:7f00:3`, so a SOCKS5 IPv6 request (`::ffff:127.0.0.3`) was refused not-allowlisted.
describe('a host rule naming an IPv4-mapped address', () => {
  for (const rule of ['[::ffff:7f00:3]', '[::ffff:127.0.0.3]']) {
    it(`${rule} admits every path and spelling of it (enforce)`, async () => {
      const gw = await startTestGateway({ mode: 'enforce', allowRanges: ['::ffff:127.0.0.0/104'], roles: { any: { allow: [{ host: rule }] } } });
      try {
        for (const [how, act] of Object.entries(paths)) {
          for (const spelling of how.includes('ATYP 4') ? [CANONICAL] : SPELLINGS) {
            const rec = await recordOf(gw, () => act(gw, '127.0.0.1', spelling));
            expect(rec.verdict, `${how} ${spelling}`).toBe('allow');
            expect(rec.matchedRule?.role, `${how} ${spelling}`).toBe('any');
          }
        }
      } finally {
        await gw.stop();
      }
    });
  }
});

/** A SOCKS5 UDP datagram naming 127.0.0.3 by ATYP 4, `::ffff:127.0.0.3` (the `socks` client would send ATYP 1). */
function mappedFrame(port: number, data: Buffer): Buffer {
  const f = Buffer.alloc(3 + 1 + 16 + 2 + data.length);
  f[3] = 0x04;
  f.set([0xff, 0xff, 127, 0, 0, 3], 4 + 10);
  f.writeUInt16BE(port, 20);
  data.copy(f, 22);
  return f;
}

/** A SOCKS5 UDP datagram naming `name` by ATYP 3 (any text: the `socks` client would send an IP literal as ATYP 1 or 4). */
function nameFrame(name: string, port: number, data: Buffer): Buffer {
  const n = Buffer.from(name, 'latin1');
  const f = Buffer.alloc(3 + 2 + n.length + 2 + data.length);
  f[3] = 0x03;
  f[4] = n.length;
  n.copy(f, 5);
  f.writeUInt16BE(port, 5 + n.length);
  data.copy(f, 7 + n.length);
  return f;
}

const udpFrames: Record<string, { frame: (port: number, data: Buffer) => Buffer; host: string }> = {
  'ATYP 1 127.0.0.3': { frame: (port, data) => udpFrame('127.0.0.3', port, data), host: '127.0.0.3' },
  'ATYP 4 ::ffff:127.0.0.3': { frame: mappedFrame, host: CANONICAL },
  'ATYP 3 ::ffff:7f00:3': { frame: (port, data) => nameFrame('::ffff:7f00:3', port, data), host: CANONICAL },
  [`ATYP 3 ${MAPPED_NAME}`]: { frame: (port, data) => nameFrame(MAPPED_NAME, port, data), host: MAPPED_NAME },
};

// The relay sends to a mapped destination as IPv4 (127.0.0.3); its record and its alerts name it as
// every TCP path does. The Community ID of an IPv4 client's association hashes the IPv4 pair.
describe('a SOCKS5 UDP association to an IPv4-mapped destination', () => {
  const cleanups: Cleanups = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()?.();
  });

  for (const g of [0, 1, 2]) {
    it(`records it as TCP does, and a Community ID (${['IPv4 client', 'IPv6 client', 'IPv4 client of an IPv6 listener'][g]})`, async () => {
      const { gw, clientHost } = gateways[g] as (typeof gateways)[number];
      const isV6 = clientHost === '::1';
      for (const [how, { frame, host }] of Object.entries(udpFrames)) {
        const client = await udpSocket(cleanups, isV6 ? 'udp6' : 'udp4');
        const a = await associate(gw, client, cleanups);
        const reply = nextReply(client);
        await sendTo(client, frame(echoPort, Buffer.from(how)), a.relay);
        expect((await reply).data.toString(), how).toBe(`echo:${how}`);
        a.control.destroy();
        const port = client.address().port;
        const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === port);
        expect(rec.verdict, how).toBe('allow');
        expect(rec.client.ip, how).toBe(clientHost);
        const ip = how.startsWith('ATYP 1') ? '127.0.0.3' : CANONICAL;
        expect(rec.destination, how).toEqual({ host, ip, port: echoPort });
        // From an IPv4 client every spelling is the pair 127.0.0.1 ↔ 127.0.0.3, the ATYP 1 one's; from
        // an IPv6 client every spelling, the mapped ones as 127.0.0.3, is of two families (null).
        if (!isV6) expect(rec.communityId, how).toBe(communityIdV4(port, echoPort, 17));
        else expect(rec.communityId, how).toBeNull();
      }
    });
  }

  it('its alerts name each destination as the record names it (bulk-upload, per destination)', async () => {
    const BUDGET = 8 * 1024;
    const gw = await startTestGateway({
      allowRanges: ['127.0.0.0/8', '::ffff:127.0.0.0/104'],
      resolver: { hosts: { [MAPPED_NAME]: CANONICAL } },
      detection: { sampleIntervalMs: 50, detectors: { 'an0080.bulk-upload': { action: 'flag', bytesOut: BUDGET, minRatio: 10, storageBytesOut: BUDGET } } },
    });
    try {
      // Two silent sinks on 127.0.0.3: each destination's bytes cross the budget on their own.
      const sinks: Array<{ port: number; arrived: () => number }> = [];
      for (let i = 0; i < 2; i++) {
        const s = await udpSocket(cleanups, 'udp4', '127.0.0.3');
        let arrived = 0;
        s.on('message', (m: Buffer) => {
          arrived += m.length;
        });
        sinks.push({ port: s.address().port, arrived: () => arrived });
      }
      const [byAddress, byName] = sinks as [(typeof sinks)[number], (typeof sinks)[number]];
      const client = await udpSocket(cleanups);
      const a = await associate(gw, client, cleanups);
      for (let i = 1; i <= 4; i++) {
        await sendTo(client, mappedFrame(byAddress.port, Buffer.alloc(3000, 1)), a.relay);
        await sendTo(client, nameFrame(MAPPED_NAME, byName.port, Buffer.alloc(3000, 2)), a.relay);
        await until(`datagrams ${i} at the sinks`, () => byAddress.arrived() === i * 3000 && byName.arrived() === i * 3000);
      }
      await until('an alert per destination', () => gw.alerts.list().filter((x) => x.detector === 'an0080.bulk-upload').length === 2);
      a.control.destroy();
      const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === client.address().port);
      expect(rec.destination).toEqual({ host: CANONICAL, ip: CANONICAL, port: byAddress.port });
      const named = gw.alerts
        .list()
        .filter((x) => x.detector === 'an0080.bulk-upload')
        .map((x) => x.destination)
        .sort((x, y) => (x?.port ?? 0) - (y?.port ?? 0));
      const want = [
        { host: CANONICAL, ip: CANONICAL, port: byAddress.port },
        { host: MAPPED_NAME, ip: CANONICAL, port: byName.port },
      ].sort((x, y) => x.port - y.port);
      expect(named).toEqual(want);
    } finally {
      await gw.stop();
    }
  });
});
