/**
 * A SOCKS5 UDP destination whose name did not resolve (`dns-failed`) is looked up again for a later
 * datagram once a short wait has passed (the resolver's memory of failed names,
 * resolver.negativeCacheTtlSec, at least 1 s), as a TCP client's next CONNECT would be: a name whose
 * DNS failed once (SERVFAIL, a timeout, no answer yet) is reachable again over the same association.
 * A lookup that fails again leaves no second record (its refusal's record is written), and a datagram
 * within the wait costs no lookup.
 *
 * Regression: a refused destination was judged again only after a reload or a mode switch, so one
 * failed lookup made the name unreachable for the association's life (it may last hours), every
 * datagram to it dropped, while a TCP flow looks its name up on each CONNECT.
 *
 * DNS: a real server on loopback (test/helpers/zone-dns.ts) whose answer for the name the test
 * switches, asked through a c-ares resolver of its own by the gateway's resolver (createDnsResolver,
 * with its negative cache), as late-dns.ts does.
 */
import type { Socket as UdpSocket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startZoneDns } from '../helpers/zone-dns.ts';
import { startUdpEcho } from './socks5-harness.ts';

const NAME = 'flaky.udp.test';
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** A gateway whose lookups go to a loopback DNS server answering NAME with `answer()` (none: NOERROR, no address). */
async function gatewayWithDns(answer: () => string[]): Promise<{ gw: TestGateway; asked: () => number }> {
  const dns = await startZoneDns('127.0.0.161', { [NAME]: answer });
  cleanups.push(() => dns.close());
  const c = new Resolver({ timeout: 2000, tries: 1 });
  c.setServers([dns.address]);
  cleanups.push(() => c.cancel());
  const resolver = createDnsResolver({ timeoutMs: 3000, lookup: (host) => c.resolve4(host), negativeTtlMs: 1000, cacheTtlMs: 0 });
  const gw = await startTestGateway({ resolver: { negativeCacheTtlSec: 1, cacheTtlSec: 0 } }, { resolver });
  cleanups.push(() => gw.stop());
  return { gw, asked: () => dns.asked.filter((q) => q === `${NAME} A`).length };
}

/**
 * Send a datagram to NAME every 100 ms until `done()` (at most `max` datagrams): a client retransmitting.
 * Returns how many were sent.
 */
async function retransmit(client: UdpSocket, relay: { host: string; port: number }, port: number, done: () => boolean, max: number): Promise<number> {
  let sent = 0;
  while (!done() && sent < max) {
    await sendTo(client, udpFrame(NAME, port, Buffer.from(`try ${sent}`)), relay);
    sent++;
    await new Promise((r) => setTimeout(r, 100));
  }
  return sent;
}

function recordsOf(gw: TestGateway, port: number): FlowRecord[] {
  return gw.closed.filter((r) => r.protocol === 'socks5-udp' && r.client.port === port);
}

describe('a SOCKS5 UDP destination whose name did not resolve', () => {
  it('is looked up again after a short wait: once its name answers, its datagrams are relayed; one dns-failed record', async () => {
    let answer: string[] = [];
    const { gw, asked } = await gatewayWithDns(() => answer);
    const echo = await startUdpEcho('udp4');
    cleanups.push(() => echo.close());
    const client = await udpSocket(cleanups);
    const port = client.address().port;
    const a = await associate(gw, client, cleanups);
    let replies = 0;
    client.on('message', () => replies++);
    // The association's first destination: its lookup fails (its record, dns-failed, by admission).
    await sendTo(client, udpFrame(NAME, echo.port, Buffer.from('first')), a.relay);
    await gw.waitForClosed((r) => r.client.port === port && r.closeReason === 'dns-failed');
    // Still failing: the client retransmits until the name has been asked again (after the wait),
    // and failed again.
    const sent = await retransmit(client, a.relay, echo.port, () => asked() >= 3, 100);
    expect(asked()).toBeGreaterThanOrEqual(3);
    // Not a lookup per datagram: the datagrams within the wait were dropped unlooked-up.
    expect(asked()).toBeLessThan(sent);
    // Failing again left no second record.
    expect(recordsOf(gw, port).map((r) => r.closeReason)).toEqual(['dns-failed']);
    // The name answers now: the next lookup finds it, and the datagrams after it are relayed.
    answer = ['127.0.0.1'];
    await retransmit(client, a.relay, echo.port, () => replies > 0, 100);
    expect(replies).toBeGreaterThan(0);
    expect(echo.received.length).toBeGreaterThan(0);
    a.control.end();
    const rec = await gw.waitForClosed((r) => r.client.port === port && r.closeReason === 'closed');
    expect([rec.destination.host, rec.destination.ip, rec.verdict]).toEqual([NAME, '127.0.0.1', 'allow']);
    expect(rec.reasons).toContain('udp association: 1 destination relayed, 1 refused');
    expect(rec.bytesOut).toBeGreaterThan(0);
    expect(recordsOf(gw, port).map((r) => r.closeReason)).toEqual(['dns-failed', 'closed']);
  }, 30_000);

  it('a later destination of an open association: the same', async () => {
    let answer: string[] = [];
    const { gw } = await gatewayWithDns(() => answer);
    const echo = await startUdpEcho('udp4');
    cleanups.push(() => echo.close());
    const client = await udpSocket(cleanups);
    const port = client.address().port;
    const a = await associate(gw, client, cleanups);
    let fromName = 0;
    client.on('message', (m: Buffer) => {
      // ATYP 3 (a name) in the reply's header: a reply from NAME's destination, not the literal's.
      if (m[3] === 3) fromName++;
    });
    // The association's flow opens with an address literal.
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('open')), a.relay);
    await until('the association relays', () => echo.received.length > 0);
    await sendTo(client, udpFrame(NAME, echo.port, Buffer.from('first')), a.relay);
    await gw.waitForClosed((r) => r.client.port === port && r.closeReason === 'dns-failed');
    answer = ['127.0.0.1'];
    await retransmit(client, a.relay, echo.port, () => fromName > 0, 100);
    expect(fromName).toBeGreaterThan(0);
    a.control.end();
    const rec = await gw.waitForClosed((r) => r.client.port === port && r.closeReason === 'closed');
    expect(rec.reasons).toContain('udp association: 2 destinations relayed, 1 refused');
    expect(recordsOf(gw, port).map((r) => r.closeReason)).toEqual(['dns-failed', 'closed']);
  }, 30_000);
});
