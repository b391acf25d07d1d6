/**
 * A client that uploads faster than its destination reads is paused by the gateway (backpressure):
 * a CONNECT tunnel, a SOCKS5 tunnel, an absolute-URI request body. A client that resets then is not
 * read, so the gateway does not see its RST until the idle timeout fires. Broke: the record said
 * `idle-timeout` (the client looked merely silent); now the client is asked at that moment
 * (socket-reset.ts askIfReset: a zero-length write, which a reset socket refuses) and the record says
 * `client-reset`. A client that is still there, paused the same way, still ends `idle-timeout`.
 * Through `serve` with a short idle timeout, its flow log a file.
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

/** Long enough that the upload stalls and the client resets well inside it on a slow machine. */
const IDLE_MS = 3000;
const CHUNK = Buffer.alloc(64 * 1024, 0x41);
/** Bounds on the upload loop: bytes, time. */
const MAX_UPLOAD = 256 * 1024 * 1024;
const LOOP_MS = 10_000;
/** How long a record may take: the idle timeout, and room for a slow machine. */
const SETTLE_MS = IDLE_MS + 15_000;

const dir = mkdtempSync(join(tmpdir(), 'egw-bp-reset-'));
const flowLog = join(dir, 'flows.jsonl');
let served: Served | null = null;
let destination: Server;
let destPort = 0;
/** Accepted destination connections, by the gateway's port towards them. */
const accepted = new Map<number, Socket>();
const clients = new Set<Socket>();

beforeAll(async () => {
  const config = join(dir, 'egressgate.yaml');
  writeFileSync(config, `${loopbackServeConfig(flowLog)}limits: { idleTimeoutMs: ${IDLE_MS} }\n`);
  served = await spawnServe(config);
  // A destination that never reads what it is sent.
  destination = createServer((s) => {
    s.pause();
    s.on('error', () => undefined);
    accepted.set(s.remotePort ?? 0, s);
  });
  destination.listen(0, '127.0.0.1');
  await once(destination, 'listening');
  destPort = (destination.address() as { port: number }).port;
}, 120_000);

afterAll(async () => {
  for (const c of clients) c.destroy();
  for (const s of accepted.values()) s.destroy();
  await new Promise<void>((r) => destination?.close(() => r()));
  await killIfRunning(served?.child ?? null);
  rmSync(dir, { recursive: true, force: true });
});

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The client's connection, its handshake done (CONNECT, SOCKS5) or its request head sent (http). */
async function open(via: 'connect' | 'socks5' | 'http'): Promise<Socket> {
  const s = served as Served;
  const port = via === 'socks5' ? Number(s.socks.slice(s.socks.lastIndexOf(':') + 1)) : s.http.port;
  const socket = connect({ host: '127.0.0.1', port });
  clients.add(socket);
  socket.on('error', () => undefined);
  let got = Buffer.alloc(0);
  socket.on('data', (c: Buffer) => {
    got = Buffer.concat([got, c]);
  });
  await once(socket, 'connect');
  if (via === 'connect') {
    socket.write(`CONNECT 127.0.0.1:${destPort} HTTP/1.1\r\nHost: 127.0.0.1:${destPort}\r\n\r\n`);
    await until('the CONNECT answer', () => got.includes('\r\n\r\n'));
    expect(got.toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
  } else if (via === 'socks5') {
    socket.write(Buffer.from([5, 1, 0]));
    await until('the method choice', () => got.length >= 2);
    socket.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, destPort >> 8, destPort & 0xff]));
    await until('the CONNECT reply', () => got.length >= 12);
    expect(got.subarray(0, 2)).toEqual(Buffer.from([5, 0]));
  } else {
    socket.write(`POST http://127.0.0.1:${destPort}/upload HTTP/1.1\r\nHost: 127.0.0.1:${destPort}\r\nContent-Length: ${MAX_UPLOAD}\r\n\r\n`);
  }
  return socket;
}

/** Write until a write has waited 300 ms for 'drain' (every buffer on the way is full); bytes written. */
async function uploadUntilStalled(s: Socket): Promise<number> {
  let written = 0;
  const t0 = Date.now();
  while (written < MAX_UPLOAD && Date.now() - t0 < LOOP_MS) {
    written += CHUNK.length;
    if (s.write(CHUNK)) continue;
    const drained = await Promise.race([once(s, 'drain').then(() => true, () => false), delay(300).then(() => false)]);
    if (!drained) return written;
  }
  throw new Error(`the upload never stalled (${written} bytes in ${Date.now() - t0} ms)`);
}

/** The closed record of the flow from client port `port`. */
async function recordOf(port: number): Promise<FlowRecord> {
  let found: FlowRecord | undefined;
  await until(
    `the record of client port ${port}`,
    () => {
      let text = '';
      try {
        text = readFileSync(flowLog, 'utf8');
      } catch {
        return false;
      }
      found = parseWrittenRecords(text).find((r) => r.client.port === port && r.state === 'closed');
      return found !== undefined;
    },
    SETTLE_MS,
  );
  return found as FlowRecord;
}

describe.each(['connect', 'socks5', 'http'] as const)('%s, an upload the destination does not read', (via) => {
  it('a client that resets while paused for backpressure: client-reset, and the destination connection goes too', async () => {
    const before = new Set(accepted.keys());
    const client = await open(via);
    const written = await uploadUntilStalled(client);
    const port = client.localPort as number;
    await until('the destination connection', () => [...accepted.keys()].some((k) => !before.has(k)));
    const dest = [...accepted.entries()].find(([k]) => !before.has(k))?.[1] as Socket;
    client.resetAndDestroy();
    const record = await recordOf(port);
    expect(record.closeReason).toBe('client-reset');
    expect(record.bytesOut).toBeGreaterThan(0);
    expect(record.bytesOut).toBeLessThanOrEqual(written);
    // The destination reads now: what reached it, then the gateway's close. (A reset behind unread
    // data reads as an end on node 20: test/helpers/reset-behind-data.ts.)
    let destEnd = '';
    dest.on('end', () => {
      destEnd = 'end';
    });
    dest.on('error', (e: NodeJS.ErrnoException) => {
      destEnd = e.code ?? e.message;
    });
    dest.resume();
    await until("the destination connection's close", () => dest.destroyed || destEnd !== '', SETTLE_MS);
    expect(['ECONNRESET', 'end']).toContain(destEnd);
  }, 60_000);

  it('a client that stays, paused the same way: idle-timeout, and its connection is closed', async () => {
    const client = await open(via);
    await uploadUntilStalled(client);
    const port = client.localPort as number;
    const closed = new Promise<void>((r) => client.once('close', () => r()));
    const record = await recordOf(port);
    expect(record.closeReason).toBe('idle-timeout');
    await Promise.race([closed, delay(SETTLE_MS)]);
    expect(client.destroyed).toBe(true);
  }, 60_000);
});
