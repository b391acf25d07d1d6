/**
 * A flow that ended before its dial was answered, for a reason that is not the destination's (here an
 * admin DELETE; a drain, a fatal error, the client leaving alike), says nothing about the destination:
 * `an0081.scan` must not count it as a failed attempt, nor quarantine the client for it. The dial is
 * held pending by a SOCKS5 parent that never answers; through the real HTTP listener in enforce mode,
 * with raw CONNECTs to one host's ports (past failedPortsOnOneHost, 15). A parent that says the
 * destination refused (0x05) is the control: the same CONNECTs are a scan.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type ParentProxy, startSocksParent } from '../helpers/parent-proxy.ts';

/** One host's ports: past an0081.scan's default failedPortsOnOneHost (15). */
const ATTEMPTS = 18;

let gw: TestGateway;
let parent: ParentProxy;

beforeAll(async () => {
  parent = await startSocksParent();
  gw = await startTestGateway({ mode: 'enforce', upstream: parent.url(), limits: { connectTimeoutMs: 10_000 } });
});

afterAll(async () => {
  await gw?.stop();
  await parent?.close();
});

/** A CONNECT to 127.0.0.1:port through the gateway from localAddress (one identity each), its socket open (the answer not awaited). */
async function connectPending(port: number, localAddress: string): Promise<Socket> {
  const socket = connect({ host: gw.httpHost, port: gw.httpPort, localAddress });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  return socket;
}

/** A CONNECT to 127.0.0.1:port through the gateway, answered: its status and JSON reason. */
async function connectStatus(port: number, localAddress: string): Promise<string> {
  const socket = await connectPending(port, localAddress);
  let raw = '';
  socket.on('data', (d: Buffer) => {
    raw += d.toString('latin1');
  });
  await once(socket, 'close');
  return `${raw.split(' ')[1]} ${/"reason":"([^"]+)"/.exec(raw)?.[1] ?? ''}`;
}

/** Wait for a few detector sweeps (sampleIntervalMs 100 in tests). */
async function sweeps(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await once(gw.flows, 'sweep');
}

/** The an0081.scan alerts naming flows of this client address. */
function scanAlerts(client: string): number {
  const ids = new Set(gw.closed.filter((r) => r.client.ip === client).map((r) => r.id));
  return gw.alerts.list({}).filter((a) => a.detector === 'an0081.scan' && a.flowIds.some((id) => ids.has(id))).length;
}

describe('flows the gateway ended during the dial are no failed attempts', () => {
  it(`${ATTEMPTS} CONNECTs an admin DELETE ends while the parent holds the dial: no an0081.scan, no quarantine`, async () => {
    parent.mode = { kind: 'silent' };
    const sockets: Socket[] = [];
    const ended: string[] = [];
    try {
      for (let i = 0; i < ATTEMPTS; i++) {
        const port = 22_000 + i;
        sockets.push(await connectPending(port, '127.0.0.3'));
        // The parent holds the dial, or the gateway refused the CONNECT at once (quarantine).
        const asked = (): boolean => parent.seen.some((x) => x.target === `127.0.0.1:${port}`);
        await until('the parent asked, or a refusal', () => asked() || gw.closed.some((r) => r.destination.port === port));
        const live = [...gw.flows.activeFlows().values()].find((f) => f.destination.port === port);
        if (live) {
          const res = await fetch(`${gw.adminUrl}/v1/flows/${live.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${gw.adminToken}` } });
          expect(res.status).toBeLessThan(300);
        }
        const rec = await gw.waitForClosed((r) => r.destination.port === port);
        ended.push(`${rec.closeReason} ${rec.destination.ip}`);
      }
      await sweeps();
    } finally {
      for (const s of sockets) s.destroy();
    }
    expect(ended).toEqual(Array.from({ length: ATTEMPTS }, () => 'admin 127.0.0.1'));
    expect(scanAlerts('127.0.0.3')).toBe(0);
    parent.mode = { kind: 'refuse', code: 0x05 };
    expect(await connectStatus(22_100, '127.0.0.3')).toBe('502 connection-refused');
  });

  it(`control: ${ATTEMPTS} CONNECTs the parent says were refused (0x05) are a scan, the client quarantined`, async () => {
    parent.mode = { kind: 'refuse', code: 0x05 };
    const answers: string[] = [];
    for (let i = 0; i < ATTEMPTS; i++) answers.push(await connectStatus(23_000 + i, '127.0.0.4'));
    expect(new Set(answers.slice(0, 15))).toEqual(new Set(['502 connection-refused']));
    await sweeps();
    expect(scanAlerts('127.0.0.4')).toBeGreaterThan(0);
    expect(await connectStatus(23_100, '127.0.0.4')).toBe('403 quarantine');
  });
});
