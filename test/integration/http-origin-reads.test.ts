/**
 * Origin connections on the absolute-URI paths read into reused buffers
 * (gateway/listeners/http-origin-reads.ts). The risk of that speed-up is a buffer read into again
 * while someone still holds its bytes: a client slower than the origin (node still holds the chunk),
 * undici paused, a response head split over reads. Each client here fetches bodies of random bytes
 * that differ per path, over one keep-alive connection, some reading slowly and some at full speed,
 * side by side, and checks each body's SHA-256 and its flow record's bytesIn. With the mechanism on
 * the fast clients' reads must mostly reuse their buffer (else the speed-up is silently gone).
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { Agent, type IncomingMessage, request } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setReadBuffersEnabled } from '../../gateway/flow/read-buffer.ts';
import { originReads } from '../../gateway/listeners/http-origin-reads.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

/**
 * Distinct random bodies, one per path, so a byte from another response cannot go unseen. 8 MiB
 * is more than loopback's socket buffers hold (tcp_wmem's 4 MiB at most, and a receive buffer a
 * reader that does not read never grows), so the gateway's writes to a stalled reader queue.
 */
const bodies = new Map<string, Buffer>();
for (const [name, size] of [['a', 8 << 20], ['b', 3 << 20], ['c', 8 << 20], ['d', 1 << 20]] as const) bodies.set(name, randomBytes(size));

