/**
 * A reason phrase the gateway read from its origin in two pieces reaches the client whole
 * (gateway/listeners/http-origin-status.ts). Regression: undici kept only a status line's last
 * piece, so `HTTP/1.1 200 Everything Is Fine` read as `HTTP/1.1 200 Everything ` and then `Is Fine`
 * was relayed as `HTTP/1.1 200 Is Fine`, a 103's phrase the same way: on both absolute-URI paths
 * (the fast path and node:http), with the origin read buffers on and off.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setReadBuffersEnabled } from '../../gateway/flow/read-buffer.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

const INTERIM = 'HTTP/1.1 103 Early Hints From Origin';
const FINAL = 'HTTP/1.1 200 Everything Is Fine';
const BODY = Buffer.from(`${'0123456789abcdef'.repeat(2048)}END-OF-BODY`, 'latin1');
const WIRE = Buffer.from(`${INTERIM}\r\nlink: </s.css>; rel=preload\r\n\r\n${FINAL}\r\ncontent-length: ${BODY.length}\r\n\r\n${BODY.toString('latin1')}`, 'latin1');
/** Where the origin cuts its answer: inside the 103's phrase, then inside the 200's at `/cut/<offset>`. */
const INTERIM_CUT = 'HTTP/1.1 103 Early '.length;
const FINAL_AT = WIRE.indexOf(FINAL);

let gw: TestGateway;
/** One origin per read-buffer mode: a pooled origin connection keeps the reads it started with. */
const origins: Server[] = [];
const sockets = new Set<Socket>();
/** Records already matched to a request (one keep-alive client connection has several). */
const seen = new Set<string>();

/**
 * A keep-alive origin answering `GET /cut/<n>` in three writes 30 ms apart (the only way to have the
 * gateway read a status line in two pieces): up to inside the 103's phrase, up to byte n of the
 * final status line, the rest.
 */
function serveOrigin(s: Socket): void {
  sockets.add(s);
  s.setNoDelay(true);
  s.on('close', () => sockets.delete(s));
  s.on('error', () => undefined);
  let pending = '';
  let busy = Promise.resolve();
  s.on('data', (c: Buffer) => {
    pending += c.toString('latin1');
    for (;;) {
      const end = pending.indexOf('\r\n\r\n');
      if (end < 0) return;
      const m = /^GET \/cut\/(\d+) HTTP\/1\.1\r\n/.exec(pending);
      pending = pending.slice(end + 4);
      if (!m) continue;
      const cuts = [INTERIM_CUT, FINAL_AT + Number(m[1]), WIRE.length];
      busy = busy.then(async () => {
        let from = 0;
        for (const to of cuts) {
          if (s.destroyed) return;
          s.write(WIRE.subarray(from, to));
          from = to;
          await new Promise((r) => setTimeout(r, 30));
        }
      });
    }
  });
}

beforeAll(async () => {
  for (let i = 0; i < 2; i++) {
    const origin = createServer(serveOrigin);
    origin.listen(0, '127.0.0.1');
    await once(origin, 'listening');
    origins.push(origin);
  }
  gw = await startTestGateway();
});

afterAll(async () => {
  setReadBuffersEnabled(true);
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await Promise.all(origins.map((o) => new Promise<void>((r) => o.close(() => r()))));
});

describe('a reason phrase read from the origin in two pieces', () => {
  for (const [i, mode] of (['on', 'off'] as const).entries()) {
    for (const path of ['fast path', 'node:http'] as const) {
      it(`reaches the client whole, 1xx and final (read buffers ${mode}, ${path})`, async () => {
        setReadBuffersEnabled(mode === 'on');
        const port = ((origins[i] as Server).address() as { port: number }).port;
        // A Content-Length on the request sends it to node:http (http-fast-head.ts).
        const extra = path === 'node:http' ? 'content-length: 0\r\n' : '';
        const client = await rawConnect(gw.httpPort);
        try {
          // Cut after `HTTP/1.1 200 E`, after `Everything `, and before the phrase's last byte.
          for (const cut of ['HTTP/1.1 200 E'.length, 'HTTP/1.1 200 Everything '.length, FINAL.length - 1]) {
            client.write(`GET http://127.0.0.1:${port}/cut/${cut} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n${extra}\r\n`);
            const got = (await readUntil(client, 'END-OF-BODY')).toString('latin1');
            const lines = got.split('\r\n');
            expect(lines[0]).toBe(INTERIM);
            expect(lines).toContain(FINAL);
            expect(lines).not.toContain('HTTP/1.1 200 Is Fine');
            expect(got.slice(got.indexOf('\r\n\r\n', got.indexOf(FINAL)) + 4)).toBe(BODY.toString('latin1'));
            const record = await gw.waitForClosed((r) => r.client.port === client.localPort && r.destination.port === port && r.bytesIn === BODY.length && !seen.has(r.id));
            seen.add(record.id);
            expect(record.closeReason).toBe('closed');
          }
        } finally {
          client.destroy();
        }
      });
    }
  }
});
