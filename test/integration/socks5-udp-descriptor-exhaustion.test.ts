/**
 * A SOCKS5 UDP association whose first datagrams arrive while `egressgate serve` has no descriptor
 * left (`ulimit -n`): the upstream socket node binds on the first send cannot be bound (EMFILE), and
 * node drops the sends it queued behind that bind without calling their callbacks. They reached no
 * destination, so they are not in the record's bytesOut (SPEC §5: bytes sent to the destination),
 * and the log says it once per interval, not a line per datagram. Before, every one of them stayed
 * in bytesOut (20 × 100 bytes counted that never left: bytesOut 2,500 with 500 received) and each
 * logged its own `socks5 udp upstream send failed`.
 */
import type { ChildProcess } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { killIfRunning } from '../helpers/serve-process.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { fillDescriptors, NOFILE, openDescriptors, socksPort, serveUnderLimit } from '../helpers/descriptor-limit.ts';

const TOKEN = 'socks5-udp-descriptor-exhaustion-token';
const AT_LIMIT = 20;
const AFTER = 5;
const SIZE = 100;

let dir: string;
let child: ChildProcess | null = null;
const held: Socket[] = [];
const cleanups: Cleanups = [];
/** A UDP echo origin on loopback; counts the payload bytes it received. */
let echo: UdpSocket;
let echoedBytes = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-udp-descriptors-'));
  echo = createSocket('udp4');
  echo.on('message', (m, r) => {
    echoedBytes += m.length;
    echo.send(m, r.port, r.address);
  });
  echo.bind(0, '127.0.0.1');
  await once(echo, 'listening');
});
afterEach(async () => {
  for (const s of held) s.destroy();
  held.length = 0;
  for (const c of cleanups.splice(0)) await c();
  await killIfRunning(child);
  child = null;
});
afterAll(async () => {
  echo.close();
  await rm(dir, { recursive: true, force: true });
});

async function waitFor(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('a SOCKS5 UDP association with every descriptor taken', () => {
  it('datagrams whose upstream socket could not be bound (EMFILE) are not in bytesOut and are logged once; relayed again once descriptors are free', async () => {
    const flowLog = join(dir, 'flows.jsonl');
    const s = await serveUnderLimit(dir, flowLog, TOKEN);
    child = s.child;
    // The association (its relay bound) before the process is full; no datagram sent yet.
    const client = await udpSocket(cleanups);
    const assoc = await associate({ socksHost: '127.0.0.1', socksPort: socksPort(s) }, client, cleanups);
    const to = { host: '127.0.0.1', port: echo.address().port };

    // Every descriptor taken: the upstream socket's bind on the first send fails.
    const pid = s.child.pid as number;
    await fillDescriptors(s, held, NOFILE);
    expect(openDescriptors(pid)).toBe(NOFILE);
    for (let i = 0; i < AT_LIMIT; i++) {
      await sendTo(client, udpFrame(to.host, to.port, Buffer.alloc(SIZE, 0x61)), assoc.relay);
      await new Promise((r) => setTimeout(r, 10));
    }
    await waitFor('the unsent datagrams logged', () => s.stderr().includes('socks5 udp datagrams not sent'));
    expect(echoedBytes).toBe(0);

    // The holders go: the next datagrams bind the socket and are relayed, and answered.
    for (const c of held) c.destroy();
    held.length = 0;
    await waitFor('the holders closed', () => openDescriptors(pid) < NOFILE - 10);
    for (let i = 0; i < AFTER; i++) {
      const reply = nextReply(client);
      await sendTo(client, udpFrame(to.host, to.port, Buffer.alloc(SIZE, 0x62)), assoc.relay);
      const got = await Promise.race([reply, new Promise<null>((r) => setTimeout(() => r(null), 5000))]);
      expect(got?.data.length).toBe(SIZE);
    }
    expect(echoedBytes).toBe(AFTER * SIZE);
    assoc.control.destroy();

    s.child.kill('SIGTERM');
    await once(s.child, 'exit');
    const records = parseRecords(await readFile(flowLog, 'utf8')).filter((r) => r.protocol === 'socks5-udp');
    expect(records).toHaveLength(1);
    // Only what reached the echo origin, and what came back from it.
    expect(records[0]).toMatchObject({ bytesOut: AFTER * SIZE, bytesIn: AFTER * SIZE });
    const lines = s.stderr().split('\n');
    expect(lines.filter((l) => l.includes('socks5 udp datagrams not sent'))).toHaveLength(1);
    expect(lines.filter((l) => l.includes('socks5 udp upstream send failed'))).toEqual([]);
    expect(lines.filter((l) => l.includes('EGW_OUT_OF_DESCRIPTORS')).length).toBeGreaterThanOrEqual(1);
  });
});
