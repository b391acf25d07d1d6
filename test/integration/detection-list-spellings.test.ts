/**
 * A detection list's domain (`detection.lists.proxywareDomains`, `storageDomains`) is a host pattern,
 * matched in the form the data plane gives a destination, whatever spelling the list or the client
 * used. Before, list entries were only lower-cased: `pröxy.test` never matched `xn--prxy-6qa.test`
 * (every path gives the punycode form), `[::FFFF:7F00:3]` never matched anything, and `127.0.0.3` did
 * not match `[::ffff:127.0.0.3]`, which dials the same host. With `an0081.proxyware` on `action:
 * block`, each of those went through (reproduced: 200 / REP 0 / relayed on every path, 32 of the 32
 * attempts below that must be refused). Now each is refused by `an0081.proxyware` on the absolute-URI, CONNECT, SOCKS5
 * ATYP 1/3/4 and SOCKS5 UDP paths, and a list entry that is no host pattern (`2130706435`, `*`) is a
 * validation error instead of an entry that silently never matches.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Resolver } from '../../gateway/context.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { loadConfig } from '../../policy/load-config.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpSocket } from '../helpers/socks-udp.ts';
import { readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

/** Names the test resolver answers, all with the origin's address. */
const NAMES = new Set(['xn--prxy-6qa.test', 'sub.xn--prxy-6qa.test', 'other.test']);
const resolver: Resolver = {
  lookup: async (host) => {
    if (!NAMES.has(host)) throw new GatewayError('EGW_DNS_FAILED', `${host}: no such name`);
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

async function gatewayListing(entries: string[]): Promise<TestGateway> {
  const gw = await startTestGateway(
    { mode: 'enforce', detection: { lists: { proxywareDomains: entries }, detectors: { 'an0081.proxyware': { action: 'block' } }, quarantineSec: 0 } },
    { resolver },
  );
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

/** SOCKS5 ATYP ADDR PORT for a destination: ATYP 1 and 4 from bytes, ATYP 3 from a name. */
function socksAddress(atyp: 1 | 3 | 4, host: string, port: number): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  if (atyp === 1) return Buffer.concat([Buffer.from([1, ...host.split('.').map(Number)]), p]);
  if (atyp === 4) {
    // Only the IPv4-mapped form is needed here: ::ffff:a.b.c.d.
    const v6 = Buffer.alloc(16);
    v6.set([0xff, 0xff, ...host.split('.').map(Number)], 10);
    return Buffer.concat([Buffer.from([4]), v6, p]);
  }
  const name = Buffer.from(host, 'latin1');
  return Buffer.concat([Buffer.from([3, name.length]), name, p]);
}

/** What one path answers for one destination spelling: the status, the SOCKS REP, or relayed / refused. */
type Path = (gw: TestGateway, spelling: Spelling) => Promise<string>;
interface Spelling {
  /** As an HTTP authority's host, or null when HTTP cannot say it this way. */
  http: string | null;
  /** As a SOCKS5 address, or null. */
  socks: { atyp: 1 | 3 | 4; host: string } | null;
}

async function httpStatus(gw: TestGateway, head: string): Promise<string> {
  const s = await open(gw.httpPort);
  s.write(head);
  return (await readUntil(s, '\r\n')).toString('latin1').slice(9, 12);
}

const paths: Record<string, Path> = {
  'absolute-URI': (gw, sp) => httpStatus(gw, `GET http://${sp.http}:${originPort}/ HTTP/1.1\r\nHost: ${sp.http}:${originPort}\r\nConnection: close\r\n\r\n`),
  CONNECT: (gw, sp) => httpStatus(gw, `CONNECT ${sp.http}:${originPort} HTTP/1.1\r\nHost: ${sp.http}:${originPort}\r\n\r\n`),
  'SOCKS5 CONNECT': async (gw, sp) => {
    const { atyp, host } = sp.socks as NonNullable<Spelling['socks']>;
    const s = await open(gw.socksPort);
    s.write(Buffer.from([5, 1, 0]));
    expect([...(await readBytes(s, 2))]).toEqual([5, 0]);
    s.write(Buffer.concat([Buffer.from([5, 1, 0]), socksAddress(atyp, host, originPort)]));
    const reply = await readBytes(s, 10);
    return `REP ${reply[1]}`;
  },
  'SOCKS5 UDP': async (gw, sp) => {
    const { atyp, host } = sp.socks as NonNullable<Spelling['socks']>;
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    let isRelayed = false;
    client.on('message', () => {
      isRelayed = true;
    });
    const refusal = (): TestGateway['logs'][number] | undefined => gw.logs.find((l) => l.msg === 'socks5 udp destination refused' && l['client'] === `127.0.0.1:${client.address().port}`);
    await sendTo(client, Buffer.concat([Buffer.from([0, 0, 0]), socksAddress(atyp, host, echoPort), Buffer.from('x')]), a.relay);
    await until('the datagram relayed or refused', () => isRelayed || refusal() !== undefined, 10_000);
    return isRelayed ? 'relayed' : `refused: ${String(refusal()?.['reason'])}`;
  },
};

/** The answers a path gives when an0081.proxyware refuses (UDP: the refusal names it). */
const REFUSED: Record<string, RegExp> = { 'absolute-URI': /^403$/, CONNECT: /^403$/, 'SOCKS5 CONNECT': /^REP 2$/, 'SOCKS5 UDP': /^refused: .*proxyware/ };
const ADMITTED: Record<string, RegExp> = { 'absolute-URI': /^200$/, CONNECT: /^200$/, 'SOCKS5 CONNECT': /^REP 0$/, 'SOCKS5 UDP': /^relayed$/ };

async function answers(gw: TestGateway, spellings: Record<string, Spelling>): Promise<Array<{ how: string; path: string; answer: string }>> {
  const out: Array<{ how: string; path: string; answer: string }> = [];
  for (const [how, sp] of Object.entries(spellings)) {
    for (const [path, run] of Object.entries(paths)) {
      if ((path.startsWith('SOCKS5') ? sp.socks : sp.http) === null) continue;
      out.push({ how, path, answer: await run(gw, sp) });
    }
  }
  return out;
}

const MAPPED: Record<string, Spelling> = {
  '[::ffff:127.0.0.3]': { http: '[::ffff:127.0.0.3]', socks: { atyp: 4, host: '127.0.0.3' } },
  '[::ffff:7f00:3]': { http: '[::ffff:7f00:3]', socks: { atyp: 3, host: '::ffff:7f00:3' } },
};
const PLAIN: Record<string, Spelling> = {
  '127.0.0.3': { http: '127.0.0.3', socks: { atyp: 1, host: '127.0.0.3' } },
  '2130706435': { http: '2130706435', socks: { atyp: 3, host: '2130706435' } },
};

describe('a detection list entry in any spelling refuses its destination in any spelling', () => {
  it('an IDN entry refuses the punycode name (and its subdomains) on every path; another name goes through', async () => {
    const gw = await gatewayListing(['pröxy.test']);
    const refused = await answers(gw, {
      'xn--prxy-6qa.test': { http: 'xn--prxy-6qa.test', socks: { atyp: 3, host: 'xn--prxy-6qa.test' } },
      'SUB.XN--PRXY-6QA.TEST.': { http: 'SUB.XN--PRXY-6QA.TEST.', socks: { atyp: 3, host: 'SUB.XN--PRXY-6QA.TEST.' } },
    });
    expect(refused).toHaveLength(8);
    for (const r of refused) expect(r.answer, `${r.path} ${r.how}`).toMatch(REFUSED[r.path] as RegExp);
    const admitted = await answers(gw, { 'other.test': { http: 'other.test', socks: { atyp: 3, host: 'other.test' } } });
    for (const r of admitted) expect(r.answer, `${r.path} ${r.how}`).toMatch(ADMITTED[r.path] as RegExp);
  });

  it('an IPv4 entry refuses its IPv4-mapped spellings, and an IPv6 entry in any spelling its address however it is named', async () => {
    for (const [entry, spellings] of [
      ['127.0.0.3', MAPPED],
      ['[::FFFF:7F00:3]', { ...PLAIN, ...MAPPED }],
    ] as const) {
      const gw = await gatewayListing([entry]);
      const got = await answers(gw, spellings);
      expect(got.length).toBeGreaterThanOrEqual(8);
      for (const r of got) expect(r.answer, `entry ${entry}: ${r.path} ${r.how}`).toMatch(REFUSED[r.path] as RegExp);
      // The records say which detector refused.
      const records = gw.closed.filter((c) => c.protocol !== 'socks5-udp');
      expect(records.length).toBeGreaterThan(0);
      for (const rec of records) expect([rec.verdict, rec.detector], JSON.stringify(rec.destination)).toEqual(['block', 'an0081.proxyware']);
    }
  });

  it('an entry that is no host pattern is a validation error, not an entry that never matches', () => {
    for (const bad of ['2130706435', '*', 'a*.test']) {
      const r = loadConfig(JSON.stringify({ detection: { lists: { proxywareDomains: [bad], storageDomains: [bad] } } }));
      expect(r.ok, bad).toBe(false);
      if (!r.ok) expect(r.errors.map((e) => e.path).sort(), bad).toEqual(['detection.lists.proxywareDomains[0]', 'detection.lists.storageDomains[0]']);
    }
    const good = loadConfig(JSON.stringify({ detection: { lists: { proxywareDomains: ['pröxy.test', '*.Example.Test.', '[::ffff:7f00:3]', '10.0.0.1'] } } }));
    expect(good.ok).toBe(true);
  });
});
