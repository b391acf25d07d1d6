/**
 * Roles are the running policy's, also for an identity the SOCKS5 listener resolved before a reload
 * (SPEC §3 reload, §4): a user's RFC 1929 login before its CONNECT request, a UDP association's
 * first datagram, and each later destination of a live association are judged with the roles the
 * running policy gives that user, as a new connection of the same user is. Before, they kept the
 * roles of the policy the login was checked under: a reload that moved alice from a role allowing
 * loopback to one allowing nothing still let her live association reach a destination it had never
 * sent to (1 of 1 datagrams relayed in enforce mode) while her new association was refused `0x02`.
 * Destinations relayed before the reload go on (a reload never drops an established flow).
 * Real gateway, real SOCKS5 listener and UDP relay, loopback echo origins.
 */
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
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

/** Enforce mode; alice's roles: `open` allows loopback, `shut` only a name that is never asked for. */
async function gatewayWithAliceIn(role: 'open' | 'shut'): Promise<TestGateway> {
  const gw = await startTestGateway({
    mode: 'enforce',
    identity: { requireAuth: true, users: [{ name: ALICE.userId, password: ALICE.password, roles: [role] }] },
    roles: { open: { allow: [{ cidr: '127.0.0.0/8' }] }, shut: { allow: [{ host: 'only.example.com', ports: [443] }] } },
    defaultRoles: [],
  });
  cleanups.push(() => gw.stop());
  return gw;
}

/** A reload (as PUT /v1/policy and SIGHUP make) that gives alice `role` instead. */
function moveAliceTo(gw: TestGateway, role: 'open' | 'shut'): void {
  reloadEdited<{ identity: { users: Array<{ roles: string[] }> } }>(gw, (c) => {
    (c.identity.users[0] as { roles: string[] }).roles = [role];
  });
}

const echo = async (): Promise<UdpEcho> => (await udpEchoes(cleanups, 1))[0] as UdpEcho;

describe('SOCKS5 after a reload that changes a user’s roles', () => {
  it('a live UDP association’s new destination is judged with the new roles; the one relayed before goes on, bytes exact', async () => {
    const gw = await gatewayWithAliceIn('open');
    const before = await echo();
    const after = await echo();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups, { auth: ALICE });
    const first = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', before.port, Buffer.from('one')), a.relay);
    expect((await first).data.toString()).toBe('echo:one');

    moveAliceTo(gw, 'shut');
    await sendTo(client, udpFrame('127.0.0.1', after.port, Buffer.from('two')), a.relay);
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === after.port);
    expect(refused).toMatchObject({ verdict: 'block', closeReason: 'not-allowlisted', bytesOut: 0, bytesIn: 0 });
    expect(refused.identity.roles).toEqual(['shut']);
    await quietPeriod();
    expect(after.received).toHaveLength(0);

    // The destination relayed before the reload is an established connection of the association.
    const third = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', before.port, Buffer.from('three')), a.relay);
    expect((await third).data.toString()).toBe('echo:three');

    a.control.destroy();
    const record = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === before.port);
    expect(record).toMatchObject({ verdict: 'allow', bytesOut: 'one'.length + 'three'.length, bytesIn: 'echo:one'.length + 'echo:three'.length });
    expect(gw.closed.filter((r) => r.protocol === 'socks5-udp')).toHaveLength(2);
  });

  it('an association made before the reload is judged with the new roles at its first datagram, either way', async () => {
    const gw = await gatewayWithAliceIn('open');
    const e = await echo();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups, { auth: ALICE });
    moveAliceTo(gw, 'shut');
    await sendTo(client, udpFrame('127.0.0.1', e.port, Buffer.from('one')), a.relay);
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(refused).toMatchObject({ verdict: 'block', closeReason: 'not-allowlisted' });
    expect(refused.identity.roles).toEqual(['shut']);
    await quietPeriod();
    expect(e.received).toHaveLength(0);

    // The other way: an association made while alice may reach nothing, then a reload that opens loopback to her.
    const gw2 = await gatewayWithAliceIn('shut');
    const client2 = await udpSocket(cleanups);
    const a2 = await associate(gw2, client2, cleanups, { auth: ALICE });
    moveAliceTo(gw2, 'open');
    const reply = nextReply(client2);
    await sendTo(client2, udpFrame('127.0.0.1', e.port, Buffer.from('two')), a2.relay);
    expect((await reply).data.toString()).toBe('echo:two');
  });

  it('a CONNECT request after a login checked under the old policy is judged with the new roles', async () => {
    const gw = await gatewayWithAliceIn('open');
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

    moveAliceTo(gw, 'shut');
    const port = Buffer.alloc(2);
    port.writeUInt16BE(origin.port);
    s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1]), port]));
    const reply = await readBytes(s, 10);
    expect(reply[1]).toBe(0x02);
    if (!s.destroyed) await Promise.race([once(s, 'close'), new Promise((r) => setTimeout(r, 2000))]);
    const record = await gw.waitForClosed((r) => r.protocol === 'socks5');
    expect(record).toMatchObject({ verdict: 'block', closeReason: 'not-allowlisted', bytesOut: 0, bytesIn: 0 });
    expect(record.identity.roles).toEqual(['shut']);
    expect(origin.done).toHaveLength(0);
  });
});
