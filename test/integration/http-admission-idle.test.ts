/**
 * limits.idleTimeoutMs does not cut a client while the gateway is still admitting its request: the
 * client is not idle, the gateway is. Regression: with idleTimeoutMs 300 and a DNS answer 800 ms late,
 * an absolute-URI GET (fast path and node:http alike) was closed at 300 ms without an answer and
 * recorded `client-reset`, and a name whose DNS never answered never got its 502. Now admission is
 * bounded by its own timeouts (the lookup's: 502 dns-failed), and a client that still owes a request
 * body is idle again from the end of its admission. The DNS server is real (test/helpers/late-dns.ts),
 * asked by the gateway's own resolver.
 *
 * The gateway, the DNS server and the origin share this process, and libuv runs the timers that are
 * due before it reads the sockets: a stall of the process past a limit trips it even when the answer
 * it waits for is already in. idleTimeoutMs also bounds the origin's answer to an Upgrade, and the
 * late answer must come before the lookup's timeout: with 300 ms and 400 ms of room a stall at a load
 * average of 15-21 cut them (504 to the Upgrade). Each has a second now; the lookup still outlasts
 * idleTimeoutMs twice over.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type LateDns, startLateDns } from '../helpers/late-dns.ts';
import { type Origin, rawConnect, readUntil, startOrigin } from './http-harness.ts';

const IDLE_MS = 1000;
const DNS_DELAY_MS = 2000;
/** The gateway's lookup timeout: a `.dead.test` name fails then. */
const DNS_TIMEOUT_MS = 3000;

let gw: TestGateway;
let origin: Origin;
let dns: LateDns;
let n = 0;
const sockets = new Set<Socket>();

beforeAll(async () => {
  dns = await startLateDns(DNS_DELAY_MS);
  origin = await startOrigin();
  origin.server.on('upgrade', (_req: IncomingMessage, socket: Socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
  });
  gw = await startTestGateway({ limits: { idleTimeoutMs: IDLE_MS } }, { resolver: createDnsResolver({ timeoutMs: DNS_TIMEOUT_MS, lookup: dns.lookup, slots: 16, perRequester: 16 }) });
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await gw?.stop();
  await origin?.close();
  dns?.close();
});

/** A name not looked up before (the resolver caches answers and failures). */
function fresh(zone: 'slow' | 'dead'): string {
  return `n${n++}.${zone}.test:${origin.port}`;
}

async function client(): Promise<{ s: Socket; port: number; closedAt: Promise<number> }> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  sockets.add(s);
  // Not once(): it rejects on the 'error' (a reset) that comes before the close.
  const closedAt = new Promise<number>((resolve) => s.once('close', () => resolve(Date.now())));
  return { s, port: s.localPort as number, closedAt };
}

/** Write `parts` one after another, each its own packet (node:http then parses a split head). */
async function writeApart(s: Socket, parts: string[]): Promise<void> {
  for (const [i, part] of parts.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 30));
    s.write(part);
  }
}

const get = (authority: string): string => `GET http://${authority}/ HTTP/1.1\r\nHost: ${authority}\r\n`;

describe('an absolute-URI request whose lookup outlasts idleTimeoutMs', () => {
  for (const [path, split] of [
    ['fast path (head in one packet)', false],
    ['node:http (head in two packets)', true],
  ] as const) {
    it(`${path}: answered once the lookup is, recorded closed`, async () => {
      const c = await client();
      const t0 = Date.now();
      const host = fresh('slow');
      await writeApart(c.s, split ? [get(host), '\r\n'] : [`${get(host)}\r\n`]);
      const got = (await readUntil(c.s, 'echo:GET:0', 15_000)).toString('latin1');
      expect(got).toMatch(/^HTTP\/1\.1 200 /);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(DNS_DELAY_MS - 50);
      const rec = await gw.waitForClosed((r) => r.client.port === c.port, 15_000);
      expect(rec.closeReason).toBe('closed');
      expect(rec.destination).toMatchObject({ host: host.split(':')[0], ip: '127.0.0.1' });
      c.s.destroy();
    });

    it(`${path}: a name whose DNS never answers gets 502 dns-failed at the lookup's timeout, and the record says so`, async () => {
      const c = await client();
      const t0 = Date.now();
      await writeApart(c.s, split ? [get(fresh('dead')), '\r\n'] : [`${get(fresh('dead'))}\r\n`]);
      const got = (await readUntil(c.s, 'dns-failed', 15_000)).toString('latin1');
      expect(got).toMatch(/^HTTP\/1\.1 502 /);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(DNS_TIMEOUT_MS - 50);
      const rec = await gw.waitForClosed((r) => r.client.port === c.port, 15_000);
      expect(rec.closeReason).toBe('dns-failed');
      c.s.destroy();
    });
  }

  it('a POST whose client stops mid-body is cut idleTimeoutMs after its admission, idle-timeout', async () => {
    const c = await client();
    const t0 = Date.now();
    const host = fresh('slow');
    c.s.write(`POST http://${host}/ HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 10\r\n\r\nabc`);
    const closedAfterMs = (await c.closedAt) - t0;
    // Not during the lookup; then the client's own silence counts, and it is cut for it.
    expect(closedAfterMs).toBeGreaterThanOrEqual(DNS_DELAY_MS);
    // Not left open either: cut within a few idleTimeoutMs of the answer (3 s of room for a stall).
    expect(closedAfterMs).toBeLessThan(DNS_DELAY_MS + 4 * IDLE_MS);
    const rec = await gw.waitForClosed((r) => r.client.port === c.port, 15_000);
    expect(rec.closeReason).toBe('idle-timeout');
  });
});

describe('CONNECT and Upgrade whose lookup outlasts idleTimeoutMs', () => {
  it('CONNECT is established once the lookup answers; the silent tunnel then ends idle-timeout', async () => {
    const c = await client();
    const host = fresh('slow');
    c.s.write(`CONNECT ${host} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    expect((await readUntil(c.s, '\r\n\r\n', 15_000)).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    const rec = await gw.waitForClosed((r) => r.client.port === c.port, 15_000);
    expect(rec.closeReason).toBe('idle-timeout');
  });

  it('Upgrade gets the 101 once the lookup answers; the silent tunnel then ends idle-timeout', async () => {
    const c = await client();
    const host = fresh('slow');
    c.s.write(`GET http://${host}/ws HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`);
    expect((await readUntil(c.s, '\r\n\r\n', 15_000)).toString('latin1')).toMatch(/^HTTP\/1\.1 101 /);
    const rec = await gw.waitForClosed((r) => r.client.port === c.port, 15_000);
    expect(rec.closeReason).toBe('idle-timeout');
  });
});
