/**
 * A flow killed while its dial is under way (admin DELETE, the drain's end, a kill while its name is
 * looked up): the dial is abandoned (nothing reaches the destination afterwards), the client gets
 * the kill's answer at once (403 admin / SOCKS 0x02, 503 shutdown / 0x01), and the flow has exactly
 * one record, with the kill's reason. On CONNECT, absolute-URI (node:http's path and the fast path),
 * Upgrade and SOCKS5. A detector's and a quarantine's kill (a late agent report naming the dialling
 * connection's process) answer a dialling CONNECT 403 with the detector's name / `quarantine`.
 *
 * The destination whose connect hangs: a listener that never accepts, its one-slot accept queue
 * filled from 127.0.0.9, so further SYNs are dropped (Linux). Once the test frees the queue, the
 * listener accepts for 3.5 s (two SYN retransmissions) and names every peer: a dial left running
 * would connect then, from 127.0.0.1.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, it } from 'vitest';
import type { Flow } from '../../gateway/flow/flow.ts';
import { reportProcesses, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type HungDestination, hungDestination } from '../helpers/hung-destination.ts';
import { caseSockets, type LateLookupSetup, startLateLookup } from '../helpers/dialling-cases.ts';
import type { LateDns } from '../helpers/late-dns.ts';
import { rawConnect } from './http-harness.ts';

/** What a raw client socket receives until its refusal body is whole, it closes, or `ms` pass. */
function replyOf(s: Socket, ms: number): Promise<{ text: string; isClosed: boolean }> {
  return new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => resolve({ text, isClosed: false }), ms);
    s.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (text.endsWith('}')) {
        clearTimeout(timer);
        resolve({ text, isClosed: false });
      }
    });
    s.once('close', () => {
      clearTimeout(timer);
      resolve({ text, isClosed: true });
    });
  });
}

/** The live flow of a client port, once admission has opened it and its dial is under way. */
async function liveFlow(gw: TestGateway, pred: (f: Flow) => boolean): Promise<Flow> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    for (const f of gw.flows.activeFlows().values()) if (pred(f)) return f;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('no live flow');
}

async function deleteFlow(gw: TestGateway, id: string): Promise<number> {
  const res = await fetch(`${gw.adminUrl}/v1/flows/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${gw.adminToken}` } });
  await res.arrayBuffer();
  return res.status;
}

/** A raw HTTP client that has sent `head` and is waiting, with its flow dialling. */
async function rawClient(gw: TestGateway, head: string): Promise<{ s: Socket; reply: Promise<{ text: string; isClosed: boolean }>; flow: Flow }> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const reply = replyOf(s, 3000);
  s.write(head);
  const port = s.localPort;
  const flow = await liveFlow(gw, (f) => f.client.port === port);
  return { s, reply, flow };
}

function socksClient(gw: TestGateway, host: string, port: number): Promise<unknown> {
  return SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host, port }, timeout: 3000 }).then(
    (c) => {
      c.socket.destroy();
      return 'connected';
    },
    (err: Error) => err.message,
  );
}

/** The address the agent-named clients connect from (no other test here uses it). */
const AGENT_CLIENT = '127.0.0.7';

