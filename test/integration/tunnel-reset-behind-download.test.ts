/**
 * A destination that resets in mid-download while the gateway still has its bytes unread (its client
 * is slower than the destination): the gateway must end the flow `upstream-reset` and reset the
 * client after what it relayed, as a direct connection would, not give it a clean end (a
 * read-until-close download would look whole). Where node's libuv reports such a reset as an end
 * (node 20's libuv 1.46, libuv/libuv#2319; test/helpers/reset-behind-data.ts asks the running node)
 * the gateway cannot tell it from a FIN: the flow is `closed` and the client gets a clean end after
 * every byte the gateway read (docs/spec-notes.md, "A destination's reset behind unread data").
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { reportsResetBehindData } from '../helpers/reset-behind-data.ts';

const CHUNK = Buffer.alloc(64 * 1024, 0x61);
/** Bound on the destination's writes: its kernel buffers and the gateway's fill well before. */
const MAX_WRITTEN = 64 * 1024 * 1024;

let gw: TestGateway;
let server: Server;
let destPort = 0;
/** Bytes the destination handed to write() before its reset, and whether it reset. */
let written = 0;
let isReset = false;
let isResetReported = false;

beforeAll(async () => {
  isResetReported = await reportsResetBehindData();
  gw = await startTestGateway({ limits: { idleTimeoutMs: 20_000 } });
  server = createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => {
      // One synchronous run: the gateway (this process) reads nothing meanwhile, so the kernel's
      // buffers fill and the reset lands behind bytes the gateway has not read yet.
      while (written < MAX_WRITTEN) {
        written += CHUNK.length;
        if (!s.write(CHUNK)) break;
      }
      s.resetAndDestroy();
      isReset = true;
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  destPort = (server.address() as { port: number }).port;
});

afterAll(async () => {
  await gw?.stop();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
});

describe('a destination reset behind unread data, mid-download', () => {
  it('CONNECT: upstream-reset and the client reset where node reports the reset; closed and a clean end where it cannot', async () => {
    const client: Socket = connect(gw.httpPort, '127.0.0.1');
    let head = '';
    let got = 0;
    let isHeadDone = false;
    client.on('data', (c: Buffer) => {
      if (isHeadDone) {
        got += c.length;
        return;
      }
      head += c.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      isHeadDone = true;
      got += Buffer.byteLength(head.slice(end + 4), 'latin1');
      head = head.slice(0, end);
    });
    const ending = new Promise<string>((resolve) => {
      client.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      client.on('end', () => resolve('end'));
    });
    await once(client, 'connect');
    client.write(`CONNECT 127.0.0.1:${destPort} HTTP/1.1\r\nHost: 127.0.0.1:${destPort}\r\n\r\n`);
    await until('the tunnel is open', () => isHeadDone, 10_000);
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    client.write('go');
    const clientEnding = await ending;
    client.destroy();
    expect(isReset).toBe(true);
    const rec = await gw.waitForClosed((f) => f.destination.port === destPort);
    // On every node: what the destination never sent (its queue, dropped by its reset) is not
    // counted, the client has no more than the record says, and the client's ending and the record
    // agree.
    expect(rec.bytesOut).toBe(2);
    expect(rec.bytesIn).toBeGreaterThan(0);
    expect(rec.bytesIn).toBeLessThan(written);
    expect(got).toBeLessThanOrEqual(rec.bytesIn);
    expect({ closeReason: rec.closeReason, client: clientEnding }).toEqual(
      isResetReported ? { closeReason: 'upstream-reset', client: 'ECONNRESET' } : { closeReason: 'closed', client: 'end' },
    );
    // A clean end comes after every byte the gateway read.
    if (clientEnding === 'end') expect(got).toBe(rec.bytesIn);
  }, 30_000);
});
