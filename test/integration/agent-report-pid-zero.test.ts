/**
 * An agent report naming pid 0 is refused as the other invalid fields are: 400 with the field's path.
 * pid 0 is never a user process (Linux: the scheduler; Windows: the Idle process, which owns only
 * closing sockets), so such a report names nobody. Before, it passed validation: a report of
 * pid 0 named `honeygain` about a live tunnel was answered 200 (attributed 1) and the gateway
 * (enforce) killed the tunnel as an0081.proxyware.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AGENT_TOKEN, httpConnect, type TcpOrigin, tcpOrigin, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
let origin: TcpOrigin;

beforeAll(async () => {
  origin = await tcpOrigin('127.0.0.1');
  gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] } });
});
afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

it('a report naming pid 0 is refused 400 at reports[0].pid and names no flow', async () => {
  const tunnel = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${origin.port}`, { localAddress: '127.0.0.1' });
  expect(tunnel.status).toBe(200);
  const localPort = tunnel.socket.localPort as number;
  try {
    const report = { proto: 'tcp', localIp: '127.0.0.1', localPort, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 0, ppid: null, name: 'honeygain' };
    const res = await fetch(`${gw.adminUrl}/v1/agents/reports`, {
      method: 'POST',
      headers: { authorization: `Bearer ${AGENT_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ host: 'ws', reports: [{ exe: null, cmdline: null, user: null, uid: null, loginuid: null, parentName: null, parentExe: null, startedAt: null, ...report }] }),
    });
    const body = (await res.json()) as { error?: string; details?: Array<{ path: string }> };
    expect(res.status).toBe(400);
    expect(body.error).toBe('bad-request');
    expect(body.details?.map((d) => d.path)).toEqual(['reports[0].pid']);
    const live = gw.flows.list({ state: 'active' }).find((r) => r.client.port === localPort);
    expect(live?.identity.process ?? null).toBeNull();
    expect(live?.verdict).toBe('allow');
  } finally {
    tunnel.socket.destroy();
  }
});