// The lookup case runs alone, first; the cases after it each wait out their destination's 3.5 s
// accept window (test/helpers/hung-destination.ts) with a gateway of their own, so they run concurrently.
describe('a flow killed while its name is looked up', () => {
  let setup: LateLookupSetup;
  let gw: TestGateway;
  let dns: LateDns;

  beforeAll(async () => {
    // Long enough that the kills' answers come well before the names' (the test checks the order).
    setup = await startLateLookup(2500);
    ({ gw, dns } = setup);
  });
  afterAll(async () => {
    await setup?.close();
  });

  it('CONNECT and SOCKS5: 403 admin / 0x02 at once, before the lookup ends; the late answer is not dialled', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const port = setup.originPort;
    const c = await rawClient(gw, `CONNECT a.slow.test:${port} HTTP/1.1\r\nHost: a.slow.test:${port}\r\n\r\n`);
    clients.push(c.s);
    const socks = socksClient(gw, 'b.slow.test', port);
    const socksFlow = await liveFlow(gw, (f) => f.protocol === 'socks5');
    expect(await deleteFlow(gw, c.flow.id)).toBe(200);
    expect(await deleteFlow(gw, socksFlow.id)).toBe(200);
    const r = await c.reply;
    expect(r.text).toMatch(/^HTTP\/1\.1 403 /);
    expect(r.text).toContain('"reason":"admin"');
    expect(await socks).toMatch(/NotAllowed/);
    // Answered while both names were still being looked up (a kill ends admission's wait for the
    // lookup): before, each answer came only once its name's did.
    expect(dns.answered.filter((n) => n.endsWith('.slow.test'))).toEqual([]);
    // Both names were asked; their answers (127.0.0.1, after 2.5 s) came and were not used.
    await until('both names answered', () => dns.answered.includes('a.slow.test') && dns.answered.includes('b.slow.test'), 10_000);
    await new Promise((res) => setTimeout(res, 500));
    expect(dns.asked).toEqual(expect.arrayContaining(['a.slow.test', 'b.slow.test']));
    expect(setup.connections()).toBe(0);
    for (const f of [c.flow, socksFlow]) expect(gw.closed.filter((rec) => rec.id === f.id).map((rec) => rec.closeReason)).toEqual(['admin']);
  });
});

describe.concurrent('a flow killed while it dials', () => {
  let gw: TestGateway;
  let dest: HungDestination;

  beforeAll(async () => {
    gw = await startTestGateway({ limits: { connectTimeoutMs: 20_000 } });
  });
  afterAll(async () => {
    dest?.close();
    await gw?.stop();
  });

  it('DELETE /v1/flows/{id}: each client is answered at once (403 admin / SOCKS 0x02), one record each, and the destination is never reached', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    dest = await hungDestination();
    const url = `http://127.0.0.1:${dest.port}/x`;
    const tunnelHead = `CONNECT 127.0.0.1:${dest.port} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`;
    const fastHead = `GET ${url} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`;
    // A POST with a body goes through node:http's path (the fast path takes GET and HEAD).
    const slowHead = `POST ${url} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\nContent-Length: 2\r\n\r\nhi`;
    const upgradeHead = `GET ${url} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`;
    const raws = [];
    for (const head of [tunnelHead, fastHead, slowHead, upgradeHead]) {
      const c = await rawClient(gw, head);
      clients.push(c.s);
      raws.push(c);
    }
    const before = new Set([...gw.flows.activeFlows().keys()]);
    const socks = socksClient(gw, '127.0.0.1', dest.port);
    const socksFlow = await liveFlow(gw, (f) => f.protocol === 'socks5' && !before.has(f.id));
    // Every dial is under way (the SYNs are being dropped): now the operator kills the flows.
    await new Promise((r) => setTimeout(r, 200));
    const flows = [...raws.map((c) => c.flow), socksFlow];
    const started = Date.now();
    for (const f of flows) expect(await deleteFlow(gw, f.id)).toBe(200);
    const replies = await Promise.all(raws.map((c) => c.reply));
    const socksAnswer = await socks;
    const elapsedMs = Date.now() - started;
    for (const [i, r] of replies.entries()) {
      expect(r.text, `client ${i}`).toMatch(/^HTTP\/1\.1 403 /);
      expect(r.text, `client ${i}`).toContain('"reason":"admin"');
      expect(r.text, `client ${i}`).toContain(`"flowId":"${flows[i]?.id}"`);
    }
    expect(socksAnswer).toMatch(/NotAllowed/);
    expect(elapsedMs).toBeLessThan(2000);
    for (const f of flows) {
      const records = gw.closed.filter((r) => r.id === f.id);
      expect(records.map((r) => r.closeReason)).toEqual(['admin']);
    }
    // The kills abandoned the dials: once the queue is free, nobody but the fillers connects.
    const peers = await dest.release();
    expect(peers.filter((p) => p !== '127.0.0.9')).toEqual([]);
    // The records are still one each (nothing closed them again when the dials ended).
    for (const f of flows) expect(gw.closed.filter((r) => r.id === f.id)).toHaveLength(1);
  }, 30_000);
});

