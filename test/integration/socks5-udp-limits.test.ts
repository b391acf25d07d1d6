/**
 * What a SOCKS5 UDP association may hold while its destinations are being admitted, through the real
 * listener. Before, each of up to 4,096 waiting destinations held 16 datagrams of up to 64 KB (4 GB
 * from one association, reproduced as 1 GB RSS in 9 s). Now the held bytes are capped per
 * association (1 MiB) and gateway-wide, and the destinations waiting per association; past a cap the
 * datagram is dropped, counted (record, metrics) and logged once. Names whose DNS has not answered
 * yet are held lookups (test/helpers/socks-udp.ts heldResolver): their destinations wait.
 */
import type { Socket as UdpSocket } from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { adminGet, adminPut, runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, heldResolver, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startBareSocksGateway, startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const MiB = 1024 * 1024;
const BIG = 60_000;
const DEAD = 'a.dead.example.test';
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function echoServer(): Promise<UdpEcho> {
  const e = await startUdpEcho('udp4');
  cleanups.push(() => e.close());
  return e;
}

/** UDP sockets on loopback that count what arrives (no replies). */
async function sinks(n: number): Promise<Array<{ socket: UdpSocket; got: Buffer[] }>> {
  const out: Array<{ socket: UdpSocket; got: Buffer[] }> = [];
  for (let i = 0; i < n; i++) {
    const socket = await udpSocket(cleanups);
    const got: Buffer[] = [];
    socket.on('message', (m: Buffer) => got.push(m));
    out.push({ socket, got });
  }
  return out;
}

/** One metric's value from GET /metrics. */
async function metric(gw: TestGateway, name: string): Promise<number> {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec((await adminGet(gw, '/metrics')).text);
  if (!m) throw new Error(`no metric ${name}`);
  return Number(m[1]);
}

describe('datagrams held while destinations are being admitted', () => {
  it('one association holds at most 1 MiB: the rest is dropped and counted; once their names answer, the held ones go out and new destinations work', async () => {
    // The targets are names (equal length) whose lookups wait until the test answers them.
    const dns = heldResolver((h) => h.endsWith('.example.test'));
    const gw = await startTestGateway({}, { resolver: dns.resolver });
    cleanups.push(() => gw.stop());
    cleanups.push(() => dns.failAll());
    const echo = await echoServer();
    const targets = await sinks(40);
    const nameOf = (i: number) => `t${String(i).padStart(2, '0')}.held.example.test`;
    /** Answer every lookup of a target name waiting now (the dead name's stays unanswered). */
    const answerTargets = () => {
      for (const w of dns.waiting.filter((x) => x.host !== DEAD)) {
        dns.waiting.splice(dns.waiting.indexOf(w), 1);
        w.answer('127.0.0.1');
      }
    };
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    // The association is open (its first destination relayed)…
    const opened = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('open')), a.relay);
    expect((await opened).data.toString()).toBe('echo:open');
    // …then a name whose DNS never answers, and 40 destinations whose lookups have not answered yet.
    const deadFrame = udpFrame(DEAD, 53, Buffer.from('q'));
    await sendTo(client, deadFrame, a.relay);
    await until('the dead lookup', () => dns.waiting.length === 1);
    const frames = targets.map((t, i) => udpFrame(nameOf(i), t.socket.address().port, Buffer.alloc(BIG, i)));
    const frameLen = (frames[0] as Buffer).length;
    let held = 0;
    let dropped = 0;
    for (const f of frames) {
      const before = held + dropped;
      await sendTo(client, f, a.relay);
      // One datagram at a time, each seen by the gateway before the next (no kernel drops).
      await until('the gateway to hold or drop the datagram', async () => {
        held = ((await metric(gw, 'gw_socks_udp_held_bytes')) - deadFrame.length) / frameLen;
        dropped = await metric(gw, 'gw_socks_udp_held_dropped_total');
        return held + dropped === before + 1;
      });
    }
    const fits = Math.floor((MiB - deadFrame.length) / frameLen);
    expect(fits).toBe(17);
    expect(held).toBe(fits);
    expect(dropped).toBe(frames.length - fits);
    expect(await metric(gw, 'gw_socks_udp_held_bytes')).toBeLessThanOrEqual(MiB);
    // One warning for the association, not one per datagram.
    const warnings = gw.logs.filter((l) => String(l.msg).includes('wait for admission'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ client: `127.0.0.1:${client.address().port}` });

    // The target names answer: the held datagrams go out, whole, each once; the dead name fails.
    await until('the held datagrams to arrive', () => {
      answerTargets();
      return targets.reduce((n, t) => n + t.got.length, 0) === fits;
    });
    dns.failAll();
    await until('the dead name to be refused', async () => (await metric(gw, 'gw_socks_udp_held_bytes')) === 0);
    expect(targets.slice(0, fits).map((t) => t.got.map((g) => g.length))).toEqual(Array.from({ length: fits }, () => [BIG]));
    expect(await metric(gw, 'gw_socks_udp_held_bytes')).toBe(0);
    // A dropped destination was never kept: sent again, it is a new destination and is relayed.
    const late = targets[fits] as { socket: UdpSocket; got: Buffer[] };
    await sendTo(client, udpFrame(nameOf(fits), late.socket.address().port, Buffer.from('late')), a.relay);
    await until('the late datagram', () => {
      answerTargets();
      return late.got.length === 1;
    });
    const again = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('again')), a.relay);
    expect((await again).data.toString()).toBe('echo:again');

    a.control.destroy();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === echo.port);
    expect(rec.bytesOut).toBe('open'.length + fits * BIG + 'late'.length + 'again'.length);
    const reasons = rec.reasons.join('\n');
    expect(reasons).toMatch(new RegExp(`${fits + 2} destinations relayed, 1 refused`));
    expect(reasons).toMatch(new RegExp(`${frames.length - fits} over the limits of datagrams waiting for admission`));
  });

  it('the gateway-wide cap holds across associations: the second one\'s datagram past it is dropped', async () => {
    const dns = heldResolver((h) => h.endsWith('.dead.example.test'));
    const frameLen = udpFrame(DEAD, 1, Buffer.alloc(BIG)).length;
    // Room for three big datagrams and the two dead-name queries, not four.
    const gw = await startBareSocksGateway({}, '127.0.0.1', null, { resolver: dns.resolver, udpHeldBytes: 3 * frameLen + 200 });
    cleanups.push(() => gw.stop());
    cleanups.push(() => dns.failAll());
    const echo = await echoServer();
    const [target] = await sinks(1);
    const port = (target as { socket: UdpSocket }).socket.address().port;
    const ledger = gw.server.udp;
    const open = async () => {
      const client = await udpSocket(cleanups);
      const a = await associate(gw, client, cleanups);
      const r = nextReply(client);
      await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('open')), a.relay);
      await r;
      const n = dns.waiting.length;
      await sendTo(client, udpFrame(DEAD, 53, Buffer.from('q')), a.relay);
      await until('the dead lookup', () => dns.waiting.length === n + 1);
      return { client, a };
    };
    const first = await open();
    const second = await open();
    const seen = () => ledger.heldBytes + ledger.heldDroppedTotal * frameLen;
    for (const [i, who] of [first, first, first, second].entries()) {
      const before = seen();
      // A destination whose lookup does not answer: its datagrams wait.
      await sendTo(who.client, udpFrame(DEAD, port, Buffer.alloc(BIG, i)), who.a.relay);
      await until('the gateway to hold or drop the datagram', () => seen() > before);
    }
    expect(ledger.heldDroppedTotal).toBe(1);
    first.a.control.destroy();
    second.a.control.destroy();
    const recs = await Promise.all(
      [first, second].map((w) => gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === w.client.address().port && r.destination.port === echo.port)),
    );
    expect(recs.map((r) => /(\d+) over the limits of datagrams waiting/.exec(r.reasons.join('\n'))?.[1])).toEqual(['0', '1']);
    // The association's end gave its held bytes back.
    expect(ledger.heldBytes).toBe(0);
  });

  it('at most 64 destinations wait for admission per association; more are dropped and counted', async () => {
    const dns = heldResolver((h) => h.endsWith('.dead.example.test'));
    const gw = await startBareSocksGateway({}, '127.0.0.1', null, { resolver: dns.resolver });
    cleanups.push(() => gw.stop());
    cleanups.push(() => dns.failAll());
    const echo = await echoServer();
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const r = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('open')), a.relay);
    await r;
    await sendTo(client, udpFrame(DEAD, 53, Buffer.from('q')), a.relay);
    await until('the dead lookup', () => dns.waiting.length === 1);
    const ledger = gw.server.udp;
    // 70 more destinations (the dead name on distinct ports): 63 wait beside the first, 7 are dropped.
    for (let i = 0; i < 70; i++) {
      const before = ledger.heldBytes + ledger.heldDroppedTotal;
      await sendTo(client, udpFrame(DEAD, 20_000 + i, Buffer.from('x')), a.relay);
      await until('the gateway to hold or drop the datagram', () => ledger.heldBytes + ledger.heldDroppedTotal > before);
    }
    expect(ledger.heldDroppedTotal).toBe(7);
    a.control.destroy();
    const rec = await gw.waitForClosed((x) => x.protocol === 'socks5-udp' && x.destination.port === echo.port);
    expect(rec.reasons.join('\n')).toMatch(/7 over the limits of datagrams waiting for admission/);
  });
});

