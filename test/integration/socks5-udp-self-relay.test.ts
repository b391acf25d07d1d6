/**
 * A SOCKS5 UDP association may not send to the gateway's own UDP relay sockets (SPEC §4: the gateway
 * never dials its own listeners). Before, with loopback allowed, a destination that was another
 * association's relay (BND.ADDR:PORT of its reply) was admitted: alice's datagram went out of the
 * gateway's upstream socket into bob's relay, and bob, associated from this host with DST.PORT 0,
 * took it for his own first datagram: it was relayed to the echo under bob's identity (bob's record:
 * bytesOut 15, the smuggled payload), the echo's answer came back to alice through both
 * associations, and bob's relay, now locked to the gateway's upstream port, dropped bob's own
 * datagrams as foreign. Alice's record said allow, bytesOut 25, to bob's relay. Now a UDP
 * destination that is a live relay (anyone's, its own too) is refused at admission, deny-range, as
 * a TCP self-dial is, and its datagrams are dropped and counted.
 */
import { SocksClient } from 'socks';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { formatAuthority } from '../../gateway/protocol/authority.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const ALICE = { userId: 'alice', password: 'alice-password' };
const BOB = { userId: 'bob', password: 'bob-password' };

let gw: TestGateway;
let echo: UdpEcho;
const cleanups: Cleanups = [];

beforeAll(async () => {
  gw = await startTestGateway({
    identity: {
      users: [
        { name: ALICE.userId, password: ALICE.password, roles: ['any'] },
        { name: BOB.userId, password: BOB.password, roles: ['any'] },
      ],
    },
    resolver: { hosts: { 'relay.example.test': '127.0.0.1' } },
  });
  echo = await startUdpEcho('udp4');
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});
afterAll(async () => {
  await echo?.close();
  await gw?.stop();
});

/** An association of `auth` from a fresh loopback socket; `replies` collects what it is sent, unwrapped. */
async function open(auth: typeof ALICE, announcePort = true) {
  const client = await udpSocket(cleanups);
  const a = await associate(gw, client, cleanups, { auth, announcePort });
  const replies: string[] = [];
  client.on('message', (m: Buffer) => {
    const f = SocksClient.parseUDPFrame(m);
    replies.push(`${f.remoteHost.host}:${f.remoteHost.port} ${f.data.toString('latin1')}`);
  });
  return { client, ...a, replies };
}

/** A datagram for bob's relay that bob's relay would take for bob's own: to the echo. */
function smuggled(text: string): Buffer {
  return udpFrame('127.0.0.1', echo.port, Buffer.from(text));
}

/** Records closed before this test: never the ones it waits for. */
let earlier = new Set<FlowRecord>();
beforeEach(() => {
  earlier = new Set(gw.closed);
});

function association(user: string, port: number): Promise<FlowRecord> {
  return gw.waitForClosed((r) => !earlier.has(r) && r.protocol === 'socks5-udp' && r.identity.user === user && r.destination.port === port && r.verdict === 'allow');
}

function refusedTo(port: number): FlowRecord[] {
  return gw.closed.filter((r) => !earlier.has(r) && r.protocol === 'socks5-udp' && r.destination.port === port && r.verdict === 'block');
}

async function refusal(port: number): Promise<FlowRecord> {
  await until(`the refusal of port ${port}`, () => refusedTo(port).length === 1, 3000);
  return refusedTo(port)[0] as FlowRecord;
}

