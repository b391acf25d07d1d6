/**
 * A live flow's process, once named (an agent report, local attribution), is not replaced by a later
 * report naming another process: the first stands (SPEC §7; an agent reports a socket once) and the
 * disagreement is logged. Before, the second report replaced it silently: a tunnel named
 * `honeygain` (monitor mode, recorded would-block an0081.proxyware) was renamed `curl` by a second
 * report (200, attributed 1), and its record said curl.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { httpConnect, reportProcesses, type TcpOrigin, tcpOrigin, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
let origin: TcpOrigin;

beforeAll(async () => {
  origin = await tcpOrigin('127.0.0.1');
  gw = await startTestGateway({ mode: 'monitor', identity: { agents: [testAgent] } });
});
afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

it('a second report naming another process leaves the first in place, logged; the same process again is no conflict', async () => {
  const tunnel = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${origin.port}`, { localAddress: '127.0.0.1' });
  expect(tunnel.status).toBe(200);
  const localPort = tunnel.socket.localPort as number;
  const about = { localIp: '127.0.0.1', localPort, remoteIp: gw.httpHost, remotePort: gw.httpPort };
  const process = (): string | null => gw.flows.list({ state: 'active' }).find((r) => r.client.port === localPort)?.identity.process?.name ?? null;
  const conflictLogs = () => gw.logs.filter((l) => String(l.msg).includes('already has: kept the first'));
  try {
    expect(await reportProcesses(gw.adminUrl, 'ws', [{ ...about, pid: 4242, name: 'honeygain' }])).toMatchObject({ accepted: 1, attributed: 1, pending: 0 });
    expect(process()).toBe('honeygain');

    const second = await reportProcesses(gw.adminUrl, 'ws', [{ ...about, pid: 5151, name: 'curl' }]);
    expect(second).toMatchObject({ accepted: 1, attributed: 0, pending: 0 });
    expect(process()).toBe('honeygain');
    expect(conflictLogs()).toEqual([
      expect.objectContaining({ agent: testAgent.name, conflicts: 1, client: `127.0.0.1:${localPort}`, kept: { pid: 4242, name: 'honeygain', source: 'agent' }, reported: { pid: 5151, name: 'curl' } }),
    ]);

    // The same process reported again is the same attribution: counted, not a conflict.
    expect(await reportProcesses(gw.adminUrl, 'ws', [{ ...about, pid: 4242, name: 'honeygain' }])).toMatchObject({ accepted: 1, attributed: 1 });
    expect(conflictLogs()).toHaveLength(1);
  } finally {
    tunnel.socket.destroy();
  }
  const rec = await gw.waitForClosed((r) => r.client.port === localPort);
  expect(rec.identity.process?.name).toBe('honeygain');
  expect(rec).toMatchObject({ verdict: 'would-block', detector: 'an0081.proxyware' });
});
