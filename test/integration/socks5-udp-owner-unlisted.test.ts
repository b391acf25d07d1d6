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
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { canRunAsOtherUser, skipNotice } from '../helpers/skip-notice.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { counter, logLines, PASSWORD, serveWithAlice, sink, socksOf } from '../helpers/socks-udp-other-user.ts';
import { killIfRunning } from '../helpers/serve-process.ts';

const cleanups: Cleanups = [];

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
      const client = await udpSocket(cleanups);
      const a = await associate(socksOf(s), client, cleanups, { auth: { userId: 'alice', password: PASSWORD }, announcePort: false });
      // Each is held while its port is asked (not remembered: asked again), then dropped; a lookup
      // slower than its wait drops them as not known in time instead. Either way none is relayed. On a
      // loaded machine every lookup of a round may outlast its wait: another round from a fresh port
      // (at most 4), until one is judged as listed nowhere.
      const unlisted = (): Promise<number> => counter(s, 'gw_socks_udp_owner_unlisted_dropped_total');
      const unknown = (): Promise<number> => counter(s, 'gw_socks_udp_owner_unknown_dropped_total');
      const ports: number[] = [];
      for (let round = 1; round <= 4 && (round === 1 || (await unlisted()) === 0); round++) {
        const port = await freePort();
        ports.push(port);
        await rawSend(udpFrame('127.0.0.1', to, Buffer.from('from nowhere')), port, a.relay, 3);
        await until('the 3 judged', async () => dest.got.length > 0 || (await unlisted()) + (await unknown()) >= 3 * round, 10_000);
      }
      expect(dest.got).toEqual([]);
      expect(await counter(s, 'gw_socks_udp_other_user_dropped_total')).toBe(0);
      const nUnlisted = await unlisted();
      expect(nUnlisted + (await unknown())).toBe(3 * ports.length);
      expect(nUnlisted).toBeGreaterThan(0);
      expect(logLines(s, 'another user')).toEqual([]);
      const log = logLines(s, 'no socket is listed');
      expect(log).toHaveLength(1);
      expect(ports.map((p) => `127.0.0.1:${p}`)).toContain((log[0] as { client: string }).client);
      expect(log[0]).toMatchObject({ username: 'alice', uid: null, controlUid: 0 });

      // Alice's own client locks and is relayed (retransmitting until then, at most 40 times).
      for (let sent = 0; sent < 40 && dest.got.length === 0; sent++) {
        await sendTo(client, udpFrame('127.0.0.1', to, Buffer.from('from alice')), a.relay);
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(dest.got.length).toBeGreaterThan(0);
      expect(new Set(dest.got)).toEqual(new Set(['from alice']));
      a.control.destroy();
      await until('the association recorded', () => parseRecords(readFileSync(flowLog, 'utf8')).some((r) => r.protocol === 'socks5-udp'), 5000);
      const rec = parseRecords(readFileSync(flowLog, 'utf8')).find((r) => r.protocol === 'socks5-udp');
      expect(rec?.identity.user).toBe('alice');
      const dropped = rec?.reasons.find((r) => r.startsWith('udp datagrams dropped:')) ?? '';
      expect(dropped).toContain("0 from another user's socket");
      expect(Number(/(\d+) from a socket not listed \(no owner\)/.exec(dropped)?.[1])).toBe(await unlisted());
    },
  );
});
