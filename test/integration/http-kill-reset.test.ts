/**
 * `DELETE /v1/flows/{id}` of an absolute-URI request in flight resets the client's connection on
 * both absolute-URI paths (SPEC §4: a killed flow is closed at once, TCP reset on both sides): the
 * node:http path (HTTP/1.0, a Content-Length, a body) as the fast path. A clean FIN there
 * made a close-delimited download cut by the kill look whole to the client.
 */
import type { AddressInfo, Server, Socket } from 'node:net';
import { createServer } from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let originPort = 0;
const originSockets: Socket[] = [];

beforeAll(async () => {
  // Answers `/close` with a close-delimited body (no length), `/length` with a Content-Length, and
  // then holds the connection; `/upload` takes the body and never answers.
  origin = createServer({ allowHalfOpen: true }, (s) => {
    originSockets.push(s);
    s.on('error', () => undefined);
    let head = '';
    s.on('data', (chunk: Buffer) => {
      if (head.includes('\r\n\r\n')) return;
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      if (head.startsWith('GET /close')) s.write(`HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n${'a'.repeat(1000)}`);
      if (head.startsWith('GET /length')) s.write(`HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n${'a'.repeat(1000)}`);
    });
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  gw = await startTestGateway();
});

afterAll(async () => {
  for (const s of originSockets) s.destroy();
  await gw?.stop();
  origin?.close();
});

/** How a client connection ended: its socket's error code, or `end` for a clean FIN. */
function ending(s: Socket): Promise<string> {
  return new Promise((resolve) => {
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    s.once('end', () => resolve('end'));
  });
}

async function adminDelete(id: string): Promise<number> {
  const res = await fetch(`${gw.adminUrl}/v1/flows/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${gw.adminToken}` } });
  await res.arrayBuffer();
  return res.status;
}

/** The live http flow of the client connection from `clientPort`, once the admin API lists it with `bytes` in or out. */
async function liveFlow(clientPort: number, bytes: number): Promise<string> {
  let id = '';
  await until(`a live http flow from port ${clientPort}`, async () => {
    const res = await fetch(`${gw.adminUrl}/v1/flows?state=active`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
    const { flows } = (await res.json()) as { flows: Array<{ id: string; protocol: string; client: { port: number }; bytesIn: number; bytesOut: number }> };
    id = flows.find((r) => r.protocol === 'http' && r.client.port === clientPort && r.bytesIn + r.bytesOut >= bytes)?.id ?? '';
    return id !== '';
  });
  return id;
}

describe('an admin kill of an absolute-URI request in flight resets the client', () => {
  const cases: Array<[string, (p: number) => string, number, string | null]> = [
    ['an HTTP/1.0 close-delimited download (node:http)', (p) => `GET http://127.0.0.1:${p}/close HTTP/1.0\r\nHost: 127.0.0.1:${p}\r\n\r\n`, 1000, 'aaaa'],
    ['an HTTP/1.1 download with a length (node:http: Content-Length 0)', (p) => `GET http://127.0.0.1:${p}/length HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\nContent-Length: 0\r\n\r\n`, 1000, 'aaaa'],
    ['an upload the origin has not answered (node:http)', (p) => `POST http://127.0.0.1:${p}/upload HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\nContent-Length: 5000\r\n\r\n${'c'.repeat(1500)}`, 1500, null],
    ['a close-delimited download (fast path)', (p) => `GET http://127.0.0.1:${p}/close HTTP/1.1\r\nHost: 127.0.0.1:${p}\r\n\r\n`, 1000, 'aaaa'],
  ];
  it.each(cases)('%s', async (_what, request, bytes, marker) => {
    const s = await rawConnect(gw.httpPort);
    const ended = ending(s);
    // The fast path takes a whole HTTP/1.1 GET without a body; HTTP/1.0, a Content-Length or a body go to node:http.
    s.write(request(originPort));
    if (marker !== null) await readUntil(s, marker);
    const id = await liveFlow(s.localPort as number, bytes);
    expect(await adminDelete(id)).toBe(200);
    expect(await ended, 'the client sees a reset, not a clean end').toBe('ECONNRESET');
    const rec = await gw.waitForClosed((r) => r.id === id);
    expect(rec.closeReason).toBe('admin');
  });
});
