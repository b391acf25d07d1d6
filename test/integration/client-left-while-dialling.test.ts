/**
 * A client that leaves (a reset) while its flow's dial or its name's lookup is under way: the dial is
 * abandoned at once (nothing reaches the destination afterwards, nothing is dialled after a late DNS
 * answer), the flow is recorded `client-reset` at once, and it is no failed attempt for an0081.scan.
 * A client that only half-closes (FIN, still reading) is not a client that left: its flow dials on
 * and is answered. On CONNECT (the fast front and node:http's path), SOCKS5, absolute-URI requests
 * and Upgrade requests.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, it } from 'vitest';
import type { Flow } from '../../gateway/flow/flow.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type HungDestination, hungDestination } from '../helpers/hung-destination.ts';
import { caseSockets, type LateLookupSetup, startLateLookup } from '../helpers/dialling-cases.ts';
import type { LateDns } from '../helpers/late-dns.ts';
import { rawConnect } from './http-harness.ts';

/** The live flow matching `pred`, once admission has opened it. */
async function liveFlow(gw: TestGateway, pred: (f: Flow) => boolean): Promise<Flow> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    for (const f of gw.flows.activeFlows().values()) if (pred(f)) return f;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('no live flow');
}

/** The flow's records, once it has one or `ms` pass (then what there is: none). */
async function recordsOf(gw: TestGateway, id: string, ms: number): Promise<FlowRecord[]> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline && !gw.closed.some((r) => r.id === id)) await new Promise((r) => setTimeout(r, 10));
  return gw.closed.filter((r) => r.id === id);
}

/** A raw client that has sent `parts` (written 30 ms apart) and whose flow is live. */
async function rawClient(gw: TestGateway, parts: string[]): Promise<{ s: Socket; flow: Flow; received: () => string }> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  let text = '';
  s.on('data', (c: Buffer) => {
    text += c.toString('latin1');
  });
  for (const [i, part] of parts.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 30));
    s.write(part);
  }
  const port = s.localPort;
  const flow = await liveFlow(gw, (f) => f.client.port === port);
  return { s, flow, received: () => text };
}

/** A raw SOCKS5 client (no login) that has sent its CONNECT to 127.0.0.1:`port` and whose flow is live. */
async function socksClient(gw: TestGateway, port: number): Promise<{ s: Socket; flow: Flow }> {
  const s = await rawConnect(gw.socksPort, gw.socksHost);
  s.on('error', () => undefined);
  s.write(Buffer.from([5, 1, 0]));
  await once(s, 'data');
  s.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]));
  const local = s.localPort;
  const flow = await liveFlow(gw, (f) => f.protocol === 'socks5' && f.client.port === local);
  return { s, flow };
}

// The lookup case runs alone, first; the cases after it each wait out their destination's 3.5 s
// accept window (test/helpers/hung-destination.ts) with a gateway of their own, so they run concurrently.
describe('a client that resets while its name is looked up', () => {
  let setup: LateLookupSetup;
  let gw: TestGateway;
  let dns: LateDns;

  beforeAll(async () => {
    setup = await startLateLookup(800);
    ({ gw, dns } = setup);
  });
  afterAll(async () => {
    await setup?.close();
  });

  it('CONNECT, an Upgrade and SOCKS5: recorded client-reset at once, the late answer is not dialled', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const port = setup.originPort;
    const c = await rawClient(gw, [`CONNECT a.slow.test:${port} HTTP/1.1\r\nHost: a.slow.test:${port}\r\n\r\n`]);
    const up = await rawClient(gw, [`GET http://c.slow.test:${port}/ws HTTP/1.1\r\nHost: c.slow.test:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`]);
    clients.push(c.s, up.s);
    const s = await rawConnect(gw.socksPort, gw.socksHost);
    clients.push(s);
    s.on('error', () => undefined);
    s.write(Buffer.from([5, 1, 0]));
    await once(s, 'data');
    const name = Buffer.from('b.slow.test', 'latin1');
    s.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([port >> 8, port & 0xff])]));
    const local = s.localPort;
    const socksFlow = await liveFlow(gw, (f) => f.protocol === 'socks5' && f.client.port === local);
    const started = Date.now();
    c.s.resetAndDestroy();
    up.s.resetAndDestroy();
    s.resetAndDestroy();
    for (const f of [c.flow, up.flow, socksFlow]) {
      const records = await recordsOf(gw, f.id, 2000);
      expect(records.map((r) => r.closeReason), `flow ${f.protocol}`).toEqual(['client-reset']);
    }
    // Before the answer came (800 ms after each question).
    expect(Date.now() - started).toBeLessThan(500);
    // Every name was asked; the answers (127.0.0.1) came and were not dialled.
    await new Promise((res) => setTimeout(res, 1200));
    expect(dns.asked).toEqual(expect.arrayContaining(['a.slow.test', 'b.slow.test', 'c.slow.test']));
    expect(setup.connections()).toBe(0);
    for (const f of [c.flow, up.flow, socksFlow]) expect(gw.closed.filter((r) => r.id === f.id)).toHaveLength(1);
  });
});

