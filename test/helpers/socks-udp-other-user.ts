/**
 * Another local user against a SOCKS5 UDP association, through a real `serve`: a destination only
 * the association's RFC 1929 user may reach, a python3 run as nobody (setpriv) sending to the relay,
 * and the gateway's counters and log lines. Needs root and setpriv (canRunAsOtherUser).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { until } from './gateway.ts';
import { killIfRunning, type Served, spawnServe } from './serve-process.ts';
import type { Cleanups } from './socks-udp.ts';

export const TOKEN = 'socks5-udp-other-user-token-0123456789';
export const PASSWORD = 'alice-pw-0123';
/**
 * How long a wait on the gateway's read of the socket tables (or on a python3 starting) may take
 * before it counts as a hang, not a timing check: one read of /proc/net/udp takes the gateway
 * seconds on a loaded machine, a minute and more at nice 19 at a load average of 23 with another
 * run's 57,000 sockets listed.
 */
export const LOOKUP_GUARD_MS = 150_000;
/** How far apart a client's retransmissions are while its port is not locked. */
const RETRANSMIT_MS = 250;

/** A UDP sink on 127.0.0.1: what it received, as text. */
export async function sink(cleanups: Cleanups): Promise<{ socket: UdpSocket; got: string[] }> {
  const socket = createSocket('udp4');
  const got: string[] = [];
  socket.on('message', (m: Buffer) => got.push(m.toString()));
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  cleanups.push(() => new Promise<void>((r) => socket.close(() => r())));
  return { socket, got };
}

/**
 * `serve`, enforce, local attribution on or off: alice (RFC 1929) has a role allowing `port` on
 * 127.0.0.1, the default role does not. The lineage detector is off (it refuses python3 run by
 * nobody whatever the association: here the identity is what is judged).
 */
