/**
 * One destination asked for in several spellings on every path a client can take: absolute-URI,
 * CONNECT, SOCKS5 CONNECT and a SOCKS5 UDP datagram. The destinations are a loopback HTTP origin
 * answering `ok` and a UDP echo, both on 127.0.0.3; each path's answer is a string the caller matches
 * (an HTTP status, `REP n`, `relayed` or `refused: <reason>`). Used by the tests of how policy rules
 * and detection lists match spellings of one host (policy-mapped-host-rule, detection-list-spellings).
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { expect } from 'vitest';
import { readUntil } from '../integration/http-harness.ts';
import { readBytes } from '../integration/socks5-harness.ts';
import { type TestGateway, until } from './gateway.ts';
import { associate, type Cleanups, sendTo, udpSocket } from './socks-udp.ts';

/** The address the destinations listen on. */
export const DESTINATION_IP = '127.0.0.3';

export interface Spelling {
  /** As an HTTP authority's host, or null when HTTP cannot say it this way. */
  http: string | null;
  /** As a SOCKS5 address: ATYP 1 dotted, ATYP 4 an IPv4-mapped address (its IPv4 part), ATYP 3 a name. */
  socks: { atyp: 1 | 3 | 4; host: string } | null;
}

export type PathName = 'absolute-URI' | 'CONNECT' | 'SOCKS5 CONNECT' | 'SOCKS5 UDP';

/** What each path answers when the destination is admitted. */
export const ADMITTED: Record<PathName, RegExp> = { 'absolute-URI': /^200$/, CONNECT: /^200$/, 'SOCKS5 CONNECT': /^REP 0$/, 'SOCKS5 UDP': /^relayed$/ };

/** SOCKS5 ATYP ADDR PORT for a spelling. */
export function socksAddress(sp: NonNullable<Spelling['socks']>, port: number): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  if (sp.atyp === 1) return Buffer.concat([Buffer.from([1, ...sp.host.split('.').map(Number)]), p]);
  if (sp.atyp === 4) {
    // Only the IPv4-mapped form is needed: ::ffff:a.b.c.d.
    const v6 = Buffer.alloc(16);
    v6.set([0xff, 0xff, ...sp.host.split('.').map(Number)], 10);
    return Buffer.concat([Buffer.from([4]), v6, p]);
  }
  const name = Buffer.from(sp.host, 'latin1');
  return Buffer.concat([Buffer.from([3, name.length]), name, p]);
}

export interface SpellingTargets {
  originPort: number;
  echoPort: number;
  /** A client connection to the gateway's `port`, destroyed with the case's cleanups. */
  open(port: number): Promise<Socket>;
  /** Each path's answer for one spelling. */
  readonly paths: Record<PathName, (gw: TestGateway, sp: Spelling) => Promise<string>>;
  /** Every path the spelling can be said on, asked in turn; each answer must match `want`: how many were asked. */
  expectAll(gw: TestGateway, spellings: Record<string, Spelling>, want: Record<PathName, RegExp>): Promise<number>;
  close(): void;
}

/** Start the origin and the echo; sockets and associations a path opens go on `cleanups`. */
export async function startSpellingTargets(cleanups: Cleanups): Promise<SpellingTargets> {
  const origin: Server = createServer((_req, res) => res.end('ok'));
  origin.listen(0, DESTINATION_IP);
  await once(origin, 'listening');
  const originPort = (origin.address() as { port: number }).port;
  const echo: UdpSocket = createSocket('udp4');
  echo.on('message', (m, r) => echo.send(m, r.port, r.address));
  echo.bind(0, DESTINATION_IP);
  await once(echo, 'listening');
  const echoPort = echo.address().port;

  const open = async (port: number): Promise<Socket> => {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    await once(s, 'connect');
    cleanups.push(() => s.destroy());
    return s;
  };
  const httpStatus = async (gw: TestGateway, head: string): Promise<string> => {
    const s = await open(gw.httpPort);
    s.write(head);
    return (await readUntil(s, '\r\n')).toString('latin1').slice(9, 12);
  };
  const paths: SpellingTargets['paths'] = {
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
  return {
    originPort,
    echoPort,
    open,
    paths,
    async expectAll(gw, spellings, want) {
      let n = 0;
      for (const [how, sp] of Object.entries(spellings)) {
        for (const [path, run] of Object.entries(paths) as Array<[PathName, (gw: TestGateway, sp: Spelling) => Promise<string>]>) {
          if ((path.startsWith('SOCKS5') ? sp.socks : sp.http) === null) continue;
          expect(await run(gw, sp), `${path} ${how}`).toMatch(want[path]);
          n++;
        }
      }
      return n;
    },
    close() {
      origin.close();
      origin.closeAllConnections();
      echo.close();
    },
  };
}
