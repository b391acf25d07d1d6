/**
 * A SOCKS5 UDP association that does not name its port (UDP ASSOCIATE 0.0.0.0:0, as most clients
 * send) locked onto the source port of the first well-formed datagram from the client's IP: another
 * local user's process that sent first was relayed with the association's identity. Reproduced
 * through a real `serve`: an RFC 1929 user's association on 127.0.0.1, a python3 run as nobody on
 * 127.0.0.1 sent 3 datagrams to a destination only that user's role allows: 3 of 3 relayed, recorded
 * user alice, roles [secret] (process python3, user nobody), and the user's own 3 datagrams dropped
 * as from a foreign source. Now, with local attribution on, a port whose socket another uid owns
 * than the control connection's holder is not locked: its datagrams are dropped, counted, logged.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';
import { canRunAsOtherUser, skipNotice } from '../helpers/skip-notice.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { until } from '../helpers/gateway.ts';

const TOKEN = 'socks5-udp-other-user-token-0123456789';
const PASSWORD = 'alice-pw-0123';
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});


/** A UDP sink on 127.0.0.1: what it received, as text. */
async function sink(): Promise<{ socket: UdpSocket; got: string[] }> {
  const socket = createSocket('udp4');
  const got: string[] = [];
  socket.on('message', (m: Buffer) => got.push(m.toString()));
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  cleanups.push(() => new Promise<void>((r) => socket.close(() => r())));
  return { socket, got };
}

/**
 * `serve`, enforce, local attribution on: alice (RFC 1929) has a role allowing `port` on 127.0.0.1,
 * the default role does not. The lineage detector is off (it refuses python3 run by nobody
 * whatever the association: here the identity is what is judged).
 */
async function serve(port: number, localAttribution: boolean): Promise<{ s: Served; flowLog: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'egw-udp-other-user-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const flowLog = join(dir, 'flows.jsonl');
  const config = join(dir, 'config.yaml');
  writeFileSync(
    config,
    `
mode: enforce
allowRanges: [127.0.0.0/8]
roles:
  secret: { allow: [ { cidr: 127.0.0.1/32, ports: [${port}] } ] }
  other: { allow: [ { host: nothing.test, ports: [443] } ] }
defaultRoles: [other]
detection: { detectors: { an0080.lineage: { enabled: false } } }
identity:
  localAttribution: ${localAttribution}
  users: [ { name: alice, password: ${PASSWORD}, roles: [secret] } ]
flowLog: { path: ${JSON.stringify(flowLog)} }
`,
  );
  const s = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
  cleanups.push(() => killIfRunning(s.child));
  return { s, flowLog };
}

/** python3 as nobody: an unconnected socket on 127.0.0.1 sends `frame` to the relay `count` times, then holds it open. */
async function otherUser(frame: Buffer, relay: { host: string; port: number }, count: number): Promise<{ child: ChildProcess; port: number }> {
  const py = [
    'import socket, sys, time',
    's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
    "s.bind(('127.0.0.1', 0))",
    'print(s.getsockname()[1], flush=True)',
    `for i in range(${count}):`,
    `    s.sendto(bytes.fromhex('${frame.toString('hex')}'), ('${relay.host}', ${relay.port}))`,
    '    time.sleep(0.05)',
    "print('sent', flush=True)",
    'sys.stdin.read()',
  ].join('\n');
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3', '-c', py], { stdio: ['pipe', 'pipe', 'inherit'] });
  cleanups.push(() => killIfRunning(child));
  let out = '';
  child.stdout?.on('data', (b: Buffer) => {
    out += b.toString();
  });
  await until('the other user sent', () => out.includes('sent'), 5000);
  return { child, port: Number.parseInt(out, 10) };
}

function socksOf(s: Served): { socksHost: string; socksPort: number } {
  const i = s.socks.lastIndexOf(':');
  return { socksHost: s.socks.slice(0, i), socksPort: Number(s.socks.slice(i + 1)) };
}

