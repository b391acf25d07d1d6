/**
 * A SOCKS5 UDP datagram for a port whose number one of the gateway's TCP listeners also has is not a
 * dial to the gateway: UDP and TCP ports are apart, and the listeners are TCP. The self-dial check
 * compared port numbers whatever the protocol, so such a datagram was refused deny-range
 * (`policy.deny-range`, "is a listener of this gateway"), in monitor mode too. Found as a CI failure
 * (monitor-quarantine.test.ts, node 24): the test's UDP echo server had been given the port number
 * of the gateway's TCP listener, and both of a monitor gateway's associations were blocked.
 * Reproduced here on purpose: a UDP echo bound on the number of each listener's TCP port.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';

const cleanups: Cleanups = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** A UDP echo on 127.0.0.1:`port` (the number of a TCP listener: free for UDP). */
async function echoOn(port: number): Promise<UdpSocket> {
  const s = createSocket('udp4');
  s.on('message', (msg, rinfo) => s.send(msg, rinfo.port, rinfo.address));
  s.bind(port, '127.0.0.1');
  await once(s, 'listening');
  cleanups.push(() => new Promise<void>((r) => s.close(() => r())));
  return s;
}

describe('SOCKS5 UDP to a port number the gateway listens on with TCP', () => {
  for (const mode of ['enforce', 'monitor'] as const) {
    it(`${mode}: relayed both ways and recorded allow, for the HTTP, SOCKS5 and admin listeners' numbers`, async () => {
      const gw: TestGateway = await startTestGateway({ mode });
      cleanups.push(() => gw.stop());
      const adminPort = Number(gw.admin.slice(gw.admin.lastIndexOf(':') + 1));
      for (const port of [gw.httpPort, gw.socksPort, adminPort]) {
        await echoOn(port);
        const client = await udpSocket(cleanups);
        const a = await associate(gw, client, cleanups);
        const reply = nextReply(client);
        await sendTo(client, udpFrame('127.0.0.1', port, Buffer.from(`to ${port}`)), a.relay);
        expect((await reply).data.toString()).toBe(`to ${port}`);
        a.control.destroy();
        const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === port);
        expect(rec, `port ${port}`).toMatchObject({ verdict: 'allow', bytesOut: `to ${port}`.length, bytesIn: `to ${port}`.length });
      }
    });
  }
});
