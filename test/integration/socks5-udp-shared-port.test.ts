/**
 * A SOCKS5 UDP association's port shared by another local user's socket: two UDP sockets may bind
 * one address and port (or the wildcard and the address) if both set SO_REUSEADDR, whatever their
 * owners. The owner check (socks5-udp-source.ts) took the most specific socket /proc/net/udp listed for 127.0.0.1:P, the
 * first among equals, so a datagram from any of them was judged by that one's owner. Reproduced
 * through a real `serve` (enforce, local attribution on) with an RFC 1929 user alice naming her
 * client's port P and a python3 run as nobody sending to the relay until the lookup answered, then
 * 5 more: on 127.0.0.1:P with SO_REUSEADDR, bound first, all relayed with her identity (6 of 6);
 * bound second, none, but the port was remembered as nobody's and alice's own datagrams dropped for
 * the association's life; on 0.0.0.0:P, bound first, 6 of 6. Now a
 * port whose listed sockets belong to more than one uid fails closed for as long as they do: every
 * datagram from it is dropped and counted as its owner not known, and once the other socket is
 * gone alice's next datagram locks.
 */
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { canRunAsOtherUser, skipNotice } from '../helpers/skip-notice.ts';
import { associate, type Cleanups, sendTo, udpFrame } from '../helpers/socks-udp.ts';
import { counter, LOOKUP_GUARD_MS, logLines, PASSWORD, retransmitUntil, serveWithAlice, sharingUser, sink, socksOf } from '../helpers/socks-udp-other-user.ts';

const cleanups: Cleanups = [];
const ALICE = { userId: 'alice', password: PASSWORD };
const canRun = (): boolean => skipNotice(canRunAsOtherUser(), "a SOCKS5 UDP association and another user's socket", 'needs root and setpriv (util-linux)');

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

describe("an association's named port shared with another user's socket (SO_REUSEADDR)", () => {
  it.skipIf(!canRun()).each([
    { first: 'nobody', at: '127.0.0.1' },
    { first: 'alice', at: '127.0.0.1' },
    { first: 'nobody', at: '0.0.0.0' },
  ])(
    "$first bound first, nobody on $at: nobody's datagrams and alice's are not relayed while the port is shared; once nobody's socket is gone alice locks",
    async ({ first, at }) => {
      const dest = await sink(cleanups);
      const to = dest.socket.address().port;
      const { s, flowLog } = await serveWithAlice(cleanups, to, true);
      const alice = createSocket({ type: 'udp4', reuseAddr: true });
      cleanups.push(() => new Promise<void>((r) => alice.close(() => r())));
      let nobody = first === 'nobody' ? await sharingUser(cleanups, 0, at) : null;
      alice.bind(nobody?.port ?? 0, '127.0.0.1');
      await once(alice, 'listening');
      const port = alice.address().port;
      nobody ??= await sharingUser(cleanups, port, at);
      expect(nobody.port).toBe(port);
      const a = await associate(socksOf(s), alice, cleanups, { auth: ALICE });

      const drops = async (): Promise<number[]> => Promise.all(['other_user', 'held', 'owner_unknown'].map((k) => counter(s, `gw_socks_udp_${k}_dropped_total`)));
      const judged = async (): Promise<number> => (await drops()).reduce((n, d) => n + d, 0) + dest.got.length;
      const fromNobody = udpFrame('127.0.0.1', to, Buffer.from('from nobody'));
      // Nobody retransmits until the port's owner lookup has answered (logged whether within its 500 ms
      // wait or after it: one read of /proc/net/udp takes seconds on a loaded machine, and what comes
      // meanwhile is dropped unasked). The bound only stops a gateway that never answers.
      const answered = (): boolean => dest.got.length > 0 || s.stderr().includes('shared by sockets of several users') || s.stderr().includes('another user');
      const sent = await retransmitUntil(() => nobody.send(fromNobody, a.relay, 1), answered);
      expect(answered()).toBe(true);
      // Then 5 more, judged by that answer (the port not remembered: each asks again, and is dropped
      // as shared, as not known in time, or as over the held limits). The waits are hang guards.
      await nobody.send(fromNobody, a.relay, 5);
      await until("nobody's datagrams relayed or dropped", async () => (await judged()) >= sent + 5, LOOKUP_GUARD_MS);
      // Alice's own, from the same port while nobody's socket shares it: dropped too.
      for (let i = 0; i < 3; i++) await sendTo(alice, udpFrame('127.0.0.1', to, Buffer.from('from alice, shared')), a.relay);
      await until("alice's datagrams relayed or dropped", async () => (await judged()) >= sent + 8, LOOKUP_GUARD_MS);
      await new Promise((r) => setTimeout(r, 200));
      expect(dest.got).toEqual([]);
      const [otherUserDrops, heldDrops, unknownDrops] = await drops();
      expect(otherUserDrops).toBe(0);
      expect((heldDrops as number) + (unknownDrops as number)).toBe(sent + 8);
      const log = logLines(s, 'shared by sockets of several users');
      expect(log.length).toBeGreaterThan(0);
      expect(log[0]).toMatchObject({ client: `127.0.0.1:${port}`, username: 'alice', uids: [0, 65534], controlUid: 0 });

      // Nobody's socket gone: alice retransmits until her port's lookup (a shared port is asked again)
      // locks it and she is relayed.
      await nobody.close();
      await retransmitUntil(() => sendTo(alice, udpFrame('127.0.0.1', to, Buffer.from('from alice')), a.relay), () => dest.got.length > 0);
      expect(dest.got.length).toBeGreaterThan(0);
      expect(new Set(dest.got)).toEqual(new Set(['from alice']));
      a.control.destroy();
      await until('the association recorded', () => parseRecords(readFileSync(flowLog, 'utf8')).some((r) => r.protocol === 'socks5-udp'), LOOKUP_GUARD_MS);
      const [rec] = parseRecords(readFileSync(flowLog, 'utf8')).filter((r) => r.protocol === 'socks5-udp');
      expect(rec).toMatchObject({ verdict: 'allow', client: { ip: '127.0.0.1', port } });
      expect(rec?.identity.user).toBe('alice');
      expect(rec?.reasons.find((r) => r.startsWith('udp datagrams dropped:'))).toContain(`${(await drops())[2]} whose socket's owner was not known in time or shared`);
    },
    4 * LOOKUP_GUARD_MS,
  );
});