describe('replies too large for a SOCKS UDP datagram', () => {
  // Regression: a 65,507-byte reply and its SOCKS UDP header exceed what a UDP datagram carries; the
  // send to the client failed silently, yet bytesIn counted it (recorded 65,607 while the client got 100).
  it('are dropped, counted and logged, and not in bytesIn; the largest that fits is delivered whole', async () => {
    const gw = await startTestGateway();
    cleanups.push(() => gw.stop());
    // An origin that answers each datagram with as many bytes as the datagram names.
    const origin = await udpSocket(cleanups);
    origin.on('message', (m: Buffer, rinfo) => origin.send(Buffer.alloc(Number(m.toString()), 0x61), rinfo.port, rinfo.address));
    const port = origin.address().port;
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const got: number[] = [];
    client.on('message', (m: Buffer) => got.push(m.length));
    // IPv4 carries at most 65,507 bytes of UDP payload; the reply header for 127.0.0.1 is 10 bytes.
    const fits = 65_507 - 10;
    for (const n of [100, fits + 1, 65_507, fits]) {
      const before = got.length;
      const dropsBefore = await metric(gw, 'gw_socks_udp_replies_dropped_total');
      await sendTo(client, udpFrame('127.0.0.1', port, Buffer.from(String(n))), a.relay);
      await until(`the reply of ${n} bytes (or its drop)`, async () => got.length > before || (await metric(gw, 'gw_socks_udp_replies_dropped_total')) > dropsBefore);
    }
    // The client got the two that fit, header included, and nothing else.
    expect(got).toEqual([100 + 10, fits + 10]);
    expect(await metric(gw, 'gw_socks_udp_replies_dropped_total')).toBe(2);
    const warnings = gw.logs.filter((l) => String(l.msg).includes('too large'));
    expect(warnings).toHaveLength(1);
    a.control.destroy();
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === port);
    // bytesIn: payload delivered to the client, exact to the byte.
    expect(rec.bytesIn).toBe(100 + fits);
    expect(rec.reasons.join('\n')).toMatch(/2 replies too large for the client/);
  });
});

