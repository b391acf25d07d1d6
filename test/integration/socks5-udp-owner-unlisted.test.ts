/**
 * Regression: a SOCKS5 UDP datagram from a port on which the socket tables list no socket (closed
 * right after sending, or a raw socket's forged source port) was counted as another user's: in
 * `gw_socks_udp_other_user_dropped_total`, the record's `… from another user's socket` and a log
 * line "their socket is not listed" among another user's. It failed closed, as it still does; now
 * it is counted apart (`gw_socks_udp_owner_unlisted_dropped_total`, the record's `… from a socket
 * not listed (no owner)`) and logged once per association per 10 s (the port is not remembered: its
 * next datagram asks again). Reproduced through a real `serve` (enforce, local attribution on): a
 * raw IPv4 socket sends 3 UDP datagrams from 127.0.0.1:P, a port no socket holds, to alice's
 * association: 3 counted as another user's; now 3 as not listed, none as another user's.
 */
import { spawn } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { canRunAsOtherUser, skipNotice } from '../helpers/skip-notice.ts';
import { type Association, associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { counter, LOOKUP_GUARD_MS, logLines, PASSWORD, retransmitUntil, serveWithAlice, sink, socksOf } from '../helpers/socks-udp-other-user.ts';
import { killIfRunning } from '../helpers/serve-process.ts';

const cleanups: Cleanups = [];
/**
 * Rounds from fresh ports, each with an association of its own, go on until one port's lookup
 * answers within its wait, for at most this long: a hang guard that also waits out another test's
 * tens of thousands of sockets listed meanwhile (socks5-udp-owner-check), not a timing check.
 */
const ROUNDS_GUARD_MS = 2 * LOOKUP_GUARD_MS;
/** At most this many rounds (about half a second each on a quiet machine). */
const ROUNDS = 100;

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** A port no socket holds now: one the kernel gave a socket closed at once. */
async function freePort(): Promise<number> {
  const s = createSocket('udp4');
  s.bind(0, '127.0.0.1');
  await once(s, 'listening');
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** python3 (root): a raw IPv4 socket sends `frame` as UDP from 127.0.0.1:`fromPort` to `to`, `count` times 50 ms apart. */
async function rawSend(frame: Buffer, fromPort: number, to: { host: string; port: number }, count: number): Promise<void> {
  const py = [
    'import socket, struct, time',
    's = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)',
    `payload = bytes.fromhex('${frame.toString('hex')}')`,
    // Checksum 0: none (RFC 768), accepted over IPv4.
    `udp = struct.pack('!HHHH', ${fromPort}, ${to.port}, 8 + len(payload), 0) + payload`,
    `for i in range(${count}):`,
    `    s.sendto(udp, ('${to.host}', 0))`,
    '    time.sleep(0.05)',
  ].join('\n');
  const child = spawn('python3', ['-c', py], { stdio: ['ignore', 'ignore', 'inherit'] });
  cleanups.push(() => killIfRunning(child));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`the raw sender exited ${code}`);
}

describe('an association that names no port, datagrams from a port no socket holds', () => {
  it.skipIf(!skipNotice(canRunAsOtherUser(), 'a SOCKS5 UDP association and a raw sender', 'needs root (a raw socket) and setpriv (util-linux)'))(
    "are counted and logged as from a socket not listed, not as another user's; alice's client then locks",
    async () => {
      const dest = await sink(cleanups);
      const to = dest.socket.address().port;
      const { s, flowLog } = await serveWithAlice(cleanups, to, true);
      const unlisted = (): Promise<number> => counter(s, 'gw_socks_udp_owner_unlisted_dropped_total');
      const unknown = (): Promise<number> => counter(s, 'gw_socks_udp_owner_unknown_dropped_total');
      const otherUser = (): Promise<number> => counter(s, 'gw_socks_udp_other_user_dropped_total');
      const judged = async (): Promise<number> => (await unlisted()) + (await unknown()) + (await otherUser());
      const frame = udpFrame('127.0.0.1', to, Buffer.from('from nowhere'));
      // Each is held while its port is asked, then dropped as from a socket not listed; a lookup slower
      // than its 500 ms wait (one read of /proc/net/udp takes seconds on a loaded machine) drops them as
      // not known in time instead, and its answer, when it comes, counts none. Either way none is
      // relayed, and the answer is logged, once per association per 10 s, naming the port. So each
      // round has an association of its own, whose line says its lookup answered (a hang guard, not a
      // timing check), and rounds go on from fresh ports until one is answered within its wait (at
      // most ROUNDS, for ROUNDS_GUARD_MS). In each, 3 more from the same port, the port not remembered, are asked again,
      // not dropped unasked as another user's.
      const ports: number[] = [];
      const alice = async (): Promise<{ client: UdpSocket; a: Association }> => {
        const client = await udpSocket(cleanups);
        return { client, a: await associate(socksOf(s), client, cleanups, { auth: { userId: 'alice', password: PASSWORD }, announcePort: false }) };
      };
      let { client, a } = await alice();
      const deadline = Date.now() + ROUNDS_GUARD_MS;
      for (let round = 1; round <= ROUNDS && (round === 1 || (dest.got.length === 0 && (await unlisted()) === 0 && Date.now() < deadline)); round++) {
        if (round > 1) {
          a.control.destroy();
          ({ client, a } = await alice());
        }
        const port = await freePort();
        ports.push(port);
        await rawSend(frame, port, a.relay, 3);
        await until("the port's lookup answered", () => dest.got.length > 0 || s.stderr().includes(`"client":"127.0.0.1:${port}"`), LOOKUP_GUARD_MS);
        await until('the 3 judged', async () => dest.got.length > 0 || (await judged()) >= 6 * round - 3, LOOKUP_GUARD_MS);
        await rawSend(frame, port, a.relay, 3);
        await until('the 3 more judged', async () => dest.got.length > 0 || (await judged()) >= 6 * round, LOOKUP_GUARD_MS);
      }
      expect(dest.got).toEqual([]);
      expect(await otherUser()).toBe(0);
      const nUnlisted = await unlisted();
      expect(nUnlisted + (await unknown())).toBe(6 * ports.length);
      expect(nUnlisted).toBeGreaterThan(0);
      expect(logLines(s, 'another user')).toEqual([]);
      const log = logLines(s, 'no socket is listed');
      // Each round's port named (again should its second lookup answer 10 s after the first).
      expect([...new Set(log.map((l) => l.client))]).toEqual(ports.map((p) => `127.0.0.1:${p}`));
      for (const l of log) expect(l).toMatchObject({ username: 'alice', uid: null, controlUid: 0 });

      // Alice's own client (the last association's) locks and is relayed, retransmitting until then.
      await retransmitUntil(() => sendTo(client, udpFrame('127.0.0.1', to, Buffer.from('from alice')), a.relay), () => dest.got.length > 0);
      expect(dest.got.length).toBeGreaterThan(0);
      expect(new Set(dest.got)).toEqual(new Set(['from alice']));
      a.control.destroy();
      const recorded = (): FlowRecord | undefined => parseRecords(readFileSync(flowLog, 'utf8')).find((r) => r.protocol === 'socks5-udp' && r.client.port === client.address().port);
      await until('the association recorded', () => recorded() !== undefined, LOOKUP_GUARD_MS);
      const rec = recorded();
      expect(rec?.identity.user).toBe('alice');
      const dropped = rec?.reasons.find((r) => r.startsWith('udp datagrams dropped:')) ?? '';
      expect(dropped).toContain("0 from another user's socket");
      // The other rounds' associations counted none as not listed: all are this one's.
      expect(Number(/(\d+) from a socket not listed \(no owner\)/.exec(dropped)?.[1])).toBe(nUnlisted);
    },
    ROUNDS_GUARD_MS + 6 * LOOKUP_GUARD_MS,
  );
});
