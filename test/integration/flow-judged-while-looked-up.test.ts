/**
 * A flow whose name is still being looked up is not established: what changes meanwhile judges it.
 *
 *  - A reload (here PUT /v1/policy; SIGHUP and a rollback swap the policy the same way) or a mode
 *    switch (PUT /v1/mode) that no longer admits the name, in enforce mode: the CONNECT gets 403
 *    `not-allowlisted` and the SOCKS5 client `0x02` at once, before the name's answer comes; one
 *    record each; the late answer is not dialled. Before, admission went on under the policy it
 *    began with: 200 / `0x00` when the answer came (2.0 s later), both dialled, records `allow`.
 *  - A reload that still admits the name but no longer its address (loopback taken out of
 *    `allowRanges`): 403 `deny-range` when the answer comes, not dialled. Before: 200, dialled.
 *  - An agent report naming the flow's process (nmap) during the lookup, in enforce mode: 403
 *    `an0081.scanner-tool` at once, as during the dial. Before, 403 only once the answer came
 *    (2.3 s; the report came at 0.8 s).
 *
 * DNS answers late (test/helpers/late-dns.ts: `.slow.test` names get 127.0.0.1 after LOOKUP_MS);
 * the origin counts what reaches it.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { reportProcesses, testAgent } from '../helpers/detection-live.ts';
import { caseSockets } from '../helpers/dialling-cases.ts';
import { adminPut, type DeepPartial, runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type LateDns, startLateDns } from '../helpers/late-dns.ts';

/** How late names answer: long enough that an answer "at once" comes well before it on a loaded machine. */
const LOOKUP_MS = 2000;
/** The client the agent speaks for (no other case here uses it). */
const AGENT_CLIENT = '127.0.0.7';

let dns: LateDns;
let origin: Server;
let originPort = 0;
let connections = 0;

beforeAll(async () => {
  dns = await startLateDns(LOOKUP_MS);
  origin = createServer((s) => {
    connections++;
    s.destroy();
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
});
afterAll(() => {
  dns?.close();
  origin?.close();
});

/** A gateway whose lookups go to the late DNS server; stopped when the case ends. */
async function gateway(overrides: DeepPartial<Config>, onTestFinished: (fn: () => Promise<void>) => void): Promise<TestGateway> {
  const gw = await startTestGateway(overrides, { resolver: createDnsResolver({ timeoutMs: 5000, lookup: dns.lookup, slots: 16, perRequester: 16 }) });
  onTestFinished(() => gw.stop());
  return gw;
}

/** A raw CONNECT to `host` that is waiting for its answer, its flow open; `reply` is its first bytes. */
async function waitingConnect(gw: TestGateway, host: string, clients: Socket[], localAddress = '127.0.0.1'): Promise<{ s: Socket; reply: Promise<string> }> {
  const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress });
  await once(s, 'connect');
  clients.push(s);
  s.on('error', () => undefined);
  const reply = new Promise<string>((resolve) => {
    let text = '';
    s.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (text.includes('\r\n\r\n') && (text.startsWith('HTTP/1.1 200') || text.endsWith('}'))) resolve(text);
    });
    s.once('close', () => resolve(text));
  });
  s.write(`CONNECT ${host}:${originPort} HTTP/1.1\r\nHost: ${host}:${originPort}\r\n\r\n`);
  const port = s.localPort;
  await until('its flow', () => [...gw.flows.activeFlows().values()].some((f) => f.client.port === port));
  return { s, reply };
}

function socksConnect(gw: TestGateway, host: string): Promise<string> {
  return SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host, port: originPort }, timeout: 10_000 }).then(
    (c) => {
      c.socket.destroy();
      return 'connected';
    },
    (err: Error) => err.message,
  );
}

/** The records of the flows to `host`, as [verdict, reason, closeReason]. */
function recordsTo(gw: TestGateway, host: string): string[][] {
  return gw.closed.filter((r) => r.destination.host === host).map((r) => [r.verdict, r.reason ?? '', r.closeReason ?? '']);
}

const SLOW_NAMES = { any: { allow: [{ host: '*.slow.test' }] } };
const UNRELATED = { any: { allow: [{ host: 'only.example.com' }] } };

