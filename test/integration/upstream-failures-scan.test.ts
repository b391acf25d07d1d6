/**
 * A parent proxy's own failure says nothing about the client's destinations. Through a parent that
 * is down, every CONNECT of a busy client fails `upstream-proxy`; those failures must not read as a
 * port scan (an0081.scan: 25 failed destinations in 5 minutes) and get the client quarantined. A
 * parent's word about the destination (SOCKS5 0x05, connection refused) still counts, as a refused
 * direct dial does. Through the real HTTP listener in enforce mode, with raw CONNECTs.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startSocksParent } from '../helpers/parent-proxy.ts';
import { closedPort } from '../helpers/closed-port.ts';

/** One more than an0081.scan's default failedDestinations (25), past failedPortsOnOneHost (15) too. */
const ATTEMPTS = 26;

let downParent: TestGateway;
let refusingParent: TestGateway;
let socksParent: ParentProxy;

/** A CONNECT to 127.0.0.1:port through the gateway: its status and JSON reason. */
async function connectStatus(gw: TestGateway, port: number): Promise<string> {
  const socket = connect({ host: gw.httpHost, port: gw.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  let raw = '';
  socket.on('data', (d: Buffer) => {
    raw += d.toString('latin1');
  });
  await once(socket, 'close');
  const reason = /"reason":"([^"]+)"/.exec(raw)?.[1] ?? '';
  return `${raw.split(' ')[1]} ${reason}`;
}

/** Wait for a few detector sweeps (sampleIntervalMs 100 in tests). */
async function sweeps(gw: TestGateway, n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await once(gw.flows, 'sweep');
}

beforeAll(async () => {
  socksParent = await startSocksParent();
  downParent = await startTestGateway({ mode: 'enforce', upstream: `http://127.0.0.1:${await closedPort()}`, limits: { connectTimeoutMs: 1000 } });
  refusingParent = await startTestGateway({ mode: 'enforce', upstream: socksParent.url(), limits: { connectTimeoutMs: 1000 } });
});

afterAll(async () => {
  await downParent?.stop();
  await refusingParent?.stop();
  await socksParent?.close();
});

describe('failures through a parent proxy and the scan detector', () => {
  it(`${ATTEMPTS} CONNECTs to distinct ports through a parent that is down: each 502 upstream-proxy, no an0081.scan, no quarantine`, async () => {
    const answers: string[] = [];
    for (let i = 0; i < ATTEMPTS; i++) answers.push(await connectStatus(downParent, 20_000 + i));
    expect(new Set(answers)).toEqual(new Set(['502 upstream-proxy']));
    await sweeps(downParent);
    expect(downParent.alerts.list({}).map((a) => a.detector)).not.toContain('an0081.scan');
    expect(await connectStatus(downParent, 20_000 + ATTEMPTS)).toBe('502 upstream-proxy');
  });

  it(`${ATTEMPTS} CONNECTs the parent says the destination refused (SOCKS5 0x05) still count as a scan`, async () => {
    socksParent.mode = { kind: 'refuse', code: 0x05 };
    const answers: string[] = [];
    for (let i = 0; i < ATTEMPTS; i++) answers.push(await connectStatus(refusingParent, 20_000 + i));
    // One host's ports: from the 15th failure (failedPortsOnOneHost) a sweep may quarantine the
    // client before the next CONNECT is asked.
    expect(new Set(answers.slice(0, 15))).toEqual(new Set(['502 connection-refused']));
    await sweeps(refusingParent);
    const scan = refusingParent.alerts.list({}).find((a) => a.detector === 'an0081.scan');
    expect(scan).toMatchObject({ action: 'block', enforced: true });
    expect(await connectStatus(refusingParent, 20_000 + ATTEMPTS)).toBe('403 quarantine');
  });
});
