/**
 * A report left waiting for its flow (SPEC §7: reports race the connection; kept 30 s) is used only
 * if its agent still speaks for the address when the flow opens. Before, a reload that took the
 * address out of the agent's `sources` left the report waiting, and it named the flow that opened
 * next: a report of `honeygain` about a connected client of 127.0.0.1, the agent's sources moved
 * from 127.0.0.0/8 to 10.9.9.0/24, then the client's CONNECT: killed as an0081.proxyware (enforce),
 * on the word of an agent the running policy refuses (403) for that address.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { reportProcesses, type TcpOrigin, tcpOrigin, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { readUntil } from './http-harness.ts';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(): Promise<{ gw: TestGateway; origin: TcpOrigin }> {
  const origin = await tcpOrigin('127.0.0.1');
  cleanups.push(() => origin.close());
  const gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] } });
  cleanups.push(() => gw.stop());
  return { gw, origin };
}

/** A reload (as PUT /v1/policy and SIGHUP make) giving the test agent `sources`. */
function reloadAgentSources(gw: TestGateway, sources: string[]): void {
  const config = structuredClone(gw.policy.current().config) as { identity: { agents: unknown[] } };
  config.identity.agents = [{ ...testAgent, sources }];
  expect(gw.policy.reload(config, { author: 'test', source: 'api' }).ok).toBe(true);
}

/**
 * A client of 127.0.0.1 connected to the proxy (nothing sent: no flow yet), a report of `honeygain`
 * about it (pending), `between` run, then its CONNECT: the status line and the flow's process name.
 */
async function reportedThenConnect(gw: TestGateway, origin: TcpOrigin, between: () => void): Promise<{ status: string; process: string | null }> {
  const s: Socket = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: '127.0.0.1' });
  s.on('error', () => undefined);
  cleanups.push(() => void s.destroy());
  await once(s, 'connect');
  const localPort = s.localPort as number;
  const report = await reportProcesses(gw.adminUrl, 'ws', [
    { localIp: '127.0.0.1', localPort, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4242, name: 'honeygain' },
  ]);
  expect(report).toMatchObject({ accepted: 1, attributed: 0, pending: 1 });
  between();
  s.write(`CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
  const status = (await readUntil(s, '\r\n')).toString('latin1').split('\r\n')[0] ?? '';
  const rec = gw.flows.list({}).find((r) => r.client.port === localPort && r.protocol === 'connect');
  return { status, process: rec?.identity.process?.name ?? null };
}

describe('a report waiting for its flow across a reload', () => {
  it('names nothing once a reload took its address out of the agent’s sources', async () => {
    const { gw, origin } = await setup();
    const got = await reportedThenConnect(gw, origin, () => reloadAgentSources(gw, ['10.9.9.0/24']));
    expect(got).toEqual({ status: 'HTTP/1.1 200 Connection Established', process: null });
  });

  it('names nothing once a reload took its agent out of identity.agents', async () => {
    const { gw, origin } = await setup();
    const got = await reportedThenConnect(gw, origin, () => {
      const config = structuredClone(gw.policy.current().config) as { identity: { agents: unknown[] } };
      config.identity.agents = [];
      expect(gw.policy.reload(config, { author: 'test', source: 'api' }).ok).toBe(true);
    });
    expect(got).toEqual({ status: 'HTTP/1.1 200 Connection Established', process: null });
  });

  it('still names its flow after a reload that kept the address in the agent’s sources', async () => {
    const { gw, origin } = await setup();
    const got = await reportedThenConnect(gw, origin, () => reloadAgentSources(gw, ['127.0.0.1/32', '10.9.9.0/24']));
    // Refused at admission: the report came first and names a proxyware process (enforce).
    expect(got.status).toMatch(/^HTTP\/1\.1 403 /);
    expect(got.process).toBe('honeygain');
  });
});