let gw: TestGateway;
/** One origin per mode: pooled origin connections keep the reads they started with. */
const origins: Server[] = [];
const originPorts: number[] = [];
const sockets = new Set<Socket>();

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Write `body` in uneven slices, waiting for drain, with a pause now and then (reads split oddly). */
async function writeSliced(s: Socket, body: Buffer): Promise<void> {
  let offset = 0;
  let slice = 700;
  let n = 0;
  while (offset < body.length && !s.destroyed) {
    const end = Math.min(offset + slice, body.length);
    const ok = s.write(body.subarray(offset, end));
    offset = end;
    slice = slice >= 300_000 ? 700 : slice * 3;
    if (!ok) await once(s, 'drain');
    if (++n % 7 === 0) await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * A raw HTTP/1.1 origin, keep-alive: `/len/<name>` answers with Content-Length, `/chunked/<name>` in
 * chunks of uneven sizes; every head is written in two parts 5 ms apart, so undici's parser holds
 * header fields across two reads.
 */
function serveOrigin(s: Socket): void {
  sockets.add(s);
  s.on('close', () => sockets.delete(s));
  s.on('error', () => undefined);
  let pending = Buffer.alloc(0);
  let busy = Promise.resolve();
  s.on('data', (c: Buffer) => {
    pending = Buffer.concat([pending, c]);
    for (;;) {
      const end = pending.indexOf('\r\n\r\n');
      if (end < 0) return;
      const line = pending.subarray(0, pending.indexOf('\r\n')).toString('latin1');
      pending = pending.subarray(end + 4);
      const m = /^GET \/(len|chunked)\/(\w) HTTP\/1\.1$/.exec(line);
      busy = busy.then(() => (m ? answer(s, m[1] as string, m[2] as string) : undefined));
    }
  });
}

async function answer(s: Socket, kind: string, name: string): Promise<void> {
  const body = bodies.get(name) as Buffer;
  const filler = Array.from({ length: 40 }, (_, i) => `x-filler-${i}: ${'v'.repeat(60)}\r\n`).join('');
  const head = `HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n${filler}${kind === 'len' ? `content-length: ${body.length}` : 'transfer-encoding: chunked'}\r\n\r\n`;
  s.write(head.slice(0, 900));
  await new Promise((r) => setTimeout(r, 5));
  s.write(head.slice(900));
  if (kind === 'len') {
    await writeSliced(s, body);
    return;
  }
  let offset = 0;
  let size = 1000;
  while (offset < body.length && !s.destroyed) {
    const part = body.subarray(offset, Math.min(offset + size, body.length));
    offset += part.length;
    size = size >= 200_000 ? 1000 : size * 5;
    if (!s.write(Buffer.concat([Buffer.from(`${part.length.toString(16)}\r\n`), part, Buffer.from('\r\n')]))) await once(s, 'drain');
  }
  s.write('0\r\n\r\n');
}

beforeAll(async () => {
  for (let i = 0; i < 2; i++) {
    const origin = createServer(serveOrigin);
    origin.listen(0, '127.0.0.1');
    await once(origin, 'listening');
    origins.push(origin);
    originPorts.push((origin.address() as { port: number }).port);
  }
  gw = await startTestGateway({ limits: { idleTimeoutMs: 20_000 } });
});

afterAll(async () => {
  setReadBuffersEnabled(true);
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await Promise.all(origins.map((o) => new Promise<void>((r) => o.close(() => r()))));
});

/**
 * Read a response body. A slow reader reads nothing for its first 300 ms (the kernel's buffers
 * fill, so the gateway's writes to it queue and undici pauses), then pauses 3 ms after every 256 KiB.
 */
function collect(res: IncomingMessage, slow: boolean): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let since = 0;
  if (slow) {
    res.pause();
    setTimeout(() => res.resume(), 300);
  }
  res.on('data', (c: Buffer) => {
    chunks.push(c);
    since += c.length;
    if (slow && since >= 256 * 1024) {
      since = 0;
      res.pause();
      setTimeout(() => res.resume(), 3);
    }
  });
  return new Promise((resolve, reject) => {
    res.once('end', () => resolve(Buffer.concat(chunks)));
    res.once('error', reject);
  });
}

/** One client: its own keep-alive connection to the gateway, the four bodies one after another. */
async function client(originPort: number, kind: 'len' | 'chunked', slow: boolean): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const seen = new Set<string>();
  try {
    for (const name of bodies.keys()) {
      const url = `http://127.0.0.1:${originPort}/${kind}/${name}`;
      const req = request({ host: '127.0.0.1', port: gw.httpPort, path: url, headers: { host: `127.0.0.1:${originPort}` }, agent });
      req.end();
      const [res] = (await once(req, 'response')) as [IncomingMessage];
      expect(res.statusCode).toBe(200);
      // Fields from the head's first part, read before its second part came (held across reads).
      expect(res.headers['content-type']).toBe('application/octet-stream');
      expect(res.headers['x-filler-7']).toBe('v'.repeat(60));
      const port = res.socket.localPort;
      const got = await collect(res, slow);
      const body = bodies.get(name) as Buffer;
      expect(got.length).toBe(body.length);
      expect(sha256(got)).toBe(sha256(body));
      // Requests on one connection are answered one after another: its next record is this one's.
      const record = await gw.waitForClosed((r) => r.client.port === port && r.destination.port === originPort && !seen.has(r.id));
      seen.add(record.id);
      expect(record.bytesIn).toBe(body.length);
      expect(record.closeReason).toBe('closed');
    }
  } finally {
    agent.destroy();
  }
}

describe('absolute-URI bodies read from the origin into reused buffers', () => {
  for (const [i, mode] of (['on', 'off'] as const).entries()) {
    it(`mechanism ${mode}: four clients at once (slow and fast, Content-Length and chunked) get every body exact`, async () => {
      setReadBuffersEnabled(mode === 'on');
      const before = { ...originReads };
      const port = originPorts[i] as number;
      await Promise.all([client(port, 'len', true), client(port, 'len', false), client(port, 'chunked', true), client(port, 'chunked', false)]);
      const reused = originReads.reused - before.reused;
      const fresh = originReads.fresh - before.fresh;
      if (mode === 'off') expect(reused + fresh).toBe(0);
      // 80 MiB read from origins in all: most reads of the fast clients' bodies go to a reused buffer.
      else expect(reused).toBeGreaterThan(fresh / 4);
    }, 60_000);
  }
});
