/**
 * An extension-method request head dribbled byte by byte (http-extension-method.ts): its method is
 * read from several packets, then the bytes go back to node:http, whose new parser counted
 * limits.headerTimeoutMs afresh from that hand-back. Broke: the head had its time once for the
 * method and again for the rest, up to three times limits.headerTimeoutMs with the front's wait for
 * the first byte (through serve, headerTimeoutMs 800, first byte at 700 ms: the 408 at 2,321 ms).
 * Now the method and the rest of the head share one headerTimeoutMs from the request's first byte,
 * as node's parser counts a known method's head (from its first byte).
 *
 * No clock is read: a reference connection dribbles a GET head on the same ticks, its first byte one
 * tick after the extension method's. Its head runs out a tick after the extension method's, before
 * the extension method's hand-back plus a whole headerTimeoutMs: which of the two is refused first
 * says which rule held.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { killIfRunning, loggedLines, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

/** headerTimeoutMs; a byte goes out every TICK_MS (node checks its header timeout every HEADER_MS / 4). */
const HEADER_MS = 2000;
const TICK_MS = HEADER_MS / 4;
/** Bound on the dribble: more ticks than either head can last. */
const MAX_TICKS = 40;

const dir = mkdtempSync(join(tmpdir(), 'egw-ext-head-'));
let served: Served | null = null;

beforeAll(async () => {
  const config = join(dir, 'egressgate.yaml');
  writeFileSync(config, `${loopbackServeConfig('-')}limits: { headerTimeoutMs: ${HEADER_MS} }\n`);
  served = await spawnServe(config);
}, 120_000);

afterAll(async () => {
  await killIfRunning(served?.child ?? null);
  rmSync(dir, { recursive: true, force: true });
});

interface Dribbler {
  socket: Socket;
  /** What the gateway answered so far. */
  got: () => string;
  /** Send the next byte of the head, if any is left and the connection is open. */
  next: () => void;
}

async function dribbler(head: string): Promise<Dribbler> {
  const s = served as Served;
  const socket = connect({ host: '127.0.0.1', port: s.http.port });
  socket.setNoDelay(true);
  socket.on('error', () => undefined);
  let got = '';
  socket.on('data', (c: Buffer) => {
    got += c.toString('latin1');
  });
  await once(socket, 'connect');
  let i = 0;
  return {
    socket,
    got: () => got,
    next: () => {
      if (i < head.length && !socket.destroyed && got === '') socket.write(head[i++] as string);
    },
  };
}

it('a dribbled extension-method head has one headerTimeoutMs from its first byte, as a known method has: 408 before a GET head begun a tick later', async () => {
  // The method `ZZZ` is whole at the fourth byte (three ticks in); nothing after it completes the head.
  const tail = ' http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Pad: ' + 'p'.repeat(64);
  const ext = await dribbler(`ZZZ${tail}`);
  const ref = await dribbler(`GET${tail}`);
  const order: string[] = [];
  ext.socket.once('data', () => order.push('extension'));
  ref.socket.once('data', () => order.push('reference'));
  let tick = 0;
  const ticker = setInterval(() => {
    ext.next();
    if (tick >= 1) ref.next();
    tick++;
  }, TICK_MS);
  try {
    await new Promise<void>((resolve, reject) => {
      const check = setInterval(() => {
        if (order.length === 2) {
          clearInterval(check);
          resolve();
        } else if (tick > MAX_TICKS) {
          clearInterval(check);
          reject(new Error(`not both refused within ${MAX_TICKS} ticks: ${order.join(', ')}`));
        }
      }, 20);
    });
  } finally {
    clearInterval(ticker);
    ext.socket.destroy();
    ref.socket.destroy();
  }
  expect(ext.got()).toMatch(/^HTTP\/1\.1 408 /);
  expect(ref.got()).toMatch(/^HTTP\/1\.1 408 /);
  expect(order).toEqual(['extension', 'reference']);
  const refused = loggedLines(served as Served, 'client request refused').filter((l) => l['code'] === 'EGW_HEADER_TIMEOUT');
  expect(refused.some((l) => l['why'] === 'no whole request head')).toBe(true);
}, 60_000);
