/**
 * SOCKS5 UDP ASSOCIATE through the real listener with the `socks` client (associate + its UDP frame
 * codec) and loopback UDP echo origins: relaying both ways, the client-address lock, fragments,
 * per-destination policy, the end of the association with its TCP control connection, and the
 * association's one flow record with exact payload byte counts.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Association, associate as associateVia, udpFrame as frame, nextReply, sendTo as send, udpSocket } from '../helpers/socks-udp.ts';
import { type SocksGateway, startSocksGateway, startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const PREFIX = Buffer.from('echo:');

let gw: SocksGateway;
let echo: UdpEcho;
let echo2: UdpEcho;
const cleanups: Array<() => unknown> = [];

beforeAll(async () => {
  gw = await startSocksGateway({ resolver: { hosts: { 'files.example.test': '127.0.0.1' } } });
  echo = await startUdpEcho('udp4', PREFIX);
  echo2 = await startUdpEcho('udp4', PREFIX);
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});
afterAll(async () => {
  await gw.stop();
  await echo.close();
  await echo2.close();
});

/** ASSOCIATE from a fresh client socket, announcing its port (so the gateway narrows to it) unless told not to. */
async function associate(announcePort = true): Promise<Association & { client: UdpSocket }> {
  const client = await udpSocket(cleanups);
  return { ...(await associateVia(gw, client, cleanups, { announcePort })), client };
}