describe("a UDP destination that is one of the gateway's relay sockets", () => {
  it("another association's relay, after an allowed destination: refused deny-range, never reaches it, counted", async () => {
    const alice = await open(ALICE);
    const bob = await open(BOB, false);
    const seen = echo.received.length;
    await sendTo(alice.client, udpFrame('127.0.0.1', echo.port, Buffer.from('alice')), alice.relay);
    await until("alice's echo", () => alice.replies.length === 1);
    // Bob's relay by its address and as an IPv4-mapped IPv6 literal: one refused record each.
    await sendTo(alice.client, udpFrame(bob.relay.host, bob.relay.port, smuggled('smuggled-1')), alice.relay);
    await sendTo(alice.client, udpFrame('::ffff:127.0.0.1', bob.relay.port, smuggled('smuggled-2')), alice.relay);
    await until('two refused records', () => refusedTo(bob.relay.port).length === 2, 3000);
    // Once refused, a datagram more is dropped at once.
    await sendTo(alice.client, udpFrame(bob.relay.host, bob.relay.port, smuggled('smuggled-3')), alice.relay);
    // Bob's own first datagram is his (his relay still takes his port): echoed to him alone.
    await sendTo(bob.client, smuggled('bob'), bob.relay);
    await until("bob's echo", () => bob.replies.length === 1);
    expect(bob.replies).toEqual([`127.0.0.1:${echo.port} echo:bob`]);
    expect(echo.received.slice(seen).map((r) => r.data.toString())).toEqual(['alice', 'bob']);
    expect(alice.replies).toEqual([`127.0.0.1:${echo.port} echo:alice`]);

    const refused = refusedTo(bob.relay.port);
    for (const r of refused) {
      expect(r.identity.user).toBe('alice');
      expect(r.closeReason).toBe('deny-range');
      expect(r.bytesOut).toBe(0);
      // The address as the client named it, bracketed when IPv6 (`[::ffff:127.0.0.1]:port`).
      expect(r.reasons.join('\n')).toContain(`${formatAuthority(String(r.destination.host), bob.relay.port)} is a UDP relay of this gateway`);
    }
    alice.control.destroy();
    bob.control.destroy();
    const a = await association('alice', echo.port);
    expect(a.bytesOut).toBe(5);
    expect(a.reasons.join('\n')).toMatch(/1 destination relayed, 2 refused/);
    expect(a.reasons.join('\n')).toMatch(/ 3 to refused destinations,/);
    const b = await association('bob', echo.port);
    expect(b.bytesOut).toBe(3);
    expect(b.reasons.join('\n')).toMatch(/ 0 from foreign sources,/);
  });

  // (A datagram for the number of a TCP listener's port is no dial to the gateway: relayed,
  // socks5-udp-listener-port.test.ts.)
  it("as the first destination: its own relay, another's by a `resolver.hosts` name: each refused", async () => {
    const alice = await open(ALICE, false);
    const bob = await open(BOB, false);
    const seen = echo.received.length;
    await sendTo(alice.client, udpFrame(alice.relay.host, alice.relay.port, smuggled('own')), alice.relay);
    const own = await refusal(alice.relay.port);
    await sendTo(alice.client, udpFrame('relay.example.test', bob.relay.port, smuggled('by-name')), alice.relay);
    const byName = await refusal(bob.relay.port);
    for (const [r, what] of [
      [own, `127.0.0.1:${alice.relay.port} is a UDP relay`],
      [byName, `127.0.0.1:${bob.relay.port} is a UDP relay`],
    ] as const) {
      expect(r.identity.user).toBe('alice');
      expect(r.closeReason).toBe('deny-range');
      expect(r.bytesOut).toBe(0);
      expect(r.reasons.join('\n')).toContain(what);
    }
    expect(byName.destination).toEqual({ host: 'relay.example.test', ip: '127.0.0.1', port: bob.relay.port });
    // Bob was not taken over: his first datagram is his own.
    await sendTo(bob.client, smuggled('bob'), bob.relay);
    await until("bob's echo", () => bob.replies.length === 1);
    expect(echo.received.slice(seen).map((r) => r.data.toString())).toEqual(['bob']);
  });

  it('is one only while its association lives: a closed relay address is an ordinary destination again', async () => {
    const bob = await open(BOB);
    const gone = bob.relay.port;
    bob.control.destroy();
    await gw.waitForClosed((r) => !earlier.has(r) && r.identity.user === 'bob' && r.destination.port === bob.client.address().port);
    const alice = await open(ALICE);
    await sendTo(alice.client, udpFrame('127.0.0.1', echo.port, Buffer.from('alice')), alice.relay);
    await until("alice's echo", () => alice.replies.length === 1);
    // Nothing listens there now (unless the kernel gave the port to alice's own relay, which is refused).
    const isReused = alice.relay.port === gone;
    await sendTo(alice.client, udpFrame('127.0.0.1', gone, Buffer.from('to a closed port')), alice.relay);
    await sendTo(alice.client, udpFrame('127.0.0.1', echo.port, Buffer.from('again')), alice.relay);
    await until("alice's second echo", () => alice.replies.length === 2);
    alice.control.destroy();
    const a = await association('alice', echo.port);
    expect(a.reasons.join('\n')).toMatch(isReused ? /1 destination relayed, 1 refused/ : /2 destinations relayed, 0 refused/);
  });
});
