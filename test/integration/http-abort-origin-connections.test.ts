/**
 * An absolute-URI client that leaves mid-request (a reset while its origin answers slowly, mid-body
 * upload, mid-download) costs the origin the one connection its request needed, no more. Regression:
 * undici dialled the origin once more for the request it had just aborted (its abort's close leaves
 * the aborted request queued; http-origin-dial.ts, isRedialOfAborted) and closed that connection
 * empty: 2 connections where 1 was needed, on the fast path and node:http's, 4 of 4 reproduced.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

/** An origin that counts its connections and how many bytes each carried; /ok answers, the rest never do. */
interface CountingOrigin {
  port: number;
  connections: Array<{ bytes: number; isClosed: boolean }>;
  close(): Promise<void>;
}

async function countingOrigin(): Promise<CountingOrigin> {
  const connections: CountingOrigin['connections'] = [];
  const held: ServerResponse[] = [];
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.url === '/ok') {
      res.end('ok');
      return;
    }
    if (req.url === '/download') {
      res.writeHead(200, { 'content-length': 100_000 });
      res.write(Buffer.alloc(1000, 0x61));
    }
    // Read what comes (an upload's body) and never finish the answer.
    req.resume();
    held.push(res);
  });
  server.on('connection', (s: Socket) => {
    const c = { bytes: 0, isClosed: false };
    connections.push(c);
    s.on('data', (d: Buffer) => {
      c.bytes += d.length;
    });
    s.on('close', () => {
      c.isClosed = true;
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as { port: number }).port,
    connections,
    close: async () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

let gw: TestGateway;
const origins: CountingOrigin[] = [];
const clients: Socket[] = [];

beforeAll(async () => {
  gw = await startTestGateway();
});
afterAll(async () => {
  for (const c of clients) c.destroy();
  for (const o of origins) await o.close();
  await gw?.stop();
});

/** How long after its first connection closed the origin is watched for another (undici's came within 2 ms). */
const WATCH_MS = 300;

describe('an absolute-URI client that leaves mid-request: the origin sees only the connection its request needed', () => {
  const cases: Array<{ name: string; send: (port: number) => string[]; waitFor: string | null; bytesOut: number }> = [
    { name: 'fast path GET, the origin answering slowly', send: (p) => [`GET http://127.0.0.1:${p}/slow HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\n\r\n`], waitFor: null, bytesOut: 0 },
    { name: 'node:http GET (head split over two writes), the origin answering slowly', send: (p) => [`GET http://127.0.0.1:${p}/slow HTTP/1.1\r\n`, `Host: 127.0.0.1:${p}\r\n\r\n`], waitFor: null, bytesOut: 0 },
    {
      name: 'node:http POST mid-body upload',
      send: (p) => [`POST http://127.0.0.1:${p}/upload HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\nContent-Length: 100000\r\n\r\n${'u'.repeat(1000)}`],
      waitFor: null,
      bytesOut: 1000,
    },
    { name: 'fast path GET mid-download', send: (p) => [`GET http://127.0.0.1:${p}/download HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\n\r\n`], waitFor: 'a'.repeat(1000), bytesOut: 0 },
  ];
  for (const c of cases) {
    it(`${c.name}: a reset, recorded client-reset, one origin connection; the next request to the origin is served`, async () => {
      const origin = await countingOrigin();
      origins.push(origin);
      const client = await rawConnect(gw.httpPort);
      clients.push(client);
      client.on('error', () => undefined);
      const answer = c.waitFor === null ? null : readUntil(client, c.waitFor);
      for (const [i, part] of c.send(origin.port).entries()) {
        if (i > 0) await new Promise((r) => setTimeout(r, 30));
        client.write(part);
      }
      await answer;
      const port = client.localPort;
      // The request (and the body sent so far) has reached the origin.
      await until('the request at the origin', () => (origin.connections[0]?.bytes ?? 0) > 0 && [...gw.flows.activeFlows().values()].some((f) => f.client.port === port && f.bytesOut === c.bytesOut));
      await until('the origin has the body sent so far', () => (origin.connections[0]?.bytes ?? 0) > c.bytesOut);
      client.resetAndDestroy();
      const rec = await gw.waitForClosed((r) => r.client.port === port);
      expect([rec.closeReason, rec.bytesOut]).toEqual(['client-reset', c.bytesOut]);
      await until('the origin connection closed', () => origin.connections[0]?.isClosed === true);
      await new Promise((r) => setTimeout(r, WATCH_MS));
      expect(origin.connections.length).toBe(1);
      // The origin is not left unreachable: the next request gets its own connection and its answer.
      const next = await rawConnect(gw.httpPort);
      clients.push(next);
      next.write(`GET http://127.0.0.1:${origin.port}/ok HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`);
      expect((await readUntil(next, '\r\n\r\nok')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
      expect(origin.connections.map((x) => x.bytes > 0)).toEqual([true, true]);
    });
  }
});