describe.concurrent('a flow whose name is being looked up', () => {
  it('a reload that no longer admits the name (enforce): CONNECT 403 not-allowlisted and SOCKS5 0x02 before the answer; one record each; not dialled', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await gateway({ mode: 'enforce', roles: SLOW_NAMES }, onTestFinished);
    const c = await waitingConnect(gw, 'r1.slow.test', clients);
    const socks = socksConnect(gw, 'r2.slow.test');
    await until('both looked up', () => dns.asked.includes('r1.slow.test') && dns.asked.includes('r2.slow.test'));
    expect(await adminPut(gw, '/v1/policy', { ...(await runningConfig(gw)), roles: UNRELATED })).toBe(200);
    const text = await c.reply;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain('"reason":"not-allowlisted"');
    expect(text.toLowerCase()).toContain('x-egress-verdict: block');
    expect(await socks).toMatch(/NotAllowed/);
    // Answered while both names were still being looked up.
    expect(dns.answered.filter((n) => n === 'r1.slow.test' || n === 'r2.slow.test')).toEqual([]);
    await until('both answered', () => dns.answered.includes('r1.slow.test') && dns.answered.includes('r2.slow.test'), 10_000);
    await new Promise((r) => setTimeout(r, 300));
    for (const host of ['r1.slow.test', 'r2.slow.test']) expect(recordsTo(gw, host)).toEqual([['block', 'not-allowlisted', 'not-allowlisted']]);
    expect(gw.flows.activeCount).toBe(0);
  });

  it('a switch to enforce mode (PUT /v1/mode) with a policy that never admits the name: 403 not-allowlisted before the answer', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await gateway({ mode: 'monitor', roles: UNRELATED }, onTestFinished);
    const c = await waitingConnect(gw, 'm1.slow.test', clients);
    await until('looked up', () => dns.asked.includes('m1.slow.test'));
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    const text = await c.reply;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain('"reason":"not-allowlisted"');
    expect(dns.answered).not.toContain('m1.slow.test');
    expect(recordsTo(gw, 'm1.slow.test')).toEqual([['block', 'not-allowlisted', 'not-allowlisted']]);
  });

  it('a reload that admits the name but no longer its address: 403 deny-range when the answer comes; not dialled', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await gateway({ mode: 'enforce', roles: SLOW_NAMES }, onTestFinished);
    const c = await waitingConnect(gw, 'd1.slow.test', clients);
    await until('looked up', () => dns.asked.includes('d1.slow.test'));
    expect(await adminPut(gw, '/v1/policy', { ...(await runningConfig(gw)), allowRanges: [] })).toBe(200);
    const text = await c.reply;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain('"reason":"deny-range"');
    expect(recordsTo(gw, 'd1.slow.test')).toEqual([['block', 'deny-range', 'deny-range']]);
    expect(gw.closed.find((r) => r.destination.host === 'd1.slow.test')?.destination.ip).toBe('127.0.0.1');
  });

  it('an agent report naming its process (nmap), enforce mode: 403 an0081.scanner-tool before the answer; one record; not dialled', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await gateway({ mode: 'enforce', roles: SLOW_NAMES, identity: { agents: [testAgent] }, detection: { quarantineSec: 600 } }, onTestFinished);
    const c = await waitingConnect(gw, 'a1.slow.test', clients, AGENT_CLIENT);
    await until('looked up', () => dns.asked.includes('a1.slow.test'));
    const report = { localIp: AGENT_CLIENT, localPort: c.s.localPort as number, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4242, name: 'nmap', user: 'alice', uid: 1000, loginuid: 1000 };
    expect((await reportProcesses(gw.adminUrl, 'ws', [report])).attributed).toBe(1);
    const text = await c.reply;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain('"reason":"an0081.scanner-tool"');
    expect(dns.answered).not.toContain('a1.slow.test');
    await until('answered', () => dns.answered.includes('a1.slow.test'), 10_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(gw.closed.filter((r) => r.destination.host === 'a1.slow.test').map((r) => [r.verdict, r.reason, r.closeReason, r.identity.process?.name])).toEqual([
      ['block', 'detector', 'an0081.scanner-tool', 'nmap'],
    ]);
  });
});

describe('what reached the origin', () => {
  it('nothing: no late answer was dialled', ({ expect }) => {
    expect(connections).toBe(0);
  });
});
