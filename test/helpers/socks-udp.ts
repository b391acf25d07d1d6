/**
 * A SOCKS5 UDP ASSOCIATE client for tests, on the `socks` package's client and its UDP frame codec:
 * a bound UDP socket, the association (its TCP control connection and the relay's address), frames,
 * and the next reply. Everything opened is pushed onto `cleanups` for the test's afterEach.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { SocksClient } from 'socks';
import type { Resolver } from '../../gateway/context.ts';
import { GatewayError } from '../../gateway/errors.ts';

export type Cleanups = Array<() => unknown>;

export interface Association {
  control: Socket;
  relay: { host: string; port: number };
}

/** A UDP socket bound on loopback (127.0.0.1 or ::1 unless `address` says otherwise). */
export async function udpSocket(cleanups: Cleanups, type: 'udp4' | 'udp6' = 'udp4', address?: string): Promise<UdpSocket> {
  const s = createSocket(type);
  s.bind(0, address ?? (type === 'udp4' ? '127.0.0.1' : '::1'));
  await once(s, 'listening');
  cleanups.push(() => new Promise<void>((r) => s.close(() => r())));
  return s;
}

/**
 * UDP ASSOCIATE through the gateway's SOCKS listener. By default the request announces `client`'s
 * port (the gateway then narrows the association to it); `announcePort: false` sends port 0.
 */
export async function associate(
  gw: { socksHost: string; socksPort: number },
  client: UdpSocket,
  cleanups: Cleanups,
  opts: { auth?: { userId: string; password: string }; announcePort?: boolean } = {},
): Promise<Association> {
  // SocksClient.createConnection() only does CONNECT; associate goes through an instance.
  const sc = new SocksClient({
    proxy: { host: gw.socksHost, port: gw.socksPort, type: 5, ...(opts.auth ?? {}) },
    command: 'associate',
    destination: { host: '0.0.0.0', port: opts.announcePort === false ? 0 : client.address().port },
  });
  const info = await new Promise<{ socket: Socket; remoteHost?: { host: string; port: number } }>((resolve, reject) => {
    sc.once('established', resolve);
    sc.once('error', reject);
    sc.connect();
  });
  info.socket.on('error', () => {});
  cleanups.push(() => info.socket.destroy());
  return { control: info.socket, relay: info.remoteHost as { host: string; port: number } };
}

/** A SOCKS5 UDP datagram for `host:port` carrying `data` (`frag` set for the fragment tests). */
export function udpFrame(host: string, port: number, data: Buffer, frag = 0): Buffer {
  const f = SocksClient.createUDPFrame({ remoteHost: { host, port }, data });
  f[2] = frag;
  return f;
}

export function sendTo(s: UdpSocket, buf: Buffer, to: { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => s.send(buf, to.port, to.host, (err) => (err ? reject(err) : resolve())));
}

/** The next datagram the relay sends `s`, unwrapped. */
export async function nextReply(s: UdpSocket): Promise<{ host: string; port: number; data: Buffer }> {
  const [msg] = (await once(s, 'message')) as [Buffer];
  const parsed = SocksClient.parseUDPFrame(msg);
  return { host: parsed.remoteHost.host, port: parsed.remoteHost.port, data: parsed.data };
}

/** A lookup the test holds: the name and how to end it. */
export interface HeldLookup {
  host: string;
  answer(ip: string): void;
  fail(): void;
}

/**
 * A resolver (the gateway's `resolver` seam) whose lookups of `held(host)` names wait until the test
 * answers or fails them: a name whose DNS servers do not answer, without waiting for a timeout.
 * Every other name fails at once like NXDOMAIN.
 */
export function heldResolver(held: (host: string) => boolean): { resolver: Resolver; waiting: HeldLookup[]; failAll(): void } {
  const waiting: HeldLookup[] = [];
  const resolver: Resolver = {
    lookup(host) {
      if (!held(host)) return Promise.reject(new GatewayError('EGW_DNS_FAILED', `not held: ${host}`));
      return new Promise<string[]>((resolve, reject) => {
        waiting.push({ host, answer: (ip) => resolve([ip]), fail: () => reject(new GatewayError('EGW_DNS_FAILED', `${host}: no answer`)) });
      });
    },
  };
  return {
    resolver,
    waiting,
    failAll() {
      for (const w of waiting.splice(0)) w.fail();
    },
  };
}
