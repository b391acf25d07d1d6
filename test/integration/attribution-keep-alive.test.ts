/**
 * A process reported once for an HTTP client connection names every request it carries. The agent
 * reports a socket once; the gateway kept the process for the connection's next request only when
 * the earlier one was admitted (its identity cached), and never for a CONNECT after absolute-URI
 * requests. Reproduced in enforce mode: a proxyware process's first GET got 403 (an0081.proxyware);
 * its next GETs and a CONNECT on the same connection were allowed with process null.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { reportProcesses, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { startOrigin, type Origin } from './http-harness.ts';

let enforce: TestGateway;
let monitor: TestGateway;
let origin: Origin;

beforeAll(async () => {
  origin = await startOrigin(() => false);
  enforce = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] } });
  monitor = await startTestGateway({ identity: { agents: [testAgent] } });
});
afterAll(async () => {
  await enforce?.stop();
  await monitor?.stop();
  await origin?.close();
});

/** A client connection whose answers are collected, and the agent report naming its process. */
async function reportedClient(gw: TestGateway, name: string): Promise<{ s: Socket; port: number; answered: (n: number) => Promise<string[]> }> {
  const s = connect({ host: '127.0.0.1', port: gw.httpPort });
  s.on('error', () => undefined);
  await once(s, 'connect');
  const port = s.localPort as number;
  let text = '';
  s.on('data', (d: Buffer) => {
    text += d.toString('latin1');
  });
  // Before the first request: kept for the connection's first flow, as an agent's early report is.
  expect(
    await reportProcesses(gw.adminUrl, 'ws', [{ localIp: '127.0.0.1', localPort: port, remoteIp: '127.0.0.1', remotePort: gw.httpPort, pid: 4300, name, user: 'alice' }]),
  ).toMatchObject({ pending: 1 });
  const answers = (): string[] => [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1] ?? '');
  // The status lines of the first `n` answers (fewer if they do not come within 5 s).
  const answered = async (n: number): Promise<string[]> => {
    for (let i = 0; i < 500 && answers().length < n; i++) await new Promise((r) => setTimeout(r, 10));
    return answers();
  };
  return { s, port, answered };
}

const get = () => `GET http://127.0.0.1:${origin.port}/size/3 HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`;

async function nthRecord(gw: TestGateway, port: number, n: number): Promise<FlowRecord> {
  await gw.waitForClosed(() => gw.closed.filter((r) => r.client.port === port).length >= n);
  return gw.closed.filter((r) => r.client.port === port)[n - 1] as FlowRecord;
}

describe('one reported process for every request of a keep-alive connection', () => {
  it('enforce: the GETs after a refused one are refused too, and their records name the process', async () => {
    const { s, port, answered } = await reportedClient(enforce, 'honeygain');
    const records: FlowRecord[] = [];
    for (let i = 1; i <= 3; i++) {
      s.write(get());
      records.push(await nthRecord(enforce, port, i));
      await answered(i);
    }
    s.destroy();
    expect(records.map((r) => r.identity.process?.name ?? null)).toEqual(['honeygain', 'honeygain', 'honeygain']);
    expect(records.map((r) => r.verdict)).toEqual(['block', 'block', 'block']);
    expect(records[0]).toMatchObject({ reason: 'detector', closeReason: 'detector' });
    // The later ones meet the quarantine the first refusal put the process in.
    expect(records.slice(1).map((r) => r.reason)).toEqual(['quarantine', 'quarantine']);
    expect(records.every((r) => r.bytesOut === 0 && r.bytesIn === 0)).toBe(true);
    expect(await answered(3)).toEqual(['403', '403', '403']);
  });

  it('enforce: a CONNECT after a refused GET on the same connection is refused, naming the process', async () => {
    const { s, port, answered } = await reportedClient(enforce, 'honeygain');
    s.write(get());
    const first = await nthRecord(enforce, port, 1);
    await answered(1);
    s.write(`CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
    const tunnel = await nthRecord(enforce, port, 2);
    const statuses = await answered(2);
    s.destroy();
    expect(first).toMatchObject({ protocol: 'http', verdict: 'block' });
    expect(tunnel).toMatchObject({ protocol: 'connect', verdict: 'block', bytesOut: 0, bytesIn: 0 });
    expect(tunnel.identity.process).toMatchObject({ name: 'honeygain', pid: 4300, user: 'alice' });
    expect(statuses).toEqual(['403', '403']);
  });

  it('monitor: a CONNECT after an admitted GET carries its process and is recorded would-block', async () => {
    const { s, port, answered } = await reportedClient(monitor, 'honeygain');
    s.write(get());
    const first = await nthRecord(monitor, port, 1);
    await answered(1);
    s.write(`CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
    const statuses = await answered(2);
    s.destroy();
    const tunnel = await nthRecord(monitor, port, 2);
    expect(first).toMatchObject({ protocol: 'http', verdict: 'would-block', identity: { process: { name: 'honeygain' } } });
    // As enforce mode refuses it: the quarantine the GET's finding would have opened.
    expect(tunnel).toMatchObject({ protocol: 'connect', verdict: 'would-block', reason: 'quarantine', identity: { process: { name: 'honeygain', pid: 4300 } } });
    expect(statuses).toEqual(['200', '200']);
  });
});
