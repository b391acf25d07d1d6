/**
 * A SOCKS5 login made under one policy, judged under the next (SPEC §3 reload, §4 407 / 0xFF): what a
 * SOCKS5 connection asks after its login — its CONNECT request, a UDP association's first datagram
 * and each new destination — is refused `auth-required` once the running policy no longer admits
 * that login: `identity.requireAuth` turned on for a client that never logged in, or the user's
 * password changed or removed. An HTTP keep-alive connection's next request already is (its
 * identity is resolved again under a new policy). Before, a reload turning requireAuth on and
 * changing alice's password left both live associations reaching destinations they had never sent
 * to (2 of 2 datagrams relayed, recorded allow) while new associations were refused. Destinations
 * relayed before the reload go on (a reload never drops an established flow), and a reload that
 * leaves the login valid changes nothing. Real gateway, real SOCKS5 listener and UDP relay.
 */
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { rawConnect } from './http-harness.ts';
import { quietPeriod, reloadEdited, udpEchoes } from './reload-harness.ts';
import { readBytes, startTcpOrigin, type UdpEcho } from './socks5-harness.ts';

const cleanups: Cleanups = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

const ALICE = { userId: 'alice', password: 'pw-alice-0123' };

interface EditableConfig {
  identity: { requireAuth: boolean; users: Array<{ name: string; password?: string; roles: string[] }> };
  roles: Record<string, unknown>;
}

/** Enforce mode, no login required, alice with a password; every loopback destination allowed. */
async function gateway(): Promise<TestGateway> {
  const gw = await startTestGateway({ mode: 'enforce', identity: { requireAuth: false, users: [{ name: ALICE.userId, password: ALICE.password, roles: ['any'] }] } });
  cleanups.push(() => gw.stop());
  return gw;
}

/** A reload (as PUT /v1/policy and SIGHUP make) of the running config as `edit` changes it. */
const reload = (gw: TestGateway, edit: (c: EditableConfig) => void): void => reloadEdited(gw, edit);
const echoes = (n: number): Promise<UdpEcho[]> => udpEchoes(cleanups, n);

const refusedLogin = (r: FlowRecord): boolean => r.verdict === 'block' && r.closeReason === 'auth-required';

describe('SOCKS5 logins across a reload', () => {
  it('live UDP associations: new destinations refused once the login no longer stands; relayed ones go on; a reload that keeps it changes nothing', async () => {
    const gw = await gateway();
    const [first, second, third, fourth] = (await echoes(4)) as [UdpEcho, UdpEcho, UdpEcho, UdpEcho];
    const anon = await udpSocket(cleanups);
    const a = await associate(gw, anon, cleanups);
    const alice = await udpSocket(cleanups);
    const b = await associate(gw, alice, cleanups, { auth: ALICE });
    for (const [client, relay] of [[anon, a.relay], [alice, b.relay]] as const) {
      const reply = nextReply(client);
      await sendTo(client, udpFrame('127.0.0.1', first.port, Buffer.from('one')), relay);
      expect((await reply).data.toString()).toBe('echo:one');
    }

    // A reload that leaves both logins valid: a new destination is relayed as before.
    reload(gw, (c) => {
      c.roles.spare = { allow: [{ host: 'spare.example.com', ports: [443] }] };
    });
    for (const [client, relay] of [[anon, a.relay], [alice, b.relay]] as const) {
      const reply = nextReply(client);
      await sendTo(client, udpFrame('127.0.0.1', second.port, Buffer.from('two')), relay);
      expect((await reply).data.toString()).toBe('echo:two');
    }

    // requireAuth on (no login: void) and alice's password changed (her login: void).
    reload(gw, (c) => {
      c.identity.requireAuth = true;
      (c.identity.users[0] as { password: string }).password = 'pw-alice-changed';
    });
    await sendTo(anon, udpFrame('127.0.0.1', third.port, Buffer.from('three')), a.relay);
    await sendTo(alice, udpFrame('127.0.0.1', fourth.port, Buffer.from('four')), b.relay);
    const refused = await gw.waitForClosed((r) => r.destination.port === fourth.port);
    await gw.waitForClosed((r) => r.destination.port === third.port);
    expect(refused).toMatchObject({ protocol: 'socks5-udp', verdict: 'block', closeReason: 'auth-required', bytesOut: 0, bytesIn: 0 });
    expect(refused.identity.user).toBeNull();
    await quietPeriod();
    expect(third.received).toHaveLength(0);
    expect(fourth.received).toHaveLength(0);

    // What each association relayed to before the reload goes on.
    for (const [client, relay] of [[anon, a.relay], [alice, b.relay]] as const) {
      const reply = nextReply(client);
      await sendTo(client, udpFrame('127.0.0.1', first.port, Buffer.from('five')), relay);
      expect((await reply).data.toString()).toBe('echo:five');
    }
    a.control.destroy();
    b.control.destroy();
    const kept = (r: FlowRecord): boolean => r.protocol === 'socks5-udp' && r.verdict === 'allow';
    await gw.waitForClosed((r) => kept(r) && r.identity.user === ALICE.userId);
    await gw.waitForClosed((r) => kept(r) && r.identity.user === null);
    const associations = gw.closed.filter(kept);
    expect(associations).toHaveLength(2);
    for (const r of associations) {
      expect(r).toMatchObject({ bytesOut: 'one'.length + 'two'.length + 'five'.length, bytesIn: 'echo:one'.length + 'echo:two'.length + 'echo:five'.length });
    }
    expect(gw.closed.filter(refusedLogin)).toHaveLength(2);
  });

  it('an association whose first datagram comes after requireAuth was turned on is refused and ended', async () => {
    const gw = await gateway();
    const [e] = (await echoes(1)) as [UdpEcho];
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    reload(gw, (c) => {
      c.identity.requireAuth = true;
    });
    const closed = once(a.control, 'close');
    await sendTo(client, udpFrame('127.0.0.1', e.port, Buffer.from('one')), a.relay);
    await closed;
    const record = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(record).toMatchObject({ verdict: 'block', closeReason: 'auth-required', bytesOut: 0, bytesIn: 0 });
    expect(gw.closed.filter((r) => r.protocol === 'socks5-udp')).toHaveLength(1);
    expect(e.received).toHaveLength(0);
  });

  it('a CONNECT request after a login the reload voided (the user removed) is refused 0x02', async () => {
    const gw = await gateway();
    const origin = await startTcpOrigin();
    cleanups.push(() => origin.close());
    const s = await rawConnect(gw.socksPort);
    cleanups.push(() => s.destroy());
    s.on('error', () => undefined);
    s.write(Buffer.from([0x05, 0x01, 0x02]));
    expect([...(await readBytes(s, 2))]).toEqual([0x05, 0x02]);
    const u = Buffer.from(ALICE.userId);
    const p = Buffer.from(ALICE.password);
    s.write(Buffer.concat([Buffer.from([0x01, u.length]), u, Buffer.from([p.length]), p]));
    expect([...(await readBytes(s, 2))]).toEqual([0x01, 0x00]);

    reload(gw, (c) => {
      c.identity.users = [];
    });
    const port = Buffer.alloc(2);
    port.writeUInt16BE(origin.port);
    s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1]), port]));
    const reply = await readBytes(s, 10);
    expect(reply[1]).toBe(0x02);
    const record = await gw.waitForClosed((r) => r.protocol === 'socks5');
    expect(record).toMatchObject({ verdict: 'block', closeReason: 'auth-required', bytesOut: 0, bytesIn: 0 });
    expect(origin.done).toHaveLength(0);
  });
});
