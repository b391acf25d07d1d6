/**
 * The SOCKS5 UDP source-port owner check (socks5-udp-source.ts), two cases it left open, each
 * reproduced through a real `serve` (enforce, local attribution on) with an RFC 1929 user alice
 * whose role alone allows a UDP destination on 127.0.0.1, and a python3 run as nobody:
 *
 * - An association that names its port (UDP ASSOCIATE 0.0.0.0:P) before the client has bound it:
 *   nobody bound 127.0.0.1:P first and sent 3 datagrams to the relay, 3 of 3 relayed with alice's
 *   identity. Now the named port's socket is asked once, as an unnamed one's is: another uid's is
 *   not relayed.
 * - A lookup slower than the attributor's 500 ms wait: nobody holding 57,000 UDP sockets (3
 *   processes of 19,000; /proc/net/udp then takes 1.1-1.6 s to read here) and sending first to an
 *   association that named no port was locked and relayed (the first port asked was locked when the
 *   wait ran out). Now the datagrams of a port whose owner is not known in time are dropped and
 *   counted, the lookup goes on, and its answer decides: nobody's port is refused, alice's locks.
 */
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { canRunAsOtherUser, skipNotice } from '../helpers/skip-notice.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import {
  counter,
  hasProcess,
  LOOKUP_GUARD_MS,
  logLines,
  otherUser,
  PASSWORD,
  serveWithAlice,
  sharingUser,
  sink,
  socksOf,
  udpSocketHoarders,
} from '../helpers/socks-udp-other-user.ts';

const cleanups: Cleanups = [];
const ALICE = { userId: 'alice', password: PASSWORD };
const canRun = (): boolean => skipNotice(canRunAsOtherUser(), "a SOCKS5 UDP association and another user's socket", 'needs root and setpriv (util-linux)');

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

describe('an association that names its port, another local user bound it first', () => {
  it.skipIf(!canRun())(
    "nobody's datagrams from the named port are not relayed, counted and logged once; alice's own named port is relayed, recorded with her process",
    async () => {
      const dest = await sink(cleanups);
      const to = dest.socket.address().port;
      const { s, flowLog } = await serveWithAlice(cleanups, to, true);
      // The port alice names, not bound when she names it: taken from a socket closed at once.
      const named = createSocket('udp4');
      named.bind(0, '127.0.0.1');
      await once(named, 'listening');
      const port = named.address().port;
      const a = await associate(socksOf(s), named, cleanups, { auth: ALICE });
      await new Promise<void>((r) => named.close(() => r()));
      // nobody's socket on it (alone there: SO_REUSEADDR only lets it send when told).
      const nobody = await sharingUser(cleanups, port);
      const fromNobody = udpFrame('127.0.0.1', to, Buffer.from('from nobody'));
      await nobody.send(fromNobody, a.relay, 3);
      // The lookup's answer names the port another user's: logged then, whether it came within the
      // attributor's wait (the 3 dropped as another user's) or after it (dropped as not known in
      // time). One read of /proc/net/udp takes the gateway seconds on a loaded machine, a minute and
      // more at a load average of 23 with another run's 57,000 sockets listed: the guard is for a hang.
      await until("the named port's owner known", () => dest.got.length > 0 || logLines(s, 'another user').length > 0, LOOKUP_GUARD_MS);
      // Remembered as another user's: 3 more are dropped as such, without asking again.
      const before = await counter(s, 'gw_socks_udp_other_user_dropped_total');
      await nobody.send(fromNobody, a.relay, 3);
      await until('the 3 more dropped', async () => dest.got.length > 0 || (await counter(s, 'gw_socks_udp_other_user_dropped_total')) >= before + 3, 10_000);
      await new Promise((r) => setTimeout(r, 200));
      expect(dest.got).toEqual([]);
      const [otherUserDrops, unknownDrops, heldDrops] = await Promise.all(['other_user', 'owner_unknown', 'held'].map((k) => counter(s, `gw_socks_udp_${k}_dropped_total`)));
      expect(otherUserDrops).toBe(before + 3);
      expect(heldDrops).toBe(0);
      expect((otherUserDrops as number) + (unknownDrops as number)).toBe(6);
      const log = logLines(s, 'another user');
      expect(log).toHaveLength(1);
      expect(log[0]).toMatchObject({ client: `127.0.0.1:${port}`, username: 'alice', uid: 65534, controlUid: 0 });
      a.control.destroy();

      // Alice's own client, bound before it names its port: asked once, locked, relayed in order.
      // Her first 3 wait in the lookup and go on in order at the lock; should it outlast the wait,
      // they are dropped as not known in time and she sends again until it has locked (250 ms apart,
      // within the guard), then 3 more, which must come in order.
      const client = await udpSocket(cleanups);
      const b = await associate(socksOf(s), client, cleanups, { auth: ALICE });
      const sendThree = async (): Promise<void> => {
        for (let i = 0; i < 3; i++) await sendTo(client, udpFrame('127.0.0.1', to, Buffer.from(`from alice ${i}`)), b.relay);
      };
      const unknownBefore = unknownDrops as number;
      await sendThree();
      const late = async (): Promise<boolean> => (await counter(s, 'gw_socks_udp_owner_unknown_dropped_total')) > unknownBefore;
      await until('alice relayed or dropped as not known in time', async () => dest.got.length >= 3 || (await late()), LOOKUP_GUARD_MS);
      if (dest.got.length < 3) {
        for (let tries = 0; tries < LOOKUP_GUARD_MS / 250 && dest.got.length === 0; tries++) {
          await sendTo(client, udpFrame('127.0.0.1', to, Buffer.from('from alice again')), b.relay);
          await new Promise((r) => setTimeout(r, 250));
        }
        expect(dest.got.length).toBeGreaterThan(0);
        await sendThree();
      }
      await until('alice relayed', () => dest.got.slice(-3).join() === 'from alice 0,from alice 1,from alice 2', 5000);
      expect(dest.got.filter((m) => m !== 'from alice again').slice(-3)).toEqual(['from alice 0', 'from alice 1', 'from alice 2']);
      expect(dest.got.every((m) => m.startsWith('from alice'))).toBe(true);
      // Her process, named within admission's wait or after it (attributedLate): the flow has it before it ends.
      const ownPort = client.address().port;
      await until('her process named', async () => hasProcess(s, ownPort), LOOKUP_GUARD_MS);
      b.control.destroy();
      await until('both associations recorded', () => parseRecords(readFileSync(flowLog, 'utf8')).filter((r) => r.protocol === 'socks5-udp').length >= 2, 5000);
      const records = parseRecords(readFileSync(flowLog, 'utf8')).filter((r) => r.protocol === 'socks5-udp');
      const squatted = records.find((r) => r.client.port === port);
      expect(squatted?.bytesOut).toBe(0);
      expect(squatted?.reasons.find((r) => r.startsWith('udp datagrams dropped:'))).toContain(`${otherUserDrops} from another user's socket`);
      const own = records.find((r) => r.client.port === ownPort);
      expect(own).toMatchObject({ verdict: 'allow', bytesOut: dest.got.join('').length });
      expect(own?.identity.process).toMatchObject({ pid: process.pid, uid: 0, user: 'root' });
    },
    4 * LOOKUP_GUARD_MS,
  );
});

