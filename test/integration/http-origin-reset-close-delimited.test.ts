/**
 * An origin that resets its connection in the middle of a close-delimited body (no Content-Length,
 * not chunked) cut that body short: the client must not be told it is whole, and the flow ends
 * `upstream-reset`, as a tunnel's destination reset before its FIN does. undici ends such a body as
 * complete on ECONNRESET: before, an HTTP/1.1 client got the terminating chunk, an HTTP/1.0 client a
 * clean close, and the record said `closed`. The origin's clean close still ends the body whole.
 */
import { once } from 'node:events';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let originPort = 0;
/** The origin connection that took the request for each path, once its answer is written. */
const answered = new Map<string, Socket>();
const waiting = new Map<string, (s: Socket) => void>();

beforeAll(async () => {
  origin = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => undefined);
    let head = '';
    s.on('data', (chunk: Buffer) => {
      if (head.includes('\r\n\r\n')) return;
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      const path = /^GET (\S+)/.exec(head)?.[1] ?? '';
      s.write(`HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n${'a'.repeat(1000)}`, () => {
        answered.set(path, s);
        waiting.get(path)?.(s);
      });
    });
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  gw = await startTestGateway();
});

afterAll(async () => {
  for (const s of answered.values()) s.destroy();
  await gw?.stop();
  origin?.close();
});

function originSocket(path: string): Promise<Socket> {
  const s = answered.get(path);
  return s ? Promise.resolve(s) : new Promise((resolve) => waiting.set(path, resolve));
}

/** Everything the client receives and how its connection ends (`end`: a clean FIN; else the error code). */
function collect(s: Socket): { text: () => string; ended: Promise<string> } {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<string>((resolve) => {
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    s.once('end', () => resolve('end'));
  });
  return { text: () => Buffer.concat(chunks).toString('latin1'), ended };
}

const request = (path: string, version: string): string => `GET http://127.0.0.1:${originPort}${path} HTTP/${version}\r\nHost: 127.0.0.1:${originPort}\r\n\r\n`;

describe('an origin reset in a close-delimited body', () => {
  it('HTTP/1.1 (fast path): no terminating chunk, the connection cut, the record upstream-reset', async () => {
    const s = await rawConnect(gw.httpPort);
    const port = s.localPort as number;
    const got = collect(s);
    s.write(request('/reset-11', '1.1'));
    await readUntil(s, 'a'.repeat(1000));
    (await originSocket('/reset-11')).resetAndDestroy();
    await got.ended;
    expect(got.text()).toMatch(/^HTTP\/1\.1 200 /);
    expect(got.text(), 'the chunked body is not ended as whole').not.toContain('\r\n0\r\n\r\n');
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec).toMatchObject({ closeReason: 'upstream-reset', bytesIn: 1000 });
  });

  it('HTTP/1.0 (node:http): the client is reset after the bytes that came, the record upstream-reset', async () => {
    const s = await rawConnect(gw.httpPort);
    const port = s.localPort as number;
    const got = collect(s);
    s.write(request('/reset-10', '1.0'));
    await readUntil(s, 'a'.repeat(1000));
    (await originSocket('/reset-10')).resetAndDestroy();
    expect(await got.ended, 'a clean close would end the body as whole').toBe('ECONNRESET');
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec).toMatchObject({ closeReason: 'upstream-reset', bytesIn: 1000 });
  });

  it.each(['1.1', '1.0'])('HTTP/%s: the origin closing cleanly ends the body whole, the record closed', async (version) => {
    const path = `/clean-${version}`;
    const s = await rawConnect(gw.httpPort);
    const port = s.localPort as number;
    const got = collect(s);
    s.write(request(path, version));
    await readUntil(s, 'a'.repeat(1000));
    (await originSocket(path)).end();
    if (version === '1.1') await readUntil(s, '0\r\n\r\n');
    else expect(await got.ended).toBe('end');
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec).toMatchObject({ closeReason: 'closed', bytesIn: 1000 });
    s.destroy();
  });
});
