/**
 * An allow entry naming an IPv4 address admits that address's IPv4-mapped IPv6 spellings, and one
 * naming a mapped address admits its IPv4 spellings: a dial to `::ffff:127.0.0.3` reaches 127.0.0.3.
 * Before, `host: 127.0.0.3` refused `[::ffff:127.0.0.3]`, `[::ffff:7f00:3]` and a SOCKS5 ATYP 4
 * ::ffff:127.0.0.3 (`not-allowlisted`, enforce mode), and `host: "[::ffff:127.0.0.3]"` refused
 * `127.0.0.3`, `2130706435`, `0x7f.3` and SOCKS5 ATYP 1 (reproduced through the absolute-URI, CONNECT,
 * SOCKS5 CONNECT and SOCKS5 UDP paths: 28 of the 28 attempts below refused; deny-range, CIDR entries
 * and the detectors already took the mapped form for its IPv4 address). Names stay names: a name
 * that resolves to the address is admitted by neither rule, and the record keeps the client's
 * spelling in RFC 5952 text (`::ffff:127.0.0.3`) and names the rule as written.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Resolver } from '../../gateway/context.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpSocket } from '../helpers/socks-udp.ts';
import { readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

/** The one name the test resolver knows: it resolves to the address the rules name. */
const NAME = 'origin.example.test';
const resolver: Resolver = {
  lookup: async (host) => {
    if (host !== NAME) throw new GatewayError('EGW_DNS_FAILED', `${host}: no such name`);
    return ['127.0.0.3'];
  },
};

let origin: Server;
let originPort: number;
let echo: UdpSocket;
let echoPort: number;
const cleanups: Cleanups = [];

beforeAll(async () => {
  origin = createServer((_req, res) => res.end('ok'));
  origin.listen(0, '127.0.0.3');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  echo = createSocket('udp4');
  echo.on('message', (m, r) => echo.send(m, r.port, r.address));
  echo.bind(0, '127.0.0.3');
  await once(echo, 'listening');
  echoPort = echo.address().port;
});
afterAll(() => {
  origin?.close();
  origin?.closeAllConnections();
  echo?.close();
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function gatewayAllowing(host: string): Promise<TestGateway> {
  const gw = await startTestGateway({ mode: 'enforce', roles: { r: { allow: [{ host }] } }, defaultRoles: ['r'] }, { resolver });
  cleanups.push(() => gw.stop());
  return gw;
}

async function open(port: number): Promise<Socket> {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => undefined);
  await once(s, 'connect');
  cleanups.push(() => s.destroy());
  return s;
}

interface Spelling {
  /** As an HTTP authority's host, or null when HTTP cannot say it this way. */
  http: string | null;
  /** As a SOCKS5 address: ATYP 1 dotted, ATYP 4 an IPv4-mapped address (its IPv4 part), ATYP 3 a name. */
  socks: { atyp: 1 | 3 | 4; host: string } | null;
}

function socksAddress(sp: NonNullable<Spelling['socks']>, port: number): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  if (sp.atyp === 1) return Buffer.concat([Buffer.from([1, ...sp.host.split('.').map(Number)]), p]);
  if (sp.atyp === 4) {
    const v6 = Buffer.alloc(16);
    v6.set([0xff, 0xff, ...sp.host.split('.').map(Number)], 10);
    return Buffer.concat([Buffer.from([4]), v6, p]);
  }
  const name = Buffer.from(sp.host, 'latin1');
  return Buffer.concat([Buffer.from([3, name.length]), name, p]);
}

async function httpStatus(gw: TestGateway, head: string): Promise<string> {
  const s = await open(gw.httpPort);
  s.write(head);
  return (await readUntil(s, '\r\n')).toString('latin1').slice(9, 12);
}

/** Each path's answer for one spelling: an HTTP status, a SOCKS REP, or the datagram's fate. */
const paths: Record<string, (gw: TestGateway, sp: Spelling) => Promise<string>> = {
  'absolute-URI': (gw, sp) => httpStatus(gw, `GET http://${sp.http}:${originPort}/ HTTP/1.1\r\nHost: ${sp.http}:${originPort}\r\nConnection: close\r\n\r\n`),
  CONNECT: (gw, sp) => httpStatus(gw, `CONNECT ${sp.http}:${originPort} HTTP/1.1\r\nHost: ${sp.http}:${originPort}\r\n\r\n`),
  'SOCKS5 CONNECT': async (gw, sp) => {
    const s = await open(gw.socksPort);
    s.write(Buffer.from([5, 1, 0]));
    expect([...(await readBytes(s, 2))]).toEqual([5, 0]);
    s.write(Buffer.concat([Buffer.from([5, 1, 0]), socksAddress(sp.socks as NonNullable<Spelling['socks']>, originPort)]));
    return `REP ${(await readBytes(s, 10))[1]}`;
  },
  'SOCKS5 UDP': async (gw, sp) => {
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    let isRelayed = false;
    client.on('message', () => {
      isRelayed = true;
    });
    const refusal = (): TestGateway['logs'][number] | undefined => gw.logs.find((l) => l.msg === 'socks5 udp destination refused' && l['client'] === `127.0.0.1:${client.address().port}`);
    await sendTo(client, Buffer.concat([Buffer.from([0, 0, 0]), socksAddress(sp.socks as NonNullable<Spelling['socks']>, echoPort), Buffer.from('x')]), a.relay);
    await until('the datagram relayed or refused', () => isRelayed || refusal() !== undefined, 10_000);
    return isRelayed ? 'relayed' : `refused: ${String(refusal()?.['reason'])}`;
  },
};