describe("an association that names no port, its owner lookup slower than the attributor's wait", () => {
  it.skipIf(!canRun())(
    "under 57,000 of nobody's UDP sockets: nobody's datagrams are not relayed, alice's client locks once its owner is known",
    async () => {
      const dest = await sink(cleanups);
      const to = dest.socket.address().port;
      const { s, flowLog } = await serveWithAlice(cleanups, to, true);
      await udpSocketHoarders(cleanups, 3, 19_000);
      const client = await udpSocket(cleanups);
      const a = await associate(socksOf(s), client, cleanups, { auth: ALICE, announcePort: false });
      const other = await otherUser(cleanups, udpFrame('127.0.0.1', to, Buffer.from('from nobody')), a.relay, 20);
      // Alice's client retransmits until relayed. Two slow lookups come first: nobody's port's, during
      // which hers are dropped unasked, then her own port's. Each reads a /proc/net/udp of 57,000
      // lines or more (1-3 s on a quiet machine, a minute and more at nice 19 at a load average of
      // 23: 160 tries, 40 s, fell short). The bound, 250 ms apart for two guards, only stops a
      // gateway that never locks her port.
      let sent = 0;
      while (sent < (2 * LOOKUP_GUARD_MS) / 250 && dest.got.length === 0) {
        await sendTo(client, udpFrame('127.0.0.1', to, Buffer.from('from alice')), a.relay);
        sent++;
        await new Promise((r) => setTimeout(r, 250));
      }
      // Nobody's socket is still open and it sent first: had its port been locked, its datagrams would be here.
      expect(dest.got.length).toBeGreaterThan(0);
      expect(new Set(dest.got)).toEqual(new Set(['from alice']));
      // Nobody's 20 and alice's not relayed are every one dropped before the lock, some as not known in time.
      const drops = (): Promise<number[]> => Promise.all(['other_user', 'held', 'owner_unknown'].map((k) => counter(s, `gw_socks_udp_${k}_dropped_total`)));
      // Every datagram sent is relayed or dropped (the last few may still be on their way when the first is relayed).
      await until('every datagram relayed or dropped', async () => (await drops()).reduce((x, y) => x + y, 0) + dest.got.length === 20 + sent, 10_000);
      const [otherUserDrops, heldDrops, unknownDrops] = await drops();
      expect(unknownDrops).toBeGreaterThan(0);
      expect((otherUserDrops as number) + (heldDrops as number) + (unknownDrops as number)).toBe(20 + sent - dest.got.length);
      // The lookup's answer, when it came, named nobody's port as another user's.
      expect(logLines(s, 'another user').map((l) => [l.client, l.uid])).toContainEqual([`127.0.0.1:${other.port}`, 65534]);
      expect(logLines(s, 'not known in time').length).toBeGreaterThan(0);
      a.control.destroy();
      await until('the association recorded', () => parseRecords(readFileSync(flowLog, 'utf8')).some((r) => r.protocol === 'socks5-udp'), 5000);
      const [rec] = parseRecords(readFileSync(flowLog, 'utf8')).filter((r) => r.protocol === 'socks5-udp');
      expect(rec).toMatchObject({ verdict: 'allow', client: { ip: '127.0.0.1', port: client.address().port } });
      expect(rec?.reasons.find((r) => r.startsWith('udp datagrams dropped:'))).toContain(`${unknownDrops} whose socket's owner was not known in time`);
    },
    4 * LOOKUP_GUARD_MS,
  );
});