describe.concurrent("the drain's grace running out while flows dial", () => {
  it('CONNECT and absolute-URI 503 shutdown, SOCKS5 0x01 before the drain ends; one record each, closeReason shutdown', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ limits: { connectTimeoutMs: 20_000 } });
    const dest = await hungDestination();
    try {
      const c = await rawClient(gw, `CONNECT 127.0.0.1:${dest.port} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`);
      clients.push(c.s);
      const g = await rawClient(gw, `GET http://127.0.0.1:${dest.port}/x HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`);
      clients.push(g.s);
      const p = await rawClient(gw, `POST http://127.0.0.1:${dest.port}/x HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\nContent-Length: 2\r\n\r\nhi`);
      clients.push(p.s);
      const socks = socksClient(gw, '127.0.0.1', dest.port);
      const socksFlow = await liveFlow(gw, (f) => f.protocol === 'socks5');
      await gw.drain(300);
      for (const r of [await c.reply, await g.reply, await p.reply]) {
        expect(r.text).toMatch(/^HTTP\/1\.1 503 /);
        expect(r.text).toContain('"reason":"shutdown"');
      }
      expect(await socks).toMatch(/rejected connection - Failure/);
      for (const f of [c.flow, g.flow, p.flow, socksFlow]) expect(gw.closed.filter((rec) => rec.id === f.id).map((rec) => rec.closeReason)).toEqual(['shutdown']);
      const peers = await dest.release();
      expect(peers.filter((p) => p !== '127.0.0.9')).toEqual([]);
    } finally {
      dest.close();
    }
  }, 30_000);
});

describe.concurrent('a detector or quarantine kill while a CONNECT dials (a late agent report)', () => {
  it('the scanner tool named during its dial: 403 an0081.scanner-tool at once; its next dialling CONNECT, named again: 403 quarantine; the destination never reached', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] }, limits: { connectTimeoutMs: 20_000 }, detection: { quarantineSec: 600 } });
    const dest = await hungDestination();
    try {
      const head = `CONNECT 127.0.0.1:${dest.port} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`;
      const answers: string[] = [];
      for (const expected of ['an0081.scanner-tool', 'quarantine']) {
        const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: AGENT_CLIENT });
        await once(s, 'connect');
        s.on('error', () => undefined);
        clients.push(s);
        const reply = replyOf(s, 3000);
        s.write(head);
        const port = s.localPort as number;
        const flow = await liveFlow(gw, (f) => f.client.port === port);
        await new Promise((r) => setTimeout(r, 100));
        // The agent names the dialling connection's process: nmap, of user alice.
        const report = { localIp: AGENT_CLIENT, localPort: port, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4242, name: 'nmap', user: 'alice', uid: 1000, loginuid: 1000 };
        const started = Date.now();
        expect((await reportProcesses(gw.adminUrl, 'ws', [report])).attributed).toBe(1);
        const r = await reply;
        expect(Date.now() - started).toBeLessThan(2000);
        expect(r.text).toMatch(/^HTTP\/1\.1 403 /);
        expect(r.text).toContain(`"reason":"${expected}"`);
        expect(r.text.toLowerCase()).toContain('x-egress-verdict: block');
        const records = gw.closed.filter((rec) => rec.id === flow.id);
        expect(records.map((rec) => [rec.closeReason, rec.verdict, rec.identity.process?.name])).toEqual([[expected, 'block', 'nmap']]);
        answers.push(expected);
      }
      expect(answers).toEqual(['an0081.scanner-tool', 'quarantine']);
      const peers = await dest.release();
      expect(peers.filter((p) => p !== '127.0.0.9')).toEqual([]);
    } finally {
      dest.close();
      await gw.stop();
    }
  }, 30_000);
});
