/**
 * What a UDP ASSOCIATE's DST.ADDR and DST.PORT mean (docs/spec-notes.md, "What UDP ASSOCIATE's
 * DST.ADDR and DST.PORT mean here"): datagrams are accepted only from the control connection's
 * client IP, whatever address the request declared; a non-zero declared port narrows the association
 * to that source port. Pins the documented behaviour through the listener with the `socks` client.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestGateway } from '../helpers/gateway.ts';
import { type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho } from './socks5-harness.ts';

const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** A socket on 127.0.0.2 and one on 127.0.0.1 with the same port number (a few tries: the port may be taken on 127.0.0.1). */
async function samePortPair(): Promise<{ other: UdpSocket; mine: UdpSocket }> {
  for (let i = 0; i < 10; i++) {
    const other = await udpSocket(cleanups, 'udp4', '127.0.0.2');
    const mine = await udpSocketAt(other.address().port);
    if (mine !== null) return { other, mine };
  }
  throw new Error('no port free on both 127.0.0.1 and 127.0.0.2 in 10 tries');
}

async function udpSocketAt(port: number): Promise<UdpSocket | null> {
  const s = createSocket('udp4');
  const ok = await new Promise<boolean>((resolve) => {
    s.once('error', () => resolve(false));
    s.bind(port, '127.0.0.1', () => resolve(true));
  });
  if (!ok) return null;
  cleanups.push(() => new Promise<void>((r) => s.close(() => r())));
  return s;
}

describe("UDP ASSOCIATE's declared address and port", () => {
  it("a declared other address is not believed: only the control connection's IP, on the declared port, is relayed", async () => {
    const gw = await startTestGateway();
    cleanups.push(() => gw.stop());
    const echo = await startUdpEcho('udp4');
    cleanups.push(() => echo.close());
    const { other, mine } = await samePortPair();
    const port = other.address().port;
    // The control connection comes from 127.0.0.1; the request declares 127.0.0.2:port.
    const sc = new SocksClient({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'associate', destination: { host: '127.0.0.2', port } });
    const info = await new Promise<{ socket: Socket; remoteHost?: { host: string; port: number } }>((resolve, reject) => {
      sc.once('established', resolve);
      sc.once('error', reject);
      sc.connect();
    });
    info.socket.on('error', () => {});
    cleanups.push(() => info.socket.destroy());
    const relay = info.remoteHost as { host: string; port: number };
    const elsewhere = await udpSocket(cleanups);
    await sendTo(other, udpFrame('127.0.0.1', echo.port, Buffer.from('from the declared address')), relay);
    await sendTo(elsewhere, udpFrame('127.0.0.1', echo.port, Buffer.from('from another port')), relay);
    const reply = nextReply(mine);
    await sendTo(mine, udpFrame('127.0.0.1', echo.port, Buffer.from('legit')), relay);
    expect((await reply).data.toString()).toBe('echo:legit');
    // Loopback delivers in send order: the two before it were dropped, not late.
    expect(echo.received.map((r) => r.data.toString())).toEqual(['legit']);
    info.socket.end();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === port);
    expect(rec.client.ip).toBe('127.0.0.1');
    expect(rec.reasons.join('\n')).toMatch(/0 fragments, 2 from foreign sources/);
  });
});
