/**
 * The unspecified address is judged as the loopback address Linux dials for it: `0.0.0.0` (and
 * `::ffff:0.0.0.0` on a dual-stack socket) connects to 127.0.0.1, `::` to ::1. With
 * `deny.privateRanges: false` and loopback denied in `deny.cidrs` (an operator letting clients reach
 * internal ranges but not this host), those spellings are refused `deny-range` on every path, and a
 * service on this host's loopback sees nothing. Before, `deny.cidrs` was matched against the literal
 * only: CONNECT, absolute-URI and SOCKS5 to 0.0.0.0, :: and ::ffff:0.0.0.0 were 200 / 0x00 and
 * reached the loopback listeners (10 connections), and a SOCKS5 UDP datagram to 0.0.0.0 reached
 * the loopback echo.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

let gw: TestGateway;
let port = 0;
const servers: Server[] = [];
let echo: UdpSocket;
/** Connections and datagrams that reached this host's loopback services: must stay empty. */
const reached: string[] = [];
const isIPv6 = await ipv6LoopbackAvailable();
const hasIPv6 = skipNotice(isIPv6, 'deny-cidrs-unspecified (::)', 'needs the IPv6 loopback (::1)');
const cleanups: Cleanups = [];

async function listen(host: string): Promise<void> {
  const s = createServer((c) => {
    reached.push(`tcp ${host}`);
    c.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok');
  });
  s.listen(port, host);
  await once(s, 'listening');
  port = (s.address() as { port: number }).port;
  servers.push(s);
}

beforeAll(async () => {
  await listen('127.0.0.1');
  if (hasIPv6) await listen('::1');
  echo = createSocket('udp4');
  echo.on('message', (m, from) => {
    reached.push(`udp ${m.toString('latin1')}`);
    echo.send(m, from.port, from.address);
  });
  echo.bind(port, '127.0.0.1');
  await once(echo, 'listening');
  gw = await startTestGateway({
    allowRanges: [],
    deny: { privateRanges: false, cidrs: ['127.0.0.0/8', '::1/128'] },
    resolver: { hosts: { 'zero.example.test': '0.0.0.0' } },
  });
});

afterAll(async () => {
  for (const c of cleanups) await c();
  await gw?.stop();
  for (const s of servers) s.close();
  echo?.close();
});

/** The record of the next flow to `host` closed after `earlier`: refused deny-range, nothing sent. */
async function expectRefused(earlier: Set<FlowRecord>, host: string): Promise<void> {
  const rec = await gw.waitForClosed((r) => !earlier.has(r) && r.destination.host === host && r.destination.port === port);
  expect(rec.verdict).toBe('block');
  expect(rec.reason).toBe('deny-range');
  expect(rec.closeReason).toBe('deny-range');
  expect(rec.bytesOut).toBe(0);
  expect(reached).toEqual([]);
}

const HTTP_HOSTS = [
  { authority: '0.0.0.0', recorded: '0.0.0.0', v6: false },
  { authority: '0', recorded: '0.0.0.0', v6: false },
  { authority: '[::ffff:0.0.0.0]', recorded: '::ffff:0.0.0.0', v6: false },
  { authority: 'zero.example.test', recorded: 'zero.example.test', v6: false },
  { authority: '[::]', recorded: '::', v6: true },
];

describe('loopback in deny.cidrs, privateRanges off: the unspecified address', () => {
  for (const h of HTTP_HOSTS) {
    it.runIf(!h.v6 || hasIPv6)(`CONNECT ${h.authority}: 403 deny-range, nothing reaches loopback`, async () => {
      const earlier = new Set(gw.closed);
      const s = await rawConnect(gw.httpPort);
      s.on('error', () => undefined);
      s.write(`CONNECT ${h.authority}:${port} HTTP/1.1\r\nHost: ${h.authority}:${port}\r\n\r\n`);
      const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
      s.destroy();
      expect(head).toMatch(/^HTTP\/1\.1 403 /);
      await expectRefused(earlier, h.recorded);
    });

    it.runIf(!h.v6 || hasIPv6)(`GET http://${h.authority}: 403 deny-range, nothing reaches loopback`, async () => {
      const earlier = new Set(gw.closed);
      const { response } = await rawExchange(gw.httpPort, `GET http://${h.authority}:${port}/ HTTP/1.1\r\nHost: ${h.authority}:${port}\r\nConnection: close\r\n\r\n`);
      expect(response).toMatch(/^HTTP\/1\.1 403 /);
      expect(response).toContain('"reason":"deny-range"');
      await expectRefused(earlier, h.recorded);
    });
  }

  const SOCKS_ADDRESSES = [
    { name: 'ATYP 1 0.0.0.0', addr: Buffer.from([1, 0, 0, 0, 0]), recorded: '0.0.0.0', v6: false },
    { name: 'ATYP 3 "0"', addr: Buffer.from([3, 1, 0x30]), recorded: '0.0.0.0', v6: false },
    { name: 'ATYP 4 ::ffff:0.0.0.0', addr: Buffer.concat([Buffer.from([4]), Buffer.from('00000000000000000000ffff00000000', 'hex')]), recorded: '::ffff:0.0.0.0', v6: false },
    { name: 'ATYP 4 ::', addr: Buffer.concat([Buffer.from([4]), Buffer.alloc(16)]), recorded: '::', v6: true },
  ];
  for (const a of SOCKS_ADDRESSES) {
    it.runIf(!a.v6 || hasIPv6)(`SOCKS5 CONNECT ${a.name}: 0x02, nothing reaches loopback`, async () => {
      const earlier = new Set(gw.closed);
      const s = await rawConnect(gw.socksPort);
      s.on('error', () => undefined);
      s.write(Buffer.from([5, 1, 0]));
      expect(await readBytes(s, 2)).toEqual(Buffer.from([5, 0]));
      const portBytes = Buffer.alloc(2);
      portBytes.writeUInt16BE(port);
      s.write(Buffer.concat([Buffer.from([5, 1, 0]), a.addr, portBytes]));
      const reply = await readBytes(s, 4);
      s.destroy();
      expect(reply[1]).toBe(2);
      await expectRefused(earlier, a.recorded);
    });
  }

  it('SOCKS5 UDP datagram to 0.0.0.0: refused deny-range, the loopback echo gets nothing', async () => {
    const earlier = new Set(gw.closed);
    const client = await udpSocket(cleanups);
    const assoc = await associate(gw, client, cleanups);
    await sendTo(client, udpFrame('0.0.0.0', port, Buffer.from('to the unspecified address')), assoc.relay);
    await expectRefused(earlier, '0.0.0.0');
  });
});
