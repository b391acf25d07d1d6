/**
 * An agent reports for its own host (SPEC §7). A token in identity.agents speaks for its `sources`
 * (wherever it reports from: behind NAT, or a k8s node's agent, the request's source is not the
 * clients'); an agent-scope token in admin.tokens, bound to no sources, spoke for any client: its
 * holder could name the process of another host's flow. It now speaks only for the address it
 * reports from; a report about another is refused (403) and audited.
 *
 * The sources that bind a reporter were looked up by its name, and names are unique within
 * admin.tokens and within identity.agents, not across them: an agent-scope admin.tokens entry named
 * as an identity.agents one took that agent's sources. Reproduced: such a token, reporting from
 * 127.0.0.82, named a proxyware process for a tunnel from the agent's source 127.0.0.81 (200,
 * attributed 1; enforce would kill it) and was refused (403) for its own address's tunnel.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { readUntil } from './http-harness.ts';

const LOOSE_TOKEN = 'agent-scope-admin-token-0123456789';
const BOUND_TOKEN = 'bound-agent-token-0123456789';
/** An agent-scope admin.tokens entry bearing the identity.agents entry's name. */
const NAMESAKE_TOKEN = 'namesake-agent-token-0123456789';
// Loopback addresses of their own: the victim host's client and the agent's host.
const VICTIM = '127.0.0.81';
const AGENT_HOST = '127.0.0.82';
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
  gw = await startTestGateway({
    admin: {
      tokens: [
        { name: 'loose', token: LOOSE_TOKEN, scope: 'agent' },
        { name: 'bound', token: NAMESAKE_TOKEN, scope: 'agent' },
      ],
    },
    identity: { agents: [{ name: 'bound', token: BOUND_TOKEN, sources: [`${VICTIM}/32`] }] },
  });
});
afterAll(async () => {
  for (const s of held) s.destroy();
  await gw?.stop();
  holder?.close();
});

/** A CONNECT tunnel through the gateway, held open, from `localAddress`; its client port. */
async function tunnel(localAddress: string): Promise<{ s: Socket; port: number }> {
  const s = connect({ host: '127.0.0.1', port: gw.httpPort, localAddress });
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(`CONNECT 127.0.0.1:${(holder.address() as { port: number }).port} HTTP/1.1\r\n\r\n`);
  expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  return { s, port: s.localPort as number };
}

/** POST one report from `from` with `token` about `localIp:localPort`. */
async function report(from: string, token: string, localIp: string, localPort: number, name: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const dispatcher = new Agent({ localAddress: from });
  try {
    const res = await request(`${gw.adminUrl}/v1/agents/reports`, {
      method: 'POST',
      dispatcher,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        host: 'ws',
        reports: [{ proto: 'tcp', localIp, localPort, remoteIp: '127.0.0.1', remotePort: gw.httpPort, pid: 4242, ppid: null, name, exe: null, cmdline: null, user: null, uid: null, loginuid: null, parentName: null, parentExe: null, startedAt: null }],
      }),
    });
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
  } finally {
    await dispatcher.close();
  }
}

const liveProcess = (port: number): string | null => gw.flows.list({ state: 'active' }).find((r) => r.client.port === port)?.identity.process?.name ?? null;

describe('agent reports: whose flows an agent may name', () => {
  it('an agent-scope token bound to no sources names only flows from the address it reports from', async () => {
    const victim = await tunnel(VICTIM);
    const own = await tunnel(AGENT_HOST);
    const forged = await report(AGENT_HOST, LOOSE_TOKEN, VICTIM, victim.port, 'forged-name');
    expect(forged.status).toBe(403);
    expect(forged.body).toMatchObject({ error: 'forbidden', details: { refused: [{ index: 0, localIp: VICTIM }] } });
    expect(liveProcess(victim.port)).toBeNull();
    const audit = JSON.parse((await adminGet(gw, '/v1/audit')).text) as { entries: Array<Record<string, unknown>> };
    expect(audit.entries.at(-1)).toMatchObject({ actor: 'loose', scope: 'agent', route: '/v1/agents/reports', sourceIp: AGENT_HOST, status: 403 });
    expect(String(audit.entries.at(-1)?.detail)).toContain(VICTIM);

    const taken = await report(AGENT_HOST, LOOSE_TOKEN, AGENT_HOST, own.port, 'curl');
    expect(taken).toMatchObject({ status: 200, body: { accepted: 1, attributed: 1 } });
    expect(liveProcess(own.port)).toBe('curl');
    victim.s.destroy();
    own.s.destroy();
  });

  it('a token in identity.agents speaks for its sources wherever it reports from, and for nothing else', async () => {
    const victim = await tunnel(VICTIM);
    const other = await tunnel(AGENT_HOST);
    // From another address (NAT, a node's agent): its sources count, not its own address.
    expect(await report(AGENT_HOST, BOUND_TOKEN, VICTIM, victim.port, 'wget')).toMatchObject({ status: 200, body: { attributed: 1 } });
    expect(liveProcess(victim.port)).toBe('wget');
    expect((await report(AGENT_HOST, BOUND_TOKEN, AGENT_HOST, other.port, 'wget')).status).toBe(403);
    expect(liveProcess(other.port)).toBeNull();
    victim.s.destroy();
    other.s.destroy();
  });

  it("an admin.tokens agent named as an identity.agents one is bound to its own address, not to that agent's sources", async () => {
    const victim = await tunnel(VICTIM);
    const own = await tunnel(AGENT_HOST);
    const forged = await report(AGENT_HOST, NAMESAKE_TOKEN, VICTIM, victim.port, 'honeygain');
    expect(forged.status).toBe(403);
    expect(forged.body).toMatchObject({ error: 'forbidden', details: { refused: [{ index: 0, localIp: VICTIM }] } });
    expect(liveProcess(victim.port)).toBeNull();
    const audit = JSON.parse((await adminGet(gw, '/v1/audit')).text) as { entries: Array<Record<string, unknown>> };
    const refusal = audit.entries.find((e) => e['actor'] === 'bound');
    expect(refusal).toMatchObject({ scope: 'agent', route: '/v1/agents/reports', sourceIp: AGENT_HOST, status: 403 });
    expect(String(refusal?.['detail'])).toContain(`not its own address ${AGENT_HOST}`);

    expect(await report(AGENT_HOST, NAMESAKE_TOKEN, AGENT_HOST, own.port, 'curl')).toMatchObject({ status: 200, body: { attributed: 1 } });
    expect(liveProcess(own.port)).toBe('curl');
    victim.s.destroy();
    own.s.destroy();
  });
});
