/**
 * A report left waiting for its flow names only a connection the gateway had taken when the report
 * arrived (give or take a 2 s grace): the agent makes a report while its socket lives, so a
 * connection accepted later is another socket from the same port. Before, a report that arrived just
 * after its flow ended was kept 30 s and named the next connection from that port. Reproduced
 * (enforce): a tunnel from 127.0.0.1:P ended, a report of `nmap` about 127.0.0.1:P arrived (pending 1),
 * and 3 s later another client's CONNECT from 127.0.0.1:P was refused 403 as an0081.scanner-tool,
 * recorded as nmap. The protocol carries nothing of the socket's own identity (startedAt is the
 * process's start), so the gateway's own times decide: when the report came, when the connection was
 * accepted.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { REPORT_BEFORE_CONNECTION_GRACE_MS } from '../../gateway/flow/flow-table.ts';
import { reportProcesses, type TcpOrigin, tcpOrigin, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { readUntil } from './http-harness.ts';

/** Past the grace, with a margin (the wait orders events; nothing here is timed). */
const PAST_GRACE_MS = REPORT_BEFORE_CONNECTION_GRACE_MS + 1_000;

let gw: TestGateway;
let closer: TcpOrigin;
let holder: TcpOrigin;
const sockets: Socket[] = [];

// A gateway per test: a refusal quarantines the identity it names.
beforeEach(async () => {
  gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] } });
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await gw?.stop();
});
beforeAll(async () => {
  // Ends the tunnel on its first bytes, so the gateway ends the client's side first and the
  // client's port is free again at once (no TIME_WAIT on the client's side).
  closer = await tcpOrigin('127.0.0.1', (s) => s.once('data', () => s.end('bye')));
  holder = await tcpOrigin('127.0.0.1');
});
afterAll(async () => {
  await closer?.close();
  await holder?.close();
});

async function connected(localPort = 0): Promise<Socket> {
  const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: '127.0.0.1', localPort });
  s.on('error', () => undefined);
  sockets.push(s);
  await once(s, 'connect');
  return s;
}

async function connectTo(s: Socket, port: number): Promise<string> {
  s.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  return (await readUntil(s, '\r\n')).toString('latin1').split('\r\n')[0] ?? '';
}

const nmapAt = (localPort: number) => [{ localIp: '127.0.0.1', localPort, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4242, name: 'nmap' }];

describe('a report waiting for its flow', () => {
  it('does not name a connection from the same port accepted after it arrived', { timeout: 20_000 }, async () => {
    const first = await connected();
    const port = first.localPort as number;
    expect(await connectTo(first, closer.port)).toBe('HTTP/1.1 200 Connection Established');
    first.write('hi');
    await once(first, 'close');
    await gw.waitForClosed((r) => r.client.port === port);
    // The agent saw the socket while it lived; its report comes after the flow ended.
    expect(await reportProcesses(gw.adminUrl, 'ws', nmapAt(port))).toMatchObject({ accepted: 1, attributed: 0, pending: 1 });
    await sleep(PAST_GRACE_MS);
    const next = await connected(port);
    expect(await connectTo(next, holder.port)).toBe('HTTP/1.1 200 Connection Established');
    const live = gw.flows.list({ state: 'active' }).find((r) => r.client.port === port);
    expect(live?.identity.process ?? null).toBeNull();
    next.destroy();
  });

  it('still names a connection accepted before it arrived, however late its request comes', { timeout: 20_000 }, async () => {
    const s = await connected();
    const port = s.localPort as number;
    expect(await reportProcesses(gw.adminUrl, 'ws', nmapAt(port))).toMatchObject({ pending: 1 });
    await sleep(PAST_GRACE_MS);
    expect(await connectTo(s, holder.port)).toMatch(/^HTTP\/1\.1 403 /);
    const rec = await gw.waitForClosed((r) => r.client.port === port);
    expect(rec).toMatchObject({ verdict: 'block', detector: 'an0081.scanner-tool' });
    expect(rec.identity.process?.name).toBe('nmap');
  });
});
