/**
 * Monitor mode must count as failed attempts what enforce mode counts, no more. A name the
 * allowlist refuses is refused in enforce mode before any dial (403 not-allowlisted, not an attempt
 * at an address: no an0081.scan); monitor mode relays it as would-block, and when its dial fails
 * that failure is not an attempt enforce mode would have seen either. Names with a `resolver.hosts`
 * answer (no DNS) to closed loopback ports, one host's ports past failedPortsOnOneHost (15), through
 * the real HTTP listener with raw CONNECTs; control: the same failures of an allowed name are a scan
 * in both modes.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { refusingPorts } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const ATTEMPTS = 18;

let gw: TestGateway | null = null;
afterEach(async () => {
  await gw?.stop();
  gw = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({
    mode,
    roles: { any: { allow: [{ host: 'allowed.test' }] } },
    resolver: { hosts: { 'allowed.test': '127.0.0.1', 'refused.test': '127.0.0.1' } },
  });
}

/** A CONNECT to host:port through the gateway: its status and JSON reason. */
async function connectStatus(g: TestGateway, host: string, port: number): Promise<string> {
  const socket = connect({ host: g.httpHost, port: g.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`);
  let raw = '';
  socket.on('data', (d: Buffer) => {
    raw += d.toString('latin1');
  });
  await once(socket, 'close');
  return `${raw.split(' ')[1]} ${/"reason":"([^"]+)"/.exec(raw)?.[1] ?? ''}`;
}

/** ATTEMPTS CONNECTs to closed ports of `host`, then a few sweeps: the answers and the an0081.scan alerts. */
async function fanOut(g: TestGateway, host: string): Promise<{ answers: string[]; scan: string[] }> {
  const answers: string[] = [];
  for (const port of await refusingPorts('127.0.0.1', ATTEMPTS)) answers.push(await connectStatus(g, host, port));
  for (let i = 0; i < 5; i++) await once(g.flows, 'sweep');
  return { answers, scan: g.alerts.list({}).filter((a) => a.detector === 'an0081.scan').map((a) => a.action) };
}

describe('monitor and enforce count the same failed attempts', () => {
  it('enforce: a refused name fanned out over closed ports: 403 not-allowlisted, no an0081.scan', async () => {
    gw = await start('enforce');
    const { answers, scan } = await fanOut(gw, 'refused.test');
    expect(new Set(answers)).toEqual(new Set(['403 not-allowlisted']));
    expect(scan).toEqual([]);
  });

  it('monitor: the same fan-out is relayed (502 connection-refused, would-block) and raises no an0081.scan either', async () => {
    gw = await start('monitor');
    const { answers, scan } = await fanOut(gw, 'refused.test');
    expect(new Set(answers)).toEqual(new Set(['502 connection-refused']));
    expect(new Set(gw.closed.map((r) => `${r.verdict} ${r.reason}`))).toEqual(new Set(['would-block not-allowlisted']));
    expect(scan).toEqual([]);
  });

  it('control: an allowed name fanned out over closed ports is a scan in both modes', async () => {
    for (const mode of ['enforce', 'monitor'] as const) {
      gw = await start(mode);
      const { answers, scan } = await fanOut(gw, 'allowed.test');
      expect(answers.slice(0, 15)).toEqual(answers.slice(0, 15).map(() => '502 connection-refused'));
      expect(scan).toEqual([mode === 'enforce' ? 'block' : 'would-block']);
      await gw.stop();
      gw = null;
    }
  });
});
