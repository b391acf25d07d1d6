/**
 * `limits.idleTimeoutMs` on SOCKS5 UDP associations, through the real listeners: an association ends
 * `idle-timeout` when it has relayed nothing either way for that long, as a silent CONNECT tunnel does,
 * and gives its place in `limits.maxFlowsPerIdentity` back; datagrams one way only (a destination that
 * never answers) keep it up. Before, the idle check ran on an interval of idleTimeoutMs and ended an
 * association only after two whole ticks without a datagram: a silent one lived up to twice the limit
 * (idleTimeoutMs 1,000: 2,000 ms after its last datagram, holding its relay port and its flow slot
 * meanwhile).
 */
import { once } from 'node:events';
import type { Socket as UdpSocket } from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Association, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const IDLE_MS = 2000;
/** Wide for a loaded machine; the interval check ended these about IDLE_MS later still (at 2 × IDLE_MS). */
const CUT_WITHIN_MS = IDLE_MS + 1200;
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function gateway(): Promise<{ gw: TestGateway; echo: UdpEcho }> {
  const gw = await startTestGateway({ mode: 'enforce', limits: { idleTimeoutMs: IDLE_MS, maxFlowsPerIdentity: 3 } });
  cleanups.push(() => gw.stop());
  const echo = await startUdpEcho('udp4');
  cleanups.push(() => echo.close());
  return { gw, echo };
}

/** One datagram to the echo and its reply through the association; resolves when the reply is in. */
async function echoOnce(client: UdpSocket, a: Association, echo: UdpEcho, payload: string): Promise<void> {
  const reply = nextReply(client);
  await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from(payload)), a.relay);
  expect((await reply).data.toString()).toBe(`echo:${payload}`);
}

async function activeFlows(gw: TestGateway): Promise<number> {
  return (JSON.parse((await adminGet(gw, '/v1/flows?state=active')).text) as { count: number }).count;
}

describe('SOCKS5 UDP association idle timeout', () => {
  it('ends idleTimeoutMs after the last datagram, not up to twice that, and frees its flow slot', async () => {
    const { gw, echo } = await gateway();
    const clients: UdpSocket[] = [];
    const associations: Association[] = [];
    for (let i = 0; i < 3; i++) {
      const client = await udpSocket(cleanups);
      clients.push(client);
      associations.push(await associate(gw, client, cleanups));
    }
    const closed = associations.map((a) => once(a.control, 'close').then(() => Date.now()));
    for (let i = 0; i < 3; i++) await echoOnce(clients[i] as UdpSocket, associations[i] as Association, echo, `hello ${i}`);
    const lastDatagramAt = Date.now();
    expect(await activeFlows(gw)).toBe(3);
    const closedAt = await Promise.all(closed);
    for (const at of closedAt) {
      // Never before the limit (less the reply's trip to this client), and well before twice it.
      expect(at - lastDatagramAt).toBeGreaterThanOrEqual(IDLE_MS - 100);
      expect(at - lastDatagramAt).toBeLessThan(CUT_WITHIN_MS);
    }
    const records = gw.closed.filter((r) => r.protocol === 'socks5-udp');
    expect(records.map((r) => [r.closeReason, r.bytesOut, r.bytesIn])).toEqual([0, 1, 2].map(() => ['idle-timeout', 7, 12]));
    expect(await activeFlows(gw)).toBe(0);
    // Every slot is back: exactly maxFlowsPerIdentity (3) associations are served again, a 4th is over it.
    for (let i = 0; i < 3; i++) {
      const client = await udpSocket(cleanups);
      await echoOnce(client, await associate(gw, client, cleanups), echo, `again ${i}`);
    }
    await expect(associate(gw, await udpSocket(cleanups), cleanups)).rejects.toThrow(/NotAllowed/);
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.closeReason === 'rate-limit');
    expect(refused.bytesOut).toBe(0);
    expect(await activeFlows(gw)).toBe(3);
  });

  it('datagrams one way only keep it alive past the limit; it ends once they stop', async () => {
    const { gw } = await gateway();
    // A destination that never answers: only the client's side is active.
    const sink = await udpSocket(cleanups);
    let received = 0;
    sink.on('message', () => received++);
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    let isClosed = false;
    const closed = once(a.control, 'close').then(() => {
      isClosed = true;
      return Date.now();
    });
    const sending = Date.now();
    let sent = 0;
    let lastDatagramAt = 0;
    // 1.25 × the limit of steady datagrams, one every 250 ms (bounded in count and time).
    while (Date.now() - sending < IDLE_MS * 1.25 && sent < 40) {
      await sendTo(client, udpFrame('127.0.0.1', sink.address().port, Buffer.from('tick')), a.relay);
      lastDatagramAt = Date.now();
      sent++;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(isClosed).toBe(false);
    const closedAt = await closed;
    expect(closedAt - lastDatagramAt).toBeGreaterThanOrEqual(IDLE_MS - 100);
    expect(closedAt - lastDatagramAt).toBeLessThan(CUT_WITHIN_MS);
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(rec.closeReason).toBe('idle-timeout');
    expect(received).toBe(sent);
    expect(rec.bytesOut).toBe(4 * sent);
    expect(rec.bytesIn).toBe(0);
  });
});
