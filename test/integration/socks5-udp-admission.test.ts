/**
 * The destinations of one SOCKS5 UDP association are admitted side by side, through the real
 * listener. Before, admission ran one destination at a time per association, so a name whose DNS
 * never answers held up every later destination for the resolver's timeout (reproduced: an echo by
 * IP literal or by `resolver.hosts` name answered 5,002–5,008 ms after a datagram to a dead name,
 * whether or not the dead name came first). Now up to 8 destinations are admitted at once, the
 * others queued in order. Lookups are held (test/helpers/socks-udp.ts heldResolver): a name the test
 * never answers is a DNS server that never answers, with no timeout to wait for.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SocksClient } from 'socks';
import { adminGet, startTestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, heldResolver, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const DEAD = 'a.dead.example.test';
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function echoServer(): Promise<UdpEcho> {
  const e = await startUdpEcho('udp4', Buffer.from('echo:'));
  cleanups.push(() => e.close());
  return e;
}

async function start() {
  const dns = heldResolver((h) => h.endsWith('.dead.example.test'));
  const gw = await startTestGateway({ resolver: { hosts: { 'echo.example.test': '127.0.0.1' } } }, { resolver: dns.resolver });
  cleanups.push(() => gw.stop());
  cleanups.push(() => dns.failAll());
  const client = await udpSocket(cleanups);
  const a = await associate(gw, client, cleanups);
  /** Every reply the client got, unwrapped: `host:port data`. */
  const replies: string[] = [];
  client.on('message', (m: Buffer) => {
    const f = SocksClient.parseUDPFrame(m);
    replies.push(`${f.remoteHost.host}:${f.remoteHost.port} ${f.data.toString()}`);
  });
  return { dns, gw, client, a, replies };
}

describe('a destination whose name does not resolve', () => {
  it('holds up no later destination, first or not: their replies come while its lookup is still unanswered', async () => {
    const { dns, gw, client, a, replies } = await start();
    const byIp = await echoServer();
    const byName = await echoServer();
    // First of the association: a name whose DNS never answers.
    await sendTo(client, udpFrame(DEAD, 53, Buffer.from('q1')), a.relay);
    await until('the dead lookup', () => dns.waiting.length === 1);
    // Then an IP literal: relayed (it opens the association's flow), in the order sent.
    await sendTo(client, udpFrame('127.0.0.1', byIp.port, Buffer.from('a')), a.relay);
    await sendTo(client, udpFrame('127.0.0.1', byIp.port, Buffer.from('b')), a.relay);
    await until('the replies by IP', () => replies.length === 2);
    expect(byIp.received.map((r) => r.data.toString())).toEqual(['a', 'b']);
    expect(replies).toEqual([`127.0.0.1:${byIp.port} echo:a`, `127.0.0.1:${byIp.port} echo:b`]);
    // …while the dead name's lookup is still unanswered.
    expect(dns.waiting.map((w) => w.host)).toEqual([DEAD]);
    // Another dead name once the association is open, then a `resolver.hosts` name: the same.
    await sendTo(client, udpFrame('b.dead.example.test', 53, Buffer.from('q2')), a.relay);
    await until('the second dead lookup', () => dns.waiting.length === 2);
    await sendTo(client, udpFrame('echo.example.test', byName.port, Buffer.from('c')), a.relay);
    await until('the reply by name', () => replies.length === 3);
    expect(replies[2]).toBe(`echo.example.test:${byName.port} echo:c`);
    // Both lookups are still unanswered: neither destination has been admitted yet.
    expect(dns.waiting.map((w) => w.host)).toEqual([DEAD, 'b.dead.example.test']);
    dns.failAll();
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.destination.port === byIp.port);
    // One record for the association, opened by the first destination admitted; each dead name refused once.
    expect(rec.destination).toEqual({ host: '127.0.0.1', ip: '127.0.0.1', port: byIp.port });
    expect(rec.bytesOut).toBe(3);
    expect(rec.reasons.join('\n')).toMatch(/2 destinations relayed, 2 refused/);
    const refused = gw.closed.filter((x) => x.protocol === 'socks5-udp' && x.destination.host?.endsWith('.dead.example.test'));
    expect(refused.map((x) => [x.destination.host, x.closeReason]).sort()).toEqual([
      [DEAD, 'dns-failed'],
      ['b.dead.example.test', 'dns-failed'],
    ]);
    expect(refused.every((x) => x.bytesOut === 0)).toBe(true);
  });
});

describe('lookups in flight per association', () => {
  it('are at most 8: the other names wait, in order, each looked up once; an IP literal waits for none', async () => {
    const { dns, gw, client, a, replies } = await start();
    const echo = await echoServer();
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('open')), a.relay);
    await until('the association open', () => replies.length === 1);
    // 12 names that do not answer, then a new destination by IP literal.
    const names = Array.from({ length: 12 }, (_, i) => `n${String(i).padStart(2, '0')}.dead.example.test`);
    for (const n of names) await sendTo(client, udpFrame(n, 53, Buffer.from(n)), a.relay);
    await until('8 lookups', () => dns.waiting.length === 8);
    const other = await echoServer();
    await sendTo(client, udpFrame('127.0.0.1', other.port, Buffer.from('x')), a.relay);
    // The IP literal needs no lookup: relayed while 8 lookups run and 4 names wait their turn.
    await until('its reply', () => replies.length === 2);
    expect(replies[1]).toBe(`127.0.0.1:${other.port} echo:x`);
    expect(other.received).toHaveLength(1);
    // 8 lookups at once, in the order the destinations came; the names' datagrams all held.
    expect(dns.waiting.map((w) => w.host)).toEqual(names.slice(0, 8));
    const heldBytes = async () => Number(/^gw_socks_udp_held_bytes (\S+)$/m.exec((await adminGet(gw, '/metrics')).text)?.[1]);
    const namesLen = names.reduce((n, h) => n + udpFrame(h, 53, Buffer.from(h)).length, 0);
    expect(await heldBytes()).toBe(namesLen);
    // Each answer lets the next waiting name in: never more than 8 at once, in order, each once.
    let most = 0;
    const looked: string[] = [];
    await until('every lookup', () => {
      most = Math.max(most, dns.waiting.length);
      for (const w of dns.waiting.splice(0, 1)) {
        looked.push(w.host);
        w.fail();
      }
      return looked.length === names.length;
    });
    expect(most).toBe(8);
    expect(looked).toEqual(names);
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.destination.port === echo.port);
    expect(rec.reasons.join('\n')).toMatch(/2 destinations relayed, 12 refused/);
  });
});
