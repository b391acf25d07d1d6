/**
 * An agent report names its flow whatever textual form its address takes, and is checked against
 * the agent's sources in the form flows are known by. A dual-stack socket's IPv4 client reported as
 * `::ffff:127.0.0.1` (as a Windows or third-party agent may), or an IPv6 client written out in full,
 * was accepted (200) and joined no flow: the process never reached the record. And an agent bound
 * to IPv6 sources (`::/0`) spoke for IPv4 clients: node's BlockList matches an IPv4 address against
 * IPv6 rules as ::ffff:a.b.c.d, so its report for `127.0.0.1` was attributed (and for
 * `::ffff:127.0.0.1` accepted and kept) where it must be 403.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { readUntil } from './http-harness.ts';

const V6_TOKEN = 'v6-agent-token-0123456789abcdef';
let gw: TestGateway;
let holder: Server;
const held: Socket[] = [];

beforeAll(async () => {
  holder = createServer((s) => {
    s.on('error', () => undefined);
    held.push(s);
  });
  holder.listen(0, '127.0.0.1');
  await once(holder, 'listening');
  gw = await startTestGateway({ identity: { agents: [testAgent, { name: 'v6-agent', token: V6_TOKEN, sources: ['::/0'] }] } });
});
afterAll(async () => {
  for (const s of held) s.destroy();
  await gw?.stop();
  holder?.close();
});

/** A CONNECT tunnel through `g`, held open, from `localAddress`; its client port. */
async function tunnel(localAddress: string, g: TestGateway = gw): Promise<{ s: Socket; port: number }> {
  const s = connect({ host: localAddress, port: g.httpPort, localAddress });
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(`CONNECT 127.0.0.1:${(holder.address() as { port: number }).port} HTTP/1.1\r\n\r\n`);
  await readUntil(s, '\r\n\r\n');
  return { s, port: s.localPort as number };
}

const reportAs = async (token: string, localIp: string, localPort: number, name: string, g: TestGateway = gw): Promise<{ status: number; body: Record<string, unknown> }> => {
  const res = await fetch(`${g.adminUrl}/v1/agents/reports`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      host: 'ws',
      reports: [{ proto: 'tcp', localIp, localPort, remoteIp: '127.0.0.1', remotePort: g.httpPort, pid: 4400, ppid: null, name, exe: null, cmdline: null, user: null, uid: null, loginuid: null, parentName: null, parentExe: null, startedAt: null }],
    }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
};

const liveProcess = (port: number, g: TestGateway = gw): string | null => g.flows.list({ state: 'active' }).find((r) => r.client.port === port)?.identity.process?.name ?? null;

describe('a report names its flow in any textual form of its address', () => {
  it("an IPv4 client reported as IPv4-mapped IPv6 is attributed; an agent bound to IPv6 sources cannot speak for it in either form", async () => {
    const { s, port } = await tunnel('127.0.0.1');
    const v6 = await reportAs(V6_TOKEN, '::ffff:127.0.0.1', port, 'nmap');
    expect(v6.status).toBe(403);
    expect(v6.body).toMatchObject({ error: 'forbidden', details: { refused: [{ index: 0, localIp: '::ffff:127.0.0.1' }] } });
    const plain = await reportAs(V6_TOKEN, '127.0.0.1', port, 'nmap');
    expect(plain.status).toBe(403);
    expect(liveProcess(port)).toBeNull();
    expect((await reportAs(testAgent.token, '::FFFF:7F00:1', port, 'wget')).body).toMatchObject({ attributed: 1, pending: 0 });
    expect(liveProcess(port)).toBe('wget');
    s.destroy();
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec.identity.process).toMatchObject({ name: 'wget', pid: 4400 });
  });
});

const hasIpv6 = await ipv6LoopbackAvailable();
describe.skipIf(!skipNotice(hasIpv6, 'reports about an IPv6 client written out in full', 'needs IPv6 loopback'))('IPv6', () => {
  it('an IPv6 client reported in its full form is attributed', async () => {
    const v6gw = await startTestGateway({ listen: { http: '[::1]:0' }, identity: { agents: [{ name: 'v6-agent', token: V6_TOKEN, sources: ['::1/128'] }] } });
    try {
      const { s, port } = await tunnel('::1', v6gw);
      expect((await reportAs(V6_TOKEN, '0:0:0:0:0:0:0:1', port, 'curl', v6gw)).body).toMatchObject({ attributed: 1 });
      expect(liveProcess(port, v6gw)).toBe('curl');
      s.destroy();
      const rec = await v6gw.waitForClosed((r) => r.client.port === port);
      expect(rec).toMatchObject({ client: { ip: '::1' }, identity: { process: { name: 'curl' } } });
    } finally {
      await v6gw.stop();
    }
  });
});
