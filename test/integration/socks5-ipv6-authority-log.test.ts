/**
 * Regression: the SOCKS5 listener's warning lines wrote IPv6 endpoints as `::1:443`, not
 * `[::1]:443`, so the last group could not be told from the port: the `socks5 refused` line's
 * client and its `CONNECT ::1:P refused` reason, the refusal's `not allowlisted: ::1:P` (in the
 * flow record's reasons too), a failed dial's `CONNECT ::1:P failed`, and the `socks5 udp
 * destination refused` line's client and destination. `egressgate serve` as a process, its SOCKS5
 * listener on ::1, its warning lines read from its stderr and its records from its flow log. The
 * records keep the address and port apart, as before (`destination.host` `::1`).
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { closedPort } from '../helpers/closed-port.ts';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loggedLines, spawnServe } from '../helpers/serve-process.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { readBytes } from './socks5-harness.ts';

const hasIpv6Loopback = await ipv6LoopbackAvailable();

/** A SOCKS5 CONNECT to [::1]:`port` from `socket` (no auth): the reply's REP byte. */
async function connectV6(socket: Socket, port: number): Promise<number> {
  socket.write(Buffer.from([5, 1, 0]));
  expect([...(await readBytes(socket, 2))]).toEqual([5, 0]);
  const addr = Buffer.alloc(16);
  addr[15] = 1;
  const portBytes = Buffer.from([port >> 8, port & 0xff]);
  socket.write(Buffer.concat([Buffer.from([5, 1, 0, 4]), addr, portBytes]));
  return (await readBytes(socket, 2))[1] as number;
}

describe.skipIf(!skipNotice(hasIpv6Loopback, 'socks5-ipv6-authority-log', 'needs IPv6 loopback (::1)'))('SOCKS5 warning lines bracket IPv6 endpoints', () => {
  let dir: string;
  let child: ChildProcess | null = null;
  const cleanups: Cleanups = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-socks5-ipv6-log-'));
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await killIfRunning(child);
    child = null;
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('socks5 refused (not allowlisted, dial failed) and socks5 udp destination refused: [::1]:port', async () => {
    const denied = await closedPort('::1');
    const unreachable = await closedPort('::1');
    const log = join(dir, 'flows.jsonl');
    const config = join(dir, 'serve.yaml');
    await writeFile(
      config,
      `
mode: enforce
allowRanges: [127.0.0.0/8, "::1/128"]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 }, { cidr: "::1/128", ports: [${unreachable}] } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(log)} }
`,
    );
    // The SOCKS5 listener on ::1: its clients' addresses are IPv6 too.
    const s = await spawnServe(config, { wrap: (argv) => argv.map((a, i) => (argv[i - 1] === '--socks' ? '[::1]:0' : a)) });
    child = s.child;
    expect(s.socks).toMatch(/^\[::1\]:\d+$/);
    const socksPort = Number(s.socks.slice(s.socks.lastIndexOf(':') + 1));

    const open = async (): Promise<Socket> => {
      const c = connect({ host: '::1', port: socksPort });
      c.on('error', () => undefined);
      cleanups.push(() => c.destroy());
      await once(c, 'connect');
      return c;
    };

    // 1. Not allowlisted: REP 0x02, the warning and the record's reasons.
    const refusedClient = await open();
    const refusedPort = refusedClient.localPort;
    expect(await connectV6(refusedClient, denied)).toBe(2);
    // 2. Allowlisted, nothing listening: REP 0x05 connection refused.
    const failedClient = await open();
    const failedPort = failedClient.localPort;
    expect(await connectV6(failedClient, unreachable)).toBe(5);
    // 3. A UDP datagram to a destination not allowlisted.
    const udpClient = await udpSocket(cleanups, 'udp6');
    const a = await associate({ socksHost: '::1', socksPort }, udpClient, cleanups);
    await sendTo(udpClient, udpFrame('::1', denied, Buffer.from('x')), a.relay);

    await until('the three warnings', () => loggedLines(s, 'socks5 refused').length >= 2 && loggedLines(s, 'socks5 udp destination refused').length >= 1, 10_000);
    const refusals = loggedLines(s, 'socks5 refused');
    const notAllowed = refusals.find((l) => l['client'] === `[::1]:${refusedPort}`);
    expect(String(notAllowed?.['reason'])).toMatch(new RegExp(`^CONNECT \\[::1\\]:${denied} refused \\(not-allowlisted\\): .*not allowlisted: \\[::1\\]:${denied} is blocked`));
    const failed = refusals.find((l) => l['client'] === `[::1]:${failedPort}`);
    expect(String(failed?.['reason'])).toMatch(new RegExp(`^CONNECT \\[::1\\]:${unreachable} failed \\(connection-refused\\): connect to \\[::1\\]:${unreachable}: `));
    const udp = loggedLines(s, 'socks5 udp destination refused')[0];
    expect(udp?.['client']).toBe(`[::1]:${udpClient.address().port}`);
    expect(udp?.['destination']).toBe(`[::1]:${denied}`);

    // The record: the reason bracketed, the address and port apart as they were.
    let record: ReturnType<typeof parseWrittenRecords>[number] | undefined;
    await until(
      'the refused CONNECT record',
      async () => {
        const text = await readFile(log, 'utf8').catch(() => '');
        record = parseWrittenRecords(text).find((r) => r.protocol === 'socks5' && r.destination.port === denied);
        return record !== undefined;
      },
      10_000,
    );
    expect(record?.reasons).toContain(`not allowlisted: [::1]:${denied} is blocked`);
    expect(record?.destination.host).toBe('::1');
    expect(record?.client).toEqual({ ip: '::1', port: refusedPort });
  }, 30_000);
});
