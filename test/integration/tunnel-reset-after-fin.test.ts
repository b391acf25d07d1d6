/**
 * A tunnel (CONNECT and SOCKS5, gateway/flow/tunnel.ts) whose one side sends its FIN and later resets
 * while the other side still sends to it. The destination's FIN is passed on to the client, which may
 * go on uploading (a half-close is not a close); if the destination then resets, what the client sent
 * after it, or the gateway still held for it, never arrives: the record must say upstream-reset, not
 * closed, and the client must see its connection reset, not an upload that goes on being taken and a
 * clean close. A destination that resets before any FIN resets the client too (after what it sent). The mirror: a client that half-closes, stops reading and then resets while the
 * destination still sends is client-reset, and a client that resets mid-upload resets the destination
 * (after what it sent), as the destination's own reset does the client. A destination that reads the
 * upload after its FIN stays closed.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { pattern } from './http-harness.ts';

const ANSWER = pattern(1000);
const CHUNK = Buffer.alloc(64 * 1024, 0x42);
/** Bounds on every loop: bytes, time. */
const MAX_UPLOAD = 64 * 1024 * 1024;
const LOOP_MS = 5000;
/**
 * How long a close may take to show (a noisy machine may be slow): well inside limits.idleTimeoutMs
 * (20 s), so a flow that closed only at its idle timeout still misses it, and its closeReason would
 * say idle-timeout.
 */
const SETTLE_MS = 10_000;

let gw: TestGateway;
const servers: Server[] = [];
const sockets = new Set<Socket>();

beforeAll(async () => {
  gw = await startTestGateway({ limits: { idleTimeoutMs: 20_000 } });
});

afterAll(async () => {
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
});

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A half-open destination; `onConn` gets each accepted socket. */
async function destination(onConn: (s: Socket) => void): Promise<number> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    onConn(s);
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
}

interface Client {
  socket: Socket;
  /** Payload received after the proxy's handshake reply. */
  got: () => Buffer;
  ended: () => boolean;
  error: () => string | null;
  closed: Promise<void>;
}

/** A half-open client through the HTTP listener (CONNECT) or the SOCKS5 listener, handshake done. */
async function tunnelTo(via: 'connect' | 'socks5', port: number): Promise<Client> {
  const socket = connect({ host: '127.0.0.1', port: via === 'connect' ? gw.httpPort : gw.socksPort, allowHalfOpen: true });
  sockets.add(socket);
  let all = Buffer.alloc(0);
  let replyLength = -1;
  let isEnded = false;
  let error: string | null = null;
  socket.on('data', (c: Buffer) => {
    all = Buffer.concat([all, c]);
  });
  socket.on('end', () => {
    isEnded = true;
  });
  socket.on('error', (e: NodeJS.ErrnoException) => {
    error = e.code ?? e.message;
  });
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  await once(socket, 'connect');
  const deadline = Date.now() + LOOP_MS;
  const have = async (pred: () => boolean): Promise<void> => {
    while (!pred()) {
      if (Date.now() > deadline || socket.destroyed) throw new Error(`handshake failed: ${all.toString('latin1').slice(0, 100)}`);
      await delay(5);
    }
  };
  if (via === 'connect') {
    socket.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    await have(() => all.includes('\r\n\r\n'));
    expect(all.toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
    replyLength = all.indexOf('\r\n\r\n') + 4;
  } else {
    socket.write(Buffer.from([5, 1, 0]));
    await have(() => all.length >= 2);
    const req = Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]);
    socket.write(req);
    await have(() => all.length >= 12);
    expect(all.subarray(0, 4)).toEqual(Buffer.from([5, 0, 5, 0]));
    replyLength = 12;
  }
  return { socket, got: () => all.subarray(replyLength), ended: () => isEnded, error: () => error, closed };
}

async function until(what: string, pred: () => boolean, timeoutMs = LOOP_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(10);
  }
}

/** Write until a write has waited 300 ms for 'drain' (the destination stopped reading); bytes written. */
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