describe('an association that names no port, another local user sending first', () => {
  it.skipIf(!skipNotice(canRunAsOtherUser(), 'a SOCKS5 UDP association and another user\'s socket', 'needs root and setpriv (util-linux)'))(
    "local attribution on: nobody's datagrams are not relayed, counted and logged; alice's client locks and is relayed, recorded with its process",
    async () => {
      const dest = await sink();
      const { s, flowLog } = await serve(dest.socket.address().port, true);
      const client = await udpSocket(cleanups);
      const a = await associate(socksOf(s), client, cleanups, { auth: { userId: 'alice', password: PASSWORD }, announcePort: false });
      const other = await otherUser(udpFrame('127.0.0.1', dest.socket.address().port, Buffer.from('from nobody')), a.relay, 20);
      // The gateway has read them (loopback delivers at the send) and looked up their socket's owner.
      await new Promise((r) => setTimeout(r, 300));
      for (let i = 0; i < 3; i++) await sendTo(client, udpFrame('127.0.0.1', dest.socket.address().port, Buffer.from(`from alice ${i}`)), a.relay);
      await until('alice relayed', () => dest.got.length >= 3, 5000);
      // The other user's datagrams keep coming after the lock: dropped as from a foreign source.
      await new Promise((r) => setTimeout(r, 300));
      expect(dest.got).toEqual(['from alice 0', 'from alice 1', 'from alice 2']);

      const log = s.stderr().split('\n').filter((l) => l.includes('another user')).map((l) => JSON.parse(l) as Record<string, unknown>);
      // One lookup for the port, remembered: one line however many datagrams it sends.
      expect(log).toHaveLength(1);
      expect(log[0]).toMatchObject({ client: `127.0.0.1:${other.port}`, username: 'alice', uid: 65534, controlUid: 0 });
      const metrics = await (await fetch(`http://${s.admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
      // Each dropped: as another user's, or (more than 4 came while its socket was looked up) as over the held limits.
      const counter = (name: string): number => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(metrics)?.[1] ?? Number.NaN);
      const otherUserDrops = counter('gw_socks_udp_other_user_dropped_total');
      expect(otherUserDrops).toBeGreaterThan(0);
      expect(otherUserDrops + counter('gw_socks_udp_held_dropped_total')).toBe(20);

      a.control.destroy();
      await until('the association recorded', () => parseRecords(readFileSync(flowLog, 'utf8')).some((r) => r.protocol === 'socks5-udp'), 5000);
      const records = parseRecords(readFileSync(flowLog, 'utf8')).filter((r) => r.protocol === 'socks5-udp');
      expect(records).toHaveLength(1);
      const [rec] = records;
      expect(rec?.client).toEqual({ ip: '127.0.0.1', port: client.address().port });
      expect(rec?.identity.user).toBe('alice');
      expect(rec?.identity.process).toMatchObject({ pid: process.pid, uid: 0, user: 'root' });
      expect(rec).toMatchObject({ verdict: 'allow', bytesOut: 'from alice 0'.length * 3 });
      const dropped = rec?.reasons.find((r) => r.startsWith('udp datagrams dropped:')) ?? '';
      expect(dropped).toContain(`${otherUserDrops} from another user's socket`);
      expect(dropped).toContain(`${20 - otherUserDrops} over the limits of datagrams waiting`);
    },
  );

  it.skipIf(!skipNotice(canRunAsOtherUser(), 'a SOCKS5 UDP association and another user\'s socket', 'needs root and setpriv (util-linux)'))(
    'local attribution off: as before, the first sender is locked (nothing tells whose socket it is)',
    async () => {
      const dest = await sink();
      const { s } = await serve(dest.socket.address().port, false);
      const client = await udpSocket(cleanups);
      const a = await associate(socksOf(s), client, cleanups, { auth: { userId: 'alice', password: PASSWORD }, announcePort: false });
      await otherUser(udpFrame('127.0.0.1', dest.socket.address().port, Buffer.from('from nobody')), a.relay, 1);
      await until('the first sender relayed', () => dest.got.length >= 1, 5000);
      expect(dest.got).toEqual(['from nobody']);
    },
  );
});