export async function serveWithAlice(cleanups: Cleanups, port: number, localAttribution: boolean): Promise<{ s: Served; flowLog: string }> {
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

/** Run `py` (python3 source) as nobody, its stdout collected; killed at cleanup. */
function asNobody(cleanups: Cleanups, py: string): { child: ChildProcess; out: () => string } {
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3', '-c', py], { stdio: ['pipe', 'pipe', 'inherit'] });
  cleanups.push(() => killIfRunning(child));
  let out = '';
  child.stdout?.on('data', (b: Buffer) => {
    out += b.toString();
  });
  return { child, out: () => out };
}

/**
 * python3 as nobody: an unconnected socket on 127.0.0.1 (port `bindPort`, any when 0) sends `frame`
 * to the relay `count` times 50 ms apart, then holds it open until stdin closes.
 */
export async function otherUser(
  cleanups: Cleanups,
  frame: Buffer,
  relay: { host: string; port: number },
  count: number,
  bindPort = 0,
): Promise<{ child: ChildProcess; port: number }> {
  const py = [
    'import socket, sys, time',
    's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
    `s.bind(('127.0.0.1', ${bindPort}))`,
    'print(s.getsockname()[1], flush=True)',
    `for i in range(${count}):`,
    `    s.sendto(bytes.fromhex('${frame.toString('hex')}'), ('${relay.host}', ${relay.port}))`,
    '    time.sleep(0.05)',
    "print('sent', flush=True)",
    'sys.stdin.read()',
  ].join('\n');
  const { child, out } = asNobody(cleanups, py);
  await until('the other user sent', () => out().includes('sent'), LOOKUP_GUARD_MS);
  return { child, port: Number.parseInt(out(), 10) };
}

/**
 * `processes` python3s as nobody, each holding `each` UDP sockets bound on its own loopback address
 * (127.0.0.2 on), so /proc/net/udp lists them all: a table that takes long to read. Resolves once
 * all are bound; they close at cleanup.
 */
export async function udpSocketHoarders(cleanups: Cleanups, processes: number, each: number): Promise<void> {
  const hoarders = Array.from({ length: processes }, (_, i) =>
    asNobody(
      cleanups,
      [
        'import resource, socket, sys',
        'soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)',
        `want = ${each + 64}`,
        'if soft < want: resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))',
        'socks = []',
        `for i in range(${each}):`,
        '    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
        `    s.bind(('127.0.0.${i + 2}', 0))`,
        '    socks.append(s)',
        "print('bound', flush=True)",
        'sys.stdin.read()',
      ].join('\n'),
    ),
  );
  await until('the sockets bound', () => hoarders.every((h) => h.out().includes('bound')), 60_000);
}

export function socksOf(s: Served): { socksHost: string; socksPort: number } {
  const i = s.socks.lastIndexOf(':');
  return { socksHost: s.socks.slice(0, i), socksPort: Number(s.socks.slice(i + 1)) };
}

/**
 * Call `send` every RETRANSMIT_MS until `done()`, as a client retransmits while its port's owner is
 * looked up (what comes before the lock may be dropped as not known in time); how many it sent. The
 * bound, LOOKUP_GUARD_MS for each of `lookups` lookups it may have to wait out, only stops a gateway
 * that never locks.
 */
export async function retransmitUntil(send: () => Promise<void>, done: () => boolean, lookups = 1): Promise<number> {
  let sent = 0;
  while (sent < (lookups * LOOKUP_GUARD_MS) / RETRANSMIT_MS && !done()) {
    await send();
    sent++;
    await new Promise((r) => setTimeout(r, RETRANSMIT_MS));
  }
  return sent;
}

/** Whether the live association of the client on `port` has its process named (admin API). */
export async function hasProcess(s: Served, port: number): Promise<boolean> {
  const res = await fetch(`http://${s.admin}/v1/flows?state=active`, { headers: { authorization: `Bearer ${TOKEN}` } });
  const { flows } = (await res.json()) as { flows: FlowRecord[] };
  return flows.some((f) => f.protocol === 'socks5-udp' && f.client.port === port && Boolean(f.identity.process));
}

/** A counter from the gateway's /metrics (NaN when absent). */
export async function counter(s: Served, name: string): Promise<number> {
  const metrics = await (await fetch(`http://${s.admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
  return Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(metrics)?.[1] ?? Number.NaN);
}

/** The gateway's log lines containing `text`, parsed. */
export function logLines(s: Served, text: string): Array<Record<string, unknown>> {
  return s
    .stderr()
    .split('\n')
    .filter((l) => l.includes(text))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** python3 as nobody holding a UDP socket that shares its port (sharingUser). */
export interface SharingUser {
  port: number;
  /** Send `frame` to `relay` `count` times 50 ms apart; resolves once all are sent. */
  send(frame: Buffer, relay: { host: string; port: number }, count: number): Promise<void>;
  /** Close the socket: the process exits. */
  close(): Promise<void>;
}

/**
 * python3 as nobody: an unconnected socket on `address` (port `bindPort`, any when 0) with
 * SO_REUSEADDR, so another uid's socket with SO_REUSEADDR can bind the same address and port
 * (Linux checks no owner for it, SO_REUSEPORT's check of one uid aside). It sends when told.
 */
export async function sharingUser(cleanups: Cleanups, bindPort = 0, address = '127.0.0.1'): Promise<SharingUser> {
  const py = [
    'import socket, sys',
    's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
    's.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
    `s.bind(('${address}', ${bindPort}))`,
    "print('port', s.getsockname()[1], flush=True)",
    'for line in sys.stdin:',
    '    host, port, count, frame = line.split()',
    '    for i in range(int(count)):',
    '        s.sendto(bytes.fromhex(frame), (host, int(port)))',
    '        __import__("time").sleep(0.05)',
    "    print('sent', flush=True)",
  ].join('\n');
  const { child, out } = asNobody(cleanups, py);
  await until('the shared socket bound', () => /port \d+/.test(out()), LOOKUP_GUARD_MS);
  const port = Number.parseInt(/port (\d+)/.exec(out())?.[1] ?? '', 10);
  let sends = 0;
  return {
    port,
    async send(frame, relay, count) {
      sends++;
      const want = sends;
      child.stdin?.write(`${relay.host} ${relay.port} ${count} ${frame.toString('hex')}\n`);
      await until('the shared socket sent', () => (out().match(/^sent$/gm)?.length ?? 0) >= want, LOOKUP_GUARD_MS);
    },
    async close() {
      const exited = once(child, 'exit');
      child.stdin?.end();
      await exited;
    },
  };
}