describe.each(['connect', 'socks5'] as const)('%s', (via) => {
  it('a destination that resets mid-stream, before any FIN: the client gets what it sent, then a reset, not a clean end', async () => {
    // Broke: the client got a FIN after the bytes, so a read-until-close download cut short by the
    // destination looked complete (the record alone said upstream-reset).
    let reset: () => void = () => undefined;
    const port = await destination((s) => {
      s.on('error', () => undefined);
      s.write(ANSWER);
      reset = () => s.resetAndDestroy();
    });
    const client = await tunnelTo(via, port);
    await until('the answer', () => client.got().length >= ANSWER.length);
    reset();
    await Promise.race([client.closed, delay(SETTLE_MS)]);
    expect(client.got()).toEqual(ANSWER);
    expect(client.ended()).toBe(false);
    expect(client.error()).toBe('ECONNRESET');
    const record = await gw.waitForClosed((r) => r.destination.port === port, SETTLE_MS);
    expect(record.closeReason).toBe('upstream-reset');
    expect(record.bytesIn).toBe(ANSWER.length);
    expect(record.bytesOut).toBe(0);
  });

  it('a client that resets mid-upload, before any FIN: the destination gets what it sent, then a reset, not a clean end', async () => {
    // Broke: the destination got a FIN after the bytes (the client's reset became the gateway's
    // clean close), so a read-until-close upload the client abandoned looked complete there.
    const upload = 200_000;
    let destRead = 0;
    let isDestEnded = false;
    let destError: string | null = null;
    let dest: Socket | null = null;
    const port = await destination((s) => {
      dest = s;
      s.on('error', (e: NodeJS.ErrnoException) => {
        destError = e.code ?? e.message;
      });
      s.on('data', (c: Buffer) => {
        destRead += c.length;
      });
      s.on('end', () => {
        isDestEnded = true;
      });
    });
    const client = await tunnelTo(via, port);
    client.socket.write(Buffer.alloc(upload, 0x43));
    await until('the upload at the destination', () => destRead >= upload);
    client.socket.resetAndDestroy();
    await until("the destination's end or close", () => isDestEnded || dest?.destroyed === true, SETTLE_MS);
    expect(isDestEnded).toBe(false);
    expect(destError).toBe('ECONNRESET');
    expect(destRead).toBe(upload);
    const record = await gw.waitForClosed((r) => r.destination.port === port, SETTLE_MS);
    expect(record.closeReason).toBe('client-reset');
    expect(record.bytesOut).toBe(upload);
    expect(record.bytesIn).toBe(0);
  });

  it('a destination that resets after its FIN while the upload is backpressured: upstream-reset, the client is reset', async () => {
    let destRead = 0;
    let reset: () => void = () => undefined;
    const port = await destination((s) => {
      s.on('error', () => undefined);
      s.on('data', (c: Buffer) => {
        destRead += c.length;
        // Reads a little of the upload, then no more.
        if (destRead >= 64 * 1024) s.pause();
      });
      s.end(ANSWER);
      reset = () => s.resetAndDestroy();
    });
    const client = await tunnelTo(via, port);
    // The answer and the destination's FIN reach the client; its own side stays open.
    await until('the answer and its end', () => client.ended() && client.got().length >= ANSWER.length);
    expect(client.got()).toEqual(ANSWER);
    const written = await uploadUntilStalled(client.socket);
    reset();
    // The client's pending upload fails: its connection is reset, as it would be by the destination.
    await Promise.race([client.closed, delay(SETTLE_MS)]);
    expect(client.socket.destroyed).toBe(true);
    expect(['ECONNRESET', 'EPIPE']).toContain(client.error());
    const record = await gw.waitForClosed((r) => r.destination.port === port, SETTLE_MS);
    expect(record.closeReason).toBe('upstream-reset');
    expect(record.bytesIn).toBe(ANSWER.length);
    // bytesOut is what was sent towards the destination: never more than the client wrote, and the
    // reason says it did not all arrive (it read only destRead of it).
    expect(record.bytesOut).toBeLessThanOrEqual(written);
    expect(record.bytesOut).toBeGreaterThan(destRead);
  });

  it('a client that half-closes, stops reading and resets while the download is owed: client-reset', async () => {
    let destGot = Buffer.alloc(0);
    let isDestEnded = false;
    let isDestStalled = false;
    let destError: string | null = null;
    let dest: Socket | null = null;
    const port = await destination((s) => {
      dest = s;
      s.on('error', (e: NodeJS.ErrnoException) => {
        destError = e.code ?? e.message;
      });
      s.on('data', (c: Buffer) => {
        destGot = Buffer.concat([destGot, c]);
      });
      s.on('end', () => {
        isDestEnded = true;
      });
      let sent = 0;
      const t0 = Date.now();
      const pump = (): void => {
        while (sent < MAX_UPLOAD && Date.now() - t0 < LOOP_MS && !s.destroyed) {
          sent += CHUNK.length;
          if (!s.write(CHUNK)) {
            const timer = setTimeout(() => {
              isDestStalled = true;
            }, 300);
            s.once('drain', () => {
              clearTimeout(timer);
              pump();
            });
            return;
          }
        }
      };
      pump();
    });
    const client = await tunnelTo(via, port);
    client.socket.pause();
    client.socket.end('hello');
    await until('the destination stalled on a client that reads nothing, after its FIN', () => isDestStalled && isDestEnded);
    expect(destGot.toString()).toBe('hello');
    client.socket.resetAndDestroy();
    const record = await gw.waitForClosed((r) => r.destination.port === port, SETTLE_MS);
    expect(record.closeReason).toBe('client-reset');
    expect(record.bytesOut).toBe(5);
    expect(record.bytesIn).toBeGreaterThan(0);
    // The destination's connection goes too, and not as a clean end.
    await until("the destination's close", () => dest?.destroyed === true, SETTLE_MS);
    expect(['ECONNRESET', 'EPIPE']).toContain(destError);
  });

  it('a destination that reads the upload after its FIN, then closes: closed with every byte', async () => {
    let destRead = 0;
    let isDestEnded = false;
    const port = await destination((s) => {
      s.on('error', () => undefined);
      s.on('data', (c: Buffer) => {
        destRead += c.length;
      });
      s.on('end', () => {
        isDestEnded = true;
        s.destroy();
      });
      s.end(ANSWER);
    });
    const client = await tunnelTo(via, port);
    await until('the answer and its end', () => client.ended() && client.got().length >= ANSWER.length);
    const upload = 1024 * 1024;
    for (let i = 0; i < upload / CHUNK.length; i++) client.socket.write(CHUNK);
    client.socket.end();
    await Promise.race([client.closed, delay(SETTLE_MS)]);
    expect(client.error()).toBeNull();
    const record = await gw.waitForClosed((r) => r.destination.port === port, SETTLE_MS);
    expect(record.closeReason).toBe('closed');
    expect(record.bytesOut).toBe(upload);
    await until('the upload read to its end', () => isDestEnded, SETTLE_MS);
    expect(destRead).toBe(upload);
  });
});