describe('SOCKS5 UDP ASSOCIATE', () => {
  it('relays datagrams both ways; one flow record with exact payload bytes', async () => {
    const a = await associate();
    expect(a.relay.host).toBe('127.0.0.1');
    const sizes = [1, 200, 1400];
    let sent = 0;
    let got = 0;
    for (const n of sizes) {
      const data = Buffer.alloc(n, 0x42);
      const reply = nextReply(a.client);
      await send(a.client, frame('127.0.0.1', echo.port, data), a.relay);
      const r = await reply;
      expect(r.host).toBe('127.0.0.1');
      expect(r.port).toBe(echo.port);
      expect(r.data).toEqual(Buffer.concat([PREFIX, data]));
      sent += n;
      got += r.data.length;
    }
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.destination.port === echo.port);
    expect(rec.bytesOut).toBe(sent);
    expect(rec.bytesIn).toBe(got);
    expect(got).toBe(sent + sizes.length * PREFIX.length);
    expect(rec.destination).toEqual({ host: '127.0.0.1', ip: '127.0.0.1', port: echo.port });
    expect(rec.closeReason).toBe('closed');
    expect(rec.communityId).toMatch(/^1:/);
    expect(rec.reasons.join('\n')).toMatch(/1 destination relayed, 0 refused/);
  });

  it('drops datagrams from another source port or address and fragments; counts them', async () => {
    const a = await associate();
    const otherPort = await udpSocket(cleanups);
    const otherAddr = await udpSocket(cleanups, 'udp4', '127.0.0.2');
    const before = echo.received.length;
    await send(otherPort, frame('127.0.0.1', echo.port, Buffer.from('from another port')), a.relay);
    await send(otherAddr, frame('127.0.0.1', echo.port, Buffer.from('from another address')), a.relay);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('fragment'), 1), a.relay);
    const reply = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('legit')), a.relay);
    expect((await reply).data.toString()).toBe('echo:legit');
    // Only the legit datagram reached the origin (loopback delivers in send order).
    expect(echo.received.slice(before).map((r) => r.data.toString())).toEqual(['legit']);
    a.control.end();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.bytesOut === 5);
    expect(rec.bytesIn).toBe(PREFIX.length + 5);
    expect(rec.reasons.join('\n')).toMatch(/1 fragments, 2 from foreign sources/);
  });

  // Regression: a datagram to port 0 was admitted, its payload counted in bytesOut, and the send
  // threw (ERR_SOCKET_BAD_PORT): nothing went out, yet the destination was counted relayed and refused,
  // and as the first one it was the record's destination (port 0, verdict allow).
  it('drops datagrams to port 0 as malformed: never admitted, sent or counted in bytes', async () => {
    const a = await associate();
    const before = echo.received.length;
    await send(a.client, frame('127.0.0.1', 0, Buffer.from('to port zero')), a.relay);
    await send(a.client, domainFrame('files.example.test', 0, Buffer.from('by name to port zero')), a.relay);
    const reply = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('legit')), a.relay);
    expect((await reply).data.toString()).toBe('echo:legit');
    expect(echo.received.slice(before).map((r) => r.data.toString())).toEqual(['legit']);
    a.control.end();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.client.port === a.client.address().port);
    expect(rec).toMatchObject({ destination: { host: '127.0.0.1', port: echo.port }, verdict: 'allow', bytesOut: 5, bytesIn: PREFIX.length + 5 });
    expect(rec.reasons.join('\n')).toMatch(/1 destination relayed, 0 refused/);
    expect(rec.reasons.join('\n')).toMatch(/2 malformed/);
    expect(gw.closed.filter((x) => x.client.port === a.client.address().port)).toHaveLength(1);
    expect(gw.logs.filter((l) => l.msg === 'socks5 udp destination refused')).toEqual([]);
  });

  it('without an announced port, the first datagram locks the source port', async () => {
    const a = await associate(false);
    const reply = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('first')), a.relay);
    expect((await reply).data.toString()).toBe('echo:first');
    const other = await udpSocket(cleanups);
    const before = echo.received.length;
    await send(other, frame('127.0.0.1', echo.port, Buffer.from('hijack')), a.relay);
    const reply2 = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('second')), a.relay);
    expect((await reply2).data.toString()).toBe('echo:second');
    expect(echo.received.slice(before).map((r) => r.data.toString())).toEqual(['second']);
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.bytesOut === 'firstsecond'.length);
    expect(rec.bytesIn).toBe(2 * PREFIX.length + 'firstsecond'.length);
  });

  it('admits each destination through policy: deny-range refused, others relayed, reply names the destination', async () => {
    const a = await associate();
    // RFC 1918: refused after resolution (deny-range); nothing is sent, nothing comes back.
    await send(a.client, frame('10.0.0.1', 9, Buffer.from('to private')), a.relay);
    const r1 = nextReply(a.client);
    await send(a.client, frame('files.example.test', echo.port, Buffer.from('by name')), a.relay);
    const got1 = await r1;
    expect(got1).toMatchObject({ host: 'files.example.test', port: echo.port });
    expect(got1.data.toString()).toBe('echo:by name');
    const r2 = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo2.port, Buffer.from('second dest')), a.relay);
    const got2 = await r2;
    expect(got2).toMatchObject({ host: '127.0.0.1', port: echo2.port });
    // A later destination in a metadata range: refused as well, and the association goes on.
    await send(a.client, frame('169.254.169.254', 80, Buffer.from('to metadata')), a.relay);
    const r3 = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo2.port, Buffer.from('again')), a.relay);
    const got3 = await r3;
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.destination.host === 'files.example.test');
    expect(rec.bytesOut).toBe('by name'.length + 'second dest'.length + 'again'.length);
    expect(rec.bytesIn).toBe(got1.data.length + got2.data.length + got3.data.length);
    expect(rec.reasons.join('\n')).toMatch(/2 destinations relayed, 2 refused/);
    // Each refused destination left its own closed record (a refusal is recorded like TCP's): the
    // first by the association's admission, the later one by the running association.
    for (const ip of ['10.0.0.1', '169.254.169.254']) {
      const denied = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.destination.host === ip);
      expect(denied).toMatchObject({ reason: 'deny-range', verdict: 'block', closeReason: 'deny-range', bytesOut: 0, bytesIn: 0 });
      expect(denied.destination.ip).toBe(ip);
      expect(denied.client).toEqual(rec.client);
    }
  });

  it('ends the association when the TCP control connection closes: the relay port is gone', async () => {
    const a = await associate();
    const reply = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('x')), a.relay);
    await reply;
    a.control.end();
    await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.client.port === a.client.address().port);
    // A connected UDP socket learns of the closed port from the ICMP port-unreachable.
    const probe = createSocket('udp4');
    cleanups.push(() => probe.close());
    probe.connect(a.relay.port, a.relay.host);
    await once(probe, 'connect');
    const failed = once(probe, 'error');
    for (let i = 0; i < 20; i++) {
      probe.send(frame('127.0.0.1', echo.port, Buffer.from('late')));
      const done = await Promise.race([failed.then(() => true), new Promise<boolean>((r) => setImmediate(() => r(false)))]);
      if (done) break;
    }
    const [err] = (await failed) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ECONNREFUSED');
  });

  // Regression: a destination named '::ffff:7f00:1' (the form the URL parser gives '[::ffff:127.0.0.1]',
  // sent as a domain name) was sent through the udp6 socket, whose replies come from '::ffff:127.0.0.1':
  // every reply was dropped as unsolicited while the datagrams went out.
  it('a destination named by an IPv4-mapped IPv6 literal in any spelling gets its replies', async () => {
    const a = await associate();
    const names = ['::ffff:7f00:1', '[::ffff:127.0.0.1]', '0:0:0:0:0:ffff:7f00:1'];
    let got = 0;
    for (const name of names) {
      const reply = nextReply(a.client);
      await send(a.client, domainFrame(name, echo.port, Buffer.from(name)), a.relay);
      // Bounded: before the fix no reply ever came.
      const r = await Promise.race([reply, new Promise<null>((resolve) => setTimeout(() => resolve(null), 2000).unref())]);
      expect(r, `a reply for ${name}`).not.toBeNull();
      expect(r).toMatchObject({ host: name, port: echo.port });
      expect(r?.data.toString()).toBe(`echo:${name}`);
      got += r?.data.length ?? 0;
    }
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.client.port === a.client.address().port);
    expect(rec.bytesOut).toBe(names.join('').length);
    expect(rec.bytesIn).toBe(got);
    expect(rec.reasons.join('\n')).toMatch(/3 destinations relayed, 0 refused/);
    expect(rec.reasons.join('\n')).toMatch(/0 unsolicited replies/);
  });

  // Regression: replies from an address and port were answered under the header of whichever of its
  // spellings was admitted last. After 127.0.0.1 (ATYP 1) and ::ffff:127.0.0.1 (ATYP 4), a datagram to
  // 127.0.0.1 again got its reply headed ::ffff:127.0.0.1, and a reply of 65,497 bytes (65,507 with
  // ATYP 1's 10-byte header, what one IPv4 datagram holds) was dropped as too large for the client
  // under ATYP 4's 22-byte header.
  it('a reply comes back under the spelling the client sent to last, not the one admitted last', async () => {
    const a = await associate();
    const byIp = frame('127.0.0.1', echo.port, Buffer.alloc(0));
    const byName = domainFrame('files.example.test', echo.port, Buffer.alloc(0));
    const mapped = Buffer.concat([Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]), byIp.subarray(8, 10)]);
    const order: Array<[string, Buffer, number]> = [
      ['ATYP 1', byIp, 1],
      ['ATYP 3', byName, 1],
      ['ATYP 4', mapped, 1],
      ['ATYP 1 again', byIp, 1],
      ['ATYP 3 again', byName, 1],
      // The largest reply one IPv4 datagram carries under ATYP 1's header: the echo adds its prefix.
      ['ATYP 1, the largest reply', byIp, 65_507 - byIp.length - PREFIX.length],
    ];
    let sent = 0;
    let got = 0;
    for (const [label, header, size] of order) {
      const data = Buffer.alloc(size, 0x52);
      const reply = once(a.client, 'message') as Promise<[Buffer]>;
      await send(a.client, Buffer.concat([header, data]), a.relay);
      // Bounded: before the fix the largest reply was dropped and never came.
      const r = await Promise.race([reply, new Promise<null>((resolve) => setTimeout(() => resolve(null), 5000).unref())]);
      expect(r, `a reply for ${label}`).not.toBeNull();
      const msg = (r as [Buffer])[0];
      expect(msg.subarray(0, header.length).toString('hex'), label).toBe(header.toString('hex'));
      expect(msg.subarray(header.length).equals(Buffer.concat([PREFIX, data])), label).toBe(true);
      sent += size;
      got += msg.length - header.length;
    }
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.client.port === a.client.address().port);
    expect(rec.bytesOut).toBe(sent);
    expect(rec.bytesIn).toBe(got);
    expect(rec.reasons.join('\n')).toMatch(/3 destinations relayed, 0 refused/);
    expect(rec.reasons.join('\n')).toMatch(/0 replies too large for the client/);
  });

  it('ignores unsolicited datagrams sent to the upstream socket', async () => {
    const a = await associate();
    const reply = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('hello')), a.relay);
    await reply;
    // The echo origin saw the gateway's upstream socket: a stranger sends there.
    const from = echo.received[echo.received.length - 1]?.from as string;
    const upstreamPort = Number(from.slice(from.lastIndexOf(':') + 1));
    const stranger = await udpSocket(cleanups);
    await send(stranger, Buffer.from('unsolicited'), { host: '127.0.0.1', port: upstreamPort });
    const reply2 = nextReply(a.client);
    await send(a.client, frame('127.0.0.1', echo.port, Buffer.from('again')), a.relay);
    expect((await reply2).data.toString()).toBe('echo:again');
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.bytesOut === 10);
    expect(rec.bytesIn).toBe(2 * PREFIX.length + 10);
    expect(rec.reasons.join('\n')).toMatch(/1 unsolicited replies/);
  });
});

/** A SOCKS5 UDP datagram naming its destination as a domain name (ATYP 0x03), whatever the text. */
function domainFrame(name: string, port: number, data: Buffer): Buffer {
  const n = Buffer.from(name, 'latin1');
  const head = Buffer.alloc(4 + 1 + n.length + 2);
  head[3] = 0x03;
  head[4] = n.length;
  n.copy(head, 5);
  head.writeUInt16BE(port, 5 + n.length);
  return Buffer.concat([head, data]);
}
