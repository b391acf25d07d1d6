/**
 * An agent bound to IPv6 sources (`identity.agents[].sources: ["::/0"]`) speaks for IPv6 clients
 * only: a flow from an IPv4 client that no agent attributed is not `unattributed`. The detection
 * sweep checked the client against one node BlockList holding every agent's sources, and BlockList
 * matches an IPv4 address against IPv6 rules (as `::ffff:a.b.c.d`): 10 s after it opened, every
 * IPv4 client's flow was marked `unattributed: true` and logged "flow from a host with an agent was
 * never attributed", though the report check (control-port.ts) refuses that agent's reports for
 * IPv4 addresses (403): no agent could ever attribute them.
 *
 * Real listeners: the HTTP listener on `[::]` (an IPv4 client arrives as `::ffff:127.0.0.1`, recorded
 * `127.0.0.1`), CONNECT tunnels from 127.0.0.1 and ::1 to a holding origin, both kept open past the
 * agent grace (10 s); the IPv6 one is the control (it is marked).
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { rawConnect, readUntil } from './http-harness.ts';

const hasIpv6 = skipNotice(await ipv6LoopbackAvailable(), 'agent-sources-family-unattributed', 'needs IPv6 loopback (::1)');

let gw: TestGateway | null = null;
let origin: Server | null = null;
const held = new Set<Socket>();

beforeAll(async () => {
  if (!hasIpv6) return;
  // Holds every connection open, answering nothing: the tunnels stay live until the test ends them.
  origin = createServer((s) => {
    held.add(s);
    s.on('error', () => undefined);
    s.on('close', () => held.delete(s));
  });
  origin.listen(0, '::');
  await once(origin, 'listening');
  gw = await startTestGateway({
    listen: { http: '[::]:0' },
    identity: { agents: [{ name: 'v6-hosts', token: 'agent-sources-family-token-0123', sources: ['::/0'] }] },
  });
});

afterAll(async () => {
  await gw?.stop();
  for (const s of held) s.destroy();
  if (origin) await new Promise<void>((r) => origin?.close(() => r()));
});

async function tunnel(clientHost: string, originHost: string): Promise<Socket> {
  const port = ((origin as Server).address() as { port: number }).port;
  const s = await rawConnect((gw as TestGateway).httpPort, clientHost);
  s.on('error', () => undefined);
  s.write(`CONNECT ${originHost}:${port} HTTP/1.1\r\nHost: ${originHost}:${port}\r\n\r\n`);
  expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  return s;
}

describe.runIf(hasIpv6)('an agent bound to IPv6 sources', () => {
  it("does not mark an IPv4 client's flow unattributed past the grace; an IPv6 client's is", async () => {
    const g = gw as TestGateway;
    // The IPv4 one first: when the IPv6 one has passed the grace, so has it.
    const v4 = await tunnel('127.0.0.1', '127.0.0.1');
    const v6 = await tunnel('::1', '[::1]');
    const live = (ip: string) => g.flows.list({ state: 'active' }).find((r) => r.client.ip === ip && r.protocol === 'connect');
    expect(live('127.0.0.1')).toBeDefined();
    await until('the IPv6 client flow to be marked unattributed', () => live('::1')?.unattributed === true, 20_000);
    expect(live('127.0.0.1')?.unattributed).toBeUndefined();
    v4.destroy();
    v6.destroy();
    const v4Record = await g.waitForClosed((r) => r.client.ip === '127.0.0.1' && r.protocol === 'connect');
    const v6Record = await g.waitForClosed((r) => r.client.ip === '::1' && r.protocol === 'connect');
    expect(v4Record.unattributed).toBeUndefined();
    expect(v6Record.unattributed).toBe(true);
    expect(g.logs.filter((l) => l.msg === 'flow from a host with an agent was never attributed').map((l) => l['client'])).toEqual(['::1']);
  }, 40_000);
});