const ADMITTED: Record<string, RegExp> = { 'absolute-URI': /^200$/, CONNECT: /^200$/, 'SOCKS5 CONNECT': /^REP 0$/, 'SOCKS5 UDP': /^relayed$/ };
const REFUSED: Record<string, RegExp> = { 'absolute-URI': /^403$/, CONNECT: /^403$/, 'SOCKS5 CONNECT': /^REP 2$/, 'SOCKS5 UDP': /^refused: .*not allowlisted/ };

async function expectAll(gw: TestGateway, spellings: Record<string, Spelling>, want: Record<string, RegExp>): Promise<number> {
  let n = 0;
  for (const [how, sp] of Object.entries(spellings)) {
    for (const [path, run] of Object.entries(paths)) {
      if ((path.startsWith('SOCKS5') ? sp.socks : sp.http) === null) continue;
      expect(await run(gw, sp), `${path} ${how}`).toMatch(want[path] as RegExp);
      n++;
    }
  }
  return n;
}

/** The closed record of the one flow `act` opens on a new HTTP connection (found by its client port). */
async function recordOf(gw: TestGateway, act: (s: Socket) => Promise<unknown>): Promise<FlowRecord> {
  const s = await open(gw.httpPort);
  await act(s);
  const port = s.localPort;
  s.destroy();
  return gw.waitForClosed((r) => r.client.port === port);
}

const MAPPED: Record<string, Spelling> = {
  '[::ffff:127.0.0.3]': { http: '[::ffff:127.0.0.3]', socks: { atyp: 4, host: '127.0.0.3' } },
  '[::ffff:7f00:3]': { http: '[::ffff:7f00:3]', socks: { atyp: 3, host: '::ffff:7f00:3' } },
};
const PLAIN: Record<string, Spelling> = {
  '127.0.0.3': { http: '127.0.0.3', socks: { atyp: 1, host: '127.0.0.3' } },
  '2130706435': { http: '2130706435', socks: { atyp: 3, host: '2130706435' } },
  '0x7f.3': { http: '0x7f.3', socks: null },
};
const BY_NAME: Record<string, Spelling> = { [NAME]: { http: NAME, socks: { atyp: 3, host: NAME } } };
/** Another address in the same spellings: not admitted by a rule for 127.0.0.3. */
const OTHER: Record<string, Spelling> = {
  '[::ffff:127.0.0.4]': { http: '[::ffff:127.0.0.4]', socks: { atyp: 4, host: '127.0.0.4' } },
  '127.0.0.4': { http: '127.0.0.4', socks: { atyp: 1, host: '127.0.0.4' } },
};

describe('an allow entry naming an IPv4 address or its IPv4-mapped form', () => {
  it('host: 127.0.0.3 admits the IPv4-mapped spellings on every path, not a name resolving to it nor another address', async () => {
    const gw = await gatewayAllowing('127.0.0.3');
    expect(await expectAll(gw, MAPPED, ADMITTED)).toBe(8);
    expect(await expectAll(gw, PLAIN, ADMITTED)).toBe(10);
    await expectAll(gw, BY_NAME, REFUSED);
    await expectAll(gw, OTHER, REFUSED);
    // The record keeps the spelling's RFC 5952 text and names the rule as written.
    const rec = await recordOf(gw, (s) => {
      s.write(`CONNECT [::ffff:7f00:3]:${originPort} HTTP/1.1\r\nHost: x\r\n\r\n`);
      return readUntil(s, '\r\n\r\n');
    });
    expect([rec.verdict, rec.destination.host, rec.destination.ip, rec.matchedRule?.entry]).toEqual(['allow', '::ffff:127.0.0.3', '::ffff:127.0.0.3', 'host=127.0.0.3']);
  });

  it('host: "[::ffff:127.0.0.3]" (or "[::FFFF:7F00:3]") admits the IPv4 spellings on every path, not a name resolving to it nor another address', async () => {
    for (const rule of ['[::ffff:127.0.0.3]', '[::FFFF:7F00:3]']) {
      const gw = await gatewayAllowing(rule);
      expect(await expectAll(gw, PLAIN, ADMITTED), rule).toBe(10);
      expect(await expectAll(gw, MAPPED, ADMITTED), rule).toBe(8);
      await expectAll(gw, BY_NAME, REFUSED);
      await expectAll(gw, OTHER, REFUSED);
      const rec = await recordOf(gw, (s) => {
        s.write(`GET http://2130706435:${originPort}/ HTTP/1.1\r\nHost: x\r\n\r\n`);
        return readUntil(s, 'ok');
      });
      expect([rec.verdict, rec.destination.host, rec.matchedRule?.entry], rule).toEqual(['allow', '127.0.0.3', `host=${rule}`]);
    }
  });
});
