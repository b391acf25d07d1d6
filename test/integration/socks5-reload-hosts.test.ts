/**
 * A SOCKS5 client's host name (`identity.hosts`: source CIDR → host, whose roles it gets) is the
 * running policy's, also for an identity resolved before a reload, as HTTP's is (a keep-alive
 * connection's next request is resolved again under a new policy). A reload that gives the client's
 * address another host applies to a live UDP association's new destinations and to a CONNECT request
 * sent after the greeting, as to a new connection from that address. Before, they kept the host of
 * the policy the connection started under: 127.0.0.0/8 moved from `lab` (loopback allowed) to
 * `kiosk` (nothing allowed) still let a live association reach a destination it had never sent to
 * (1 of 1 datagrams relayed, enforce mode), and a CONNECT after the greeting got `0x00`.
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

/** Enforce mode, no users: loopback clients are host `lab`, whose role `open` allows loopback. */
async function gatewayWithLoopbackAsLab(): Promise<TestGateway> {
  const gw = await startTestGateway({
    mode: 'enforce',
    identity: { hosts: [{ name: 'lab', cidr: '127.0.0.0/8', roles: ['open'] }] },
    roles: { open: { allow: [{ cidr: '127.0.0.0/8' }] }, shut: { allow: [{ host: 'only.example.com', ports: [443] }] } },
    defaultRoles: [],
  });
  cleanups.push(() => gw.stop());
  return gw;
}

/** A reload (as PUT /v1/policy and SIGHUP make): `lab` moves elsewhere, loopback is `kiosk` (role `shut`). */
function moveLoopbackToKiosk(gw: TestGateway): void {
  reloadEdited<{ identity: { hosts: unknown[] } }>(gw, (c) => {
    c.identity.hosts = [
      { name: 'lab', cidr: '10.9.9.0/24', roles: ['open'] },
      { name: 'kiosk', cidr: '127.0.0.0/8', roles: ['shut'] },
    ];
  });
}

const echo = async (): Promise<UdpEcho> => (await udpEchoes(cleanups, 1))[0] as UdpEcho;

describe('SOCKS5 after a reload that gives the client’s address another host', () => {
  it('a live UDP association’s new destination is judged as the new host; the one relayed before goes on', async () => {
    const gw = await gatewayWithLoopbackAsLab();
    const before = await echo();
    const after = await echo();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const first = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', before.port, Buffer.from('one')), a.relay);
    expect((await first).data.toString()).toBe('echo:one');

    moveLoopbackToKiosk(gw);
    await sendTo(client, udpFrame('127.0.0.1', after.port, Buffer.from('two')), a.relay);
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === after.port);
    expect(refused).toMatchObject({ verdict: 'block', closeReason: 'not-allowlisted', bytesOut: 0, bytesIn: 0 });
    expect([refused.identity.host, refused.identity.roles]).toEqual(['kiosk', ['shut']]);
    await quietPeriod();
    expect(after.received).toHaveLength(0);

    // As a new association from the same address is judged.
    const client2 = await udpSocket(cleanups);
    const a2 = await associate(gw, client2, cleanups);
    await sendTo(client2, udpFrame('127.0.0.1', after.port, Buffer.from('three')), a2.relay);
    const refused2 = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === after.port && r.id !== refused.id);
    expect(refused2).toMatchObject({ verdict: 'block', closeReason: 'not-allowlisted' });
    expect(refused2.identity.host).toBe('kiosk');

    // The destination relayed before the reload is an established connection of the association.
    const fourth = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', before.port, Buffer.from('four')), a.relay);
    expect((await fourth).data.toString()).toBe('echo:four');
  });

  it('a CONNECT request sent after a greeting made under the old policy is judged as the new host', async () => {
    const gw = await gatewayWithLoopbackAsLab();
    const origin = await startTcpOrigin();
    cleanups.push(() => origin.close());
    const s = await rawConnect(gw.socksPort);
    cleanups.push(() => s.destroy());
    s.on('error', () => undefined);
    s.write(Buffer.from([0x05, 0x01, 0x00]));
    expect([...(await readBytes(s, 2))]).toEqual([0x05, 0x00]);

    moveLoopbackToKiosk(gw);
    const port = Buffer.alloc(2);
    port.writeUInt16BE(origin.port);
    s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1]), port]));
    const reply = await readBytes(s, 10);
    expect(reply[1]).toBe(0x02);
    if (!s.destroyed) await Promise.race([once(s, 'close'), new Promise((r) => setTimeout(r, 2000))]);
    const record = await gw.waitForClosed((r) => r.protocol === 'socks5');
    expect(record).toMatchObject({ verdict: 'block', closeReason: 'not-allowlisted', bytesOut: 0, bytesIn: 0 });
    expect([record.identity.host, record.identity.roles]).toEqual(['kiosk', ['shut']]);
    expect(origin.done).toHaveLength(0);
  });
});
