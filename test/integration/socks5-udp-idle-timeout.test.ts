/**
 * `limits.idleTimeoutMs` on SOCKS5 UDP associations, through the real listeners: an association ends
 * `idle-timeout` when it has relayed nothing either way for that long, as a silent CONNECT tunnel does,
 * and gives its place in `limits.maxFlowsPerIdentity` back; datagrams one way only (a destination that
 * never answers) keep it up. Before, the idle check ran on an interval of idleTimeoutMs and ended an
 * association only after two whole ticks without a datagram: a silent one lived up to twice the limit
 * (idleTimeoutMs 1,000: 2,000 ms after its last datagram, holding its relay port and its flow slot
 * meanwhile).
 *
 * When is checked against timers of this process, not the wall clock: startTestGateway runs the
 * gateway here, and Node runs the timers of one duration in the order they were armed, each against
 * the loop's clock. A timer of idleTimeoutMs armed before a datagram is sent fires before the idle
 * timer that datagram re-arms (the association must still be up), one armed once the datagram is
 * through the gateway fires after it (it must be over), however late a loaded machine runs them
 * both. A bound in wall-clock milliseconds (IDLE_MS + 1,200) failed under a load average of 15-21.
 */
import { once } from 'node:events';
import type { Socket as UdpSocket } from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Association, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const IDLE_MS = 2000;
const cleanups: Cleanups = [];

/** Resolves when a timer of idleTimeoutMs armed now fires: in the gateway's timer list, after every idle timer armed before it. */
function idleTimerArmedNow(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, IDLE_MS));
}

/** Whether the association of the client on `port` has ended (its record is in as the flow table closes it). */
function hasEnded(gw: TestGateway, port: number): boolean {
  return gw.closed.some((r) => r.protocol === 'socks5-udp' && r.client.port === port);
}

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
    const closed = associations.map((a) => once(a.control, 'close'));
    // Per association: up when a timer armed before its datagram fires, over when one armed after its reply does.
    const upAtLimit: Array<Promise<boolean>> = [];
    const overAtLimit: Array<Promise<boolean>> = [];
    let activeAtFirstLimit = 0;
    for (let i = 0; i < 3; i++) {
      const port = (clients[i] as UdpSocket).address().port;
      upAtLimit.push(
        idleTimerArmedNow().then(() => {
          if (i === 0) activeAtFirstLimit = gw.flows.activeCount;
          return !hasEnded(gw, port);
        }),
      );
      await echoOnce(clients[i] as UdpSocket, associations[i] as Association, echo, `hello ${i}`);
      overAtLimit.push(idleTimerArmedNow().then(() => hasEnded(gw, port)));
    }
    // Never before the limit; at the limit, not up to twice it (the interval check's was still up then).
    expect(await Promise.all(upAtLimit)).toEqual([true, true, true]);
    expect(activeAtFirstLimit).toBe(3);
    expect(await Promise.all(overAtLimit)).toEqual([true, true, true]);
    await Promise.all(closed);
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
    });
    const port = client.address().port;
    // Armed after the association's own idle timer: had one-way datagrams not re-armed it, it would be over by then.
    const upPastLimit = idleTimerArmedNow().then(() => !hasEnded(gw, port));
    const sending = Date.now();
    let sent = 0;
    let upAtLastLimit: Promise<boolean> = Promise.resolve(false);
    // 1.25 × the limit of steady datagrams, one every 250 ms (bounded in count and time). Only a
    // stall of this whole process (gateway and sender alike) for 1,750 ms between two could end it.
    while (Date.now() - sending < IDLE_MS * 1.25 && sent < 40) {
      upAtLastLimit = idleTimerArmedNow().then(() => !hasEnded(gw, port));
      await sendTo(client, udpFrame('127.0.0.1', sink.address().port, Buffer.from('tick')), a.relay);
      sent++;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(isClosed).toBe(false);
    expect(await upPastLimit).toBe(true);
    // The last one through the gateway (the sink has it): a timer armed now fires after the idle timer it re-armed.
    await until('the sink received every datagram', () => received === sent, 5000);
    const overAtLimit = idleTimerArmedNow().then(() => hasEnded(gw, port));
    expect(await upAtLastLimit).toBe(true);
    expect(await overAtLimit).toBe(true);
    await closed;
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(rec.closeReason).toBe('idle-timeout');
    expect(received).toBe(sent);
    expect(rec.bytesOut).toBe(4 * sent);
    expect(rec.bytesIn).toBe(0);
  });
});