// Regression: an association whose first destination met the identity's flow limit kept that
// destination refused for its whole life: once the limit cleared, every datagram to it was still
// dropped ("to refused destinations"), and UDP told the client nothing. Now the refusal is the
// association's last answer, as 0x02 and the close are a CONNECT's.
describe('an association over the identity limits', () => {
  it('is refused at UDP ASSOCIATE (0x02, one rate-limit record, no relay); once the limit clears a new association relays both ways', async () => {
    const gw = await startTestGateway({ limits: { maxFlowsPerIdentity: 1 } });
    cleanups.push(() => gw.stop());
    const echo = await echoServer();
    // The identity's one flow: an association relaying to the echo.
    const holder = await udpSocket(cleanups);
    const first = await associate(gw, holder, cleanups);
    await sendTo(holder, udpFrame('127.0.0.1', echo.port, Buffer.from('one')), first.relay);
    expect((await nextReply(holder)).data.toString()).toBe('echo:one');

    const client = await udpSocket(cleanups);
    await expect(associate(gw, client, cleanups)).rejects.toThrow(/NotAllowed/);
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.closeReason === 'rate-limit');
    expect(refused).toMatchObject({ verdict: 'block', enforced: true, reason: 'rate-limit', bytesOut: 0, communityId: null });
    expect(gw.closed.filter((r) => r.protocol === 'socks5-udp')).toHaveLength(1);

    // The limit clears when the first association ends; the client associates again and is served.
    first.control.destroy();
    await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === holder.address().port);
    await until('the identity to have no live flow', () => gw.flows.activeCount === 0);
    const again = await associate(gw, client, cleanups);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('three')), again.relay);
    expect((await nextReply(client)).data.toString()).toBe('echo:three');
    expect(echo.received.map((d) => d.data.toString())).toEqual(['one', 'three']);
  });

  it('over the limit at its first datagram (lowered by a reload since it was made): ends with its control connection, one rate-limit record', async () => {
    const gw = await startTestGateway({ limits: { maxFlowsPerIdentity: 2 } });
    cleanups.push(() => gw.stop());
    const echo = await echoServer();
    const holder = await udpSocket(cleanups);
    const first = await associate(gw, holder, cleanups);
    await sendTo(holder, udpFrame('127.0.0.1', echo.port, Buffer.from('one')), first.relay);
    expect((await nextReply(holder)).data.toString()).toBe('echo:one');
    const client = await udpSocket(cleanups);
    const over = await associate(gw, client, cleanups);
    const config = await runningConfig(gw);
    (config.limits as { maxFlowsPerIdentity: number }).maxFlowsPerIdentity = 1;
    expect(await adminPut(gw, '/v1/policy', config)).toBe(200);
    const ended = new Promise<void>((resolve) => over.control.once('close', () => resolve()));
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('two')), over.relay);
    await ended;
    const refused = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === client.address().port);
    expect(refused).toMatchObject({ verdict: 'block', closeReason: 'rate-limit', bytesOut: 0, communityId: null });
    expect(gw.closed.filter((r) => r.client.port === client.address().port)).toHaveLength(1);
    expect(echo.received.map((d) => d.data.toString())).toEqual(['one']);
  });
});
