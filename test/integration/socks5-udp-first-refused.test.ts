/**
 * A SOCKS5 UDP association whose first destination is refused, through the real listener with the
 * `socks` client. Before, only a `rate-limit` refusal ended the association: with the identity
 * quarantined (enforce) the first destination was refused `quarantine` and the association went on
 * without a flow, so each datagram to a new destination was admitted again, refused again and left
 * one more refused record (reproduced: 1 + 12 datagrams to 13 ports, 13 `quarantine` records, the
 * control connection still open). A first destination killed while it was admitted (admin DELETE)
 * left the association open the same way, and a sweep of destinations the policy refuses left a
 * record per datagram for the association's life (reproduced: 100 ports not allowlisted, 100
 * records, still open). Now quarantine, a connect-time detector and a kill end the association as a
 * refused CONNECT is closed (one record), and an association ends after 64 refused destinations.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import type { ProcessInfo } from '../../policy/types.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

/** A proxyware provider's name (policy/lists.ts), pointed at a loopback echo: refused `an0081.proxyware` in enforce mode. */
const PROVIDER = 'edge.honeygain.com';
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function echoServer(): Promise<UdpEcho> {
  const e = await startUdpEcho('udp4', Buffer.from('echo:'));
  cleanups.push(() => e.close());
  return e;
}

/** Whether `socket` closes within `ms` (false: still open then). */
function closesWithin(socket: Socket, ms: number): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** The records of the association whose client datagram socket is at `port`. */
function recordsOf(gw: TestGateway, port: number) {
  return gw.closed.filter((r) => r.protocol === 'socks5-udp' && r.client.port === port);
}

describe('an association whose first destination is refused', () => {
  it('enforce, identity quarantined: ends with its control connection, one quarantine record, however many destinations follow', async () => {
    const gw = await startTestGateway({ mode: 'enforce', resolver: { hosts: { [PROVIDER]: '127.0.0.1' } } });
    cleanups.push(() => gw.stop());
    const echo = await echoServer();
    // A first association's first destination is a proxyware provider: refused by the detector,
    // which quarantines the identity; that ends this association too (every later one would be refused).
    const first = await udpSocket(cleanups);
    const a = await associate(gw, first, cleanups);
    await sendTo(first, udpFrame(PROVIDER, echo.port, Buffer.from('to the provider')), a.relay);
    expect(await closesWithin(a.control, 3000)).toBe(true);
    expect(recordsOf(gw, first.address().port).map((r) => [r.verdict, r.closeReason])).toEqual([['block', 'detector']]);

    // The quarantined identity associates again: its first destination, harmless, is refused.
    const client = await udpSocket(cleanups);
    const b = await associate(gw, client, cleanups);
    const closed = closesWithin(b.control, 3000);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('first')), b.relay);
    await gw.waitForClosed((r) => r.client.port === client.address().port);
    // Datagrams to new destinations right after: before, each was admitted, refused, recorded.
    for (let i = 1; i <= 12; i++) await sendTo(client, udpFrame('127.0.0.1', echo.port + i, Buffer.from(`d${i}`)), b.relay).catch(() => {});
    expect(await closed).toBe(true);
    await new Promise((r) => setTimeout(r, 200));
    expect(recordsOf(gw, client.address().port).map((r) => [r.verdict, r.reason, r.closeReason, r.bytesOut])).toEqual([['block', 'quarantine', 'quarantine', 0]]);
    expect(echo.received).toEqual([]);
  });

  it('killed while it is admitted (admin DELETE): the association ends, one record, closeReason admin', async () => {
    let answer: (p: ProcessInfo | null) => void = () => {};
    const held = new Promise<ProcessInfo | null>((resolve) => {
      answer = resolve;
    });
    // Local attribution the test holds: the first destination's admission waits on it with its flow open.
    const gw = await startTestGateway({ identity: { localAttribution: true } }, { attributor: { attribute: () => held } });
    cleanups.push(() => gw.stop());
    cleanups.push(() => answer(null));
    const echo = await echoServer();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const closed = closesWithin(a.control, 3000);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('first')), a.relay);
    let id = '';
    await until('the first destination to be admitted', () => {
      const f = [...gw.flows.activeFlows().values()].find((x) => x.protocol === 'socks5-udp');
      id = f?.id ?? '';
      return f !== undefined;
    });
    const res = await fetch(`${gw.adminUrl}/v1/flows/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${gw.adminToken}` } });
    expect(res.status).toBeLessThan(300);
    answer(null);
    expect(await closed).toBe(true);
    for (let i = 1; i <= 5; i++) await sendTo(client, udpFrame('127.0.0.1', echo.port + i, Buffer.from(`d${i}`)), a.relay).catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    expect(recordsOf(gw, client.address().port).map((r) => r.closeReason)).toEqual(['admin']);
    expect(echo.received).toEqual([]);
  });

  it('a destination the policy refuses (not allowlisted) is that destination\'s refusal only; a sweep of them ends the association at 64 refused', async () => {
    const gw = await startTestGateway({ mode: 'enforce', roles: { any: { allow: [{ host: 'allowed.example.test' }] } }, resolver: { hosts: { 'allowed.example.test': '127.0.0.1' } } });
    cleanups.push(() => gw.stop());
    const echo = await echoServer();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const port = client.address().port;
    // The first destination is refused by policy; the association goes on and relays to an allowed one.
    await sendTo(client, udpFrame('127.0.0.2', 9, Buffer.from('refused')), a.relay);
    await gw.waitForClosed((r) => r.client.port === port);
    const reply = nextReply(client);
    await sendTo(client, udpFrame('allowed.example.test', echo.port, Buffer.from('allowed')), a.relay);
    expect((await reply).data.toString()).toBe('echo:allowed');
    // A sweep: one datagram to each of 100 ports of an address not allowlisted.
    const closed = closesWithin(a.control, 5000);
    for (let i = 1; i <= 100; i++) {
      await sendTo(client, udpFrame('127.0.0.3', 1000 + i, Buffer.from('x')), a.relay).catch(() => {});
      if (i % 16 === 0) await new Promise((r) => setTimeout(r, 20));
    }
    expect(await closed).toBe(true);
    await gw.waitForClosed((r) => r.client.port === port && r.destination.host === 'allowed.example.test');
    await new Promise((r) => setTimeout(r, 200));
    const recs = recordsOf(gw, port);
    const assoc = recs.filter((r) => r.destination.host === 'allowed.example.test');
    expect(assoc.map((r) => r.closeReason)).toEqual(['refused-destinations']);
    expect(assoc[0]?.reasons.join('\n')).toMatch(/1 destination relayed, 64 refused/);
    const refused = recs.filter((r) => r.closeReason === 'not-allowlisted');
    expect(refused).toHaveLength(64);
  });
});