describe.concurrent('a client that resets while its flow dials', () => {
  let gw: TestGateway;
  let dest: HungDestination;

  beforeAll(async () => {
    gw = await startTestGateway({ limits: { connectTimeoutMs: 3000 } });
    dest = await hungDestination();
  });
  afterAll(async () => {
    dest?.close();
    await gw?.stop();
  });

  it('CONNECT (front and node:http), SOCKS5: recorded client-reset at once, no failed attempt, the destination never reached; a half-closed client is served', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const target = `127.0.0.1:${dest.port}`;
    const head = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`;
    // Whole in one packet: the CONNECT front; split over two: node:http parses it.
    const front = await rawClient(gw, [head]);
    const viaHttp = await rawClient(gw, [head.slice(0, 10), head.slice(10)]);
    clients.push(front.s, viaHttp.s);
    const socks = await socksClient(gw, dest.port);
    clients.push(socks.s);
    // A client that half-closes after its CONNECT: still reading, it is still waiting for its answer.
    const halfClosed = await rawClient(gw, [head]);
    clients.push(halfClosed.s);
    await new Promise((r) => setTimeout(r, 200));
    halfClosed.s.end();
    const started = Date.now();
    front.s.resetAndDestroy();
    viaHttp.s.resetAndDestroy();
    socks.s.resetAndDestroy();
    for (const f of [front.flow, viaHttp.flow, socks.flow]) {
      const records = await recordsOf(gw, f.id, 2000);
      expect(records.map((r) => r.closeReason), `flow ${f.id}`).toEqual(['client-reset']);
      expect(records[0]?.durationMs).toBeLessThan(1500);
    }
    expect(Date.now() - started).toBeLessThan(1000);
    // The half-closed client's flow dials on.
    expect(gw.flows.activeFlows().has(halfClosed.flow.id)).toBe(true);
    const peers = await dest.release();
    // Only the half-closed client's dial reached the destination.
    expect(peers.filter((p) => p !== '127.0.0.9')).toEqual(['127.0.0.1']);
    expect(halfClosed.received()).toMatch(/^HTTP\/1\.1 200 /);
  }, 30_000);
});

describe.concurrent('an absolute-URI client that leaves while its origin connection is made', () => {
  let gw: TestGateway;
  let dest: HungDestination;

  beforeAll(async () => {
    gw = await startTestGateway({ limits: { connectTimeoutMs: 3000 } });
    dest = await hungDestination();
  });
  afterAll(async () => {
    dest?.close();
    await gw?.stop();
  });

  it('fast path (GET) and node:http (POST): recorded client-reset at once, the origin never reached', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const url = `http://127.0.0.1:${dest.port}/x`;
    const get = await rawClient(gw, [`GET ${url} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`]);
    const post = await rawClient(gw, [`POST ${url} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\nContent-Length: 2\r\n\r\nhi`]);
    clients.push(get.s, post.s);
    await new Promise((r) => setTimeout(r, 200));
    get.s.resetAndDestroy();
    post.s.resetAndDestroy();
    for (const f of [get.flow, post.flow]) {
      const records = await recordsOf(gw, f.id, 2000);
      expect(records.map((r) => r.closeReason)).toEqual(['client-reset']);
      expect(records[0]?.durationMs).toBeLessThan(1500);
    }
    // undici's connects were abandoned: once the queue is free, nobody but the fillers connects.
    const peers = await dest.release();
    expect(peers.filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);
});

describe.concurrent('an absolute-URI client that only half-closes while its origin connection is made', () => {
  let gw: TestGateway;
  let dest: HungDestination;

  beforeAll(async () => {
    // finGraceMs = min(connectTimeoutMs, idleTimeoutMs): as long as the dial's own bound, as by default.
    gw = await startTestGateway({ limits: { connectTimeoutMs: 2000 } });
    dest = await hungDestination();
  });
  afterAll(async () => {
    dest?.close();
    await gw?.stop();
  });

  it('fast path (GET) and node:http (POST), the FIN with the request or 200 ms after it: 504, recorded connect-timeout, a failed attempt', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const target = `127.0.0.1:${dest.port}`;
    const get = `GET http://${target}/x HTTP/1.1\r\nHost: ${target}\r\n\r\n`;
    const post = `POST http://${target}/x HTTP/1.1\r\nHost: ${target}\r\nContent-Length: 2\r\n\r\nhi`;
    /** Send `request`, then the FIN (`finAfterMs` later), read until the gateway closes. */
    const halfClosed = async (request: string, finAfterMs: number): Promise<{ port: number; answer: string }> => {
      const s = connect({ port: gw.httpPort, host: '127.0.0.1', allowHalfOpen: true });
      clients.push(s);
      s.on('error', () => undefined);
      await once(s, 'connect');
      const port = s.localPort as number;
      let answer = '';
      s.on('data', (c: Buffer) => {
        answer += c.toString('latin1');
      });
      s.on('end', () => s.destroy());
      const closed = once(s, 'close');
      s.write(request);
      if (finAfterMs > 0) await new Promise((r) => setTimeout(r, finAfterMs));
      s.end();
      await closed;
      return { port, answer };
    };
    const runs = await Promise.all([halfClosed(get, 0), halfClosed(post, 0), halfClosed(get, 200), halfClosed(post, 200)]);
    for (const [i, r] of runs.entries()) {
      // The half-closed client still reads: it gets the dial's failure, and the record says what ended it.
      expect(r.answer, `run ${i}`).toMatch(/^HTTP\/1\.1 504 /);
      const record = await gw.waitForClosed((x) => x.client.port === r.port);
      expect([record.closeReason, record.connected], `run ${i}`).toEqual(['connect-timeout', false]);
      expect(gw.closed.filter((x) => x.client.port === r.port), `run ${i}`).toHaveLength(1);
      // Counted as a failed attempt (ctx.detection.onConnectFailed), logged beside it.
      expect(gw.logs.filter((l) => l.msg === 'origin request failed' && l['flowId'] === record.id), `run ${i}`).toHaveLength(1);
    }
  }, 30_000);
});

describe.concurrent('an Upgrade client that leaves while its destination is dialled', () => {
  let gw: TestGateway;
  let dest: HungDestination;

  beforeAll(async () => {
    gw = await startTestGateway({ limits: { connectTimeoutMs: 3000 } });
    dest = await hungDestination();
  });
  afterAll(async () => {
    dest?.close();
    await gw?.stop();
  });

  it('websocket Upgrade: recorded client-reset at once, no failed attempt, the destination never reached', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const c = await rawClient(gw, [`GET http://127.0.0.1:${dest.port}/ws HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`]);
    clients.push(c.s);
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    c.s.resetAndDestroy();
    const records = await recordsOf(gw, c.flow.id, 2000);
    expect(records.map((r) => r.closeReason)).toEqual(['client-reset']);
    expect(records[0]?.durationMs).toBeLessThan(1500);
    expect(Date.now() - started).toBeLessThan(1000);
    // Not a failed dial: the gateway logged none.
    expect(gw.logs.filter((l) => l.msg === 'Upgrade dial failed')).toEqual([]);
    // The dial was abandoned: once the queue is free, nobody but the fillers connects.
    const peers = await dest.release();
    expect(peers.filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);
});
