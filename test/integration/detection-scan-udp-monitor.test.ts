/**
 * A UDP sweep of addresses policy refuses must raise the same an0081.scan in monitor mode as in
 * enforce mode, as a TCP sweep does (detection-scan-monitor-ip-literal.test.ts). One SOCKS5 UDP
 * association (the `socks` client) sends one datagram to each of 18 ports of 127.0.0.1, an IP literal
 * no allow entry admits (only `allowed.test` is allowlisted; past failedPortsOnOneHost, 15). Enforce
 * mode refuses each destination (its refused record: a failed attempt at that address, `denied`);
 * monitor mode relays them as would-block, and its detectors must count them as enforce's refusals,
 * not as destinations relayed to. Before, monitor counted each as a relayed destination (fan-out, a
 * `closed` leg at the association's end) and raised no an0081.scan where enforce raised a block.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import type { Mode } from '../../policy/types.ts';
import { waitForSweeps } from '../helpers/detection-live.ts';
import { type DeepPartial, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';

const ATTEMPTS = 18;
/** The scan enforce mode's refusals make: failed attempts at one host's ports. */
const KIND = 'port-scan';
const cleanups: Cleanups = [];
let gw: TestGateway | null = null;
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
  await gw?.stop();
  gw = null;
});

const overrides = (mode: Mode): DeepPartial<Config> => ({ mode, roles: { any: { allow: [{ host: 'allowed.test' }] } }, detection: { sampleIntervalMs: 50 } });

/** One datagram to each of ATTEMPTS ports of 127.0.0.1 in one association, closed at the end: the records and the an0081.scan alerts. */
async function udpSweep(mode: Mode): Promise<{ records: string[]; scan: string[] }> {
  gw = await startTestGateway(overrides(mode));
  const client = await udpSocket(cleanups);
  const a = await associate(gw, client, cleanups);
  for (let i = 1; i <= ATTEMPTS; i++) {
    await sendTo(client, udpFrame('127.0.0.1', 20_000 + i, Buffer.from(`probe ${i}`)), a.relay);
    await new Promise((r) => setTimeout(r, 5));
  }
  await waitForSweeps(gw.flows, 3);
  a.control.destroy();
  const g = gw;
  await g.waitForClosed((r) => r.protocol === 'socks5-udp' && r.verdict !== 'block');
  await waitForSweeps(g.flows, 5);
  const records = g.closed.filter((r) => r.protocol === 'socks5-udp').map((r) => `${r.verdict} ${r.reason}`);
  return { records, scan: g.alerts.list({}).filter((x) => x.detector === 'an0081.scan').map((x) => `${x.action} ${String(x.evidence['kind'])}`) };
}

describe('a UDP sweep of addresses policy refuses is the same an0081.scan in monitor and enforce mode', () => {
  it(`enforce: ${ATTEMPTS} destinations refused not-allowlisted, an0081.scan block`, async () => {
    gw = await startTestGateway(overrides('enforce'));
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    for (let i = 1; i <= ATTEMPTS; i++) await sendTo(client, udpFrame('127.0.0.1', 20_000 + i, Buffer.from(`probe ${i}`)), a.relay);
    await gw.waitForClosed((r) => r.destination.port === 20_000 + ATTEMPTS);
    await waitForSweeps(gw.flows, 5);
    const refused = gw.closed.filter((r) => r.protocol === 'socks5-udp' && r.closeReason === 'not-allowlisted');
    expect(refused).toHaveLength(ATTEMPTS);
    expect(gw.alerts.list({}).filter((x) => x.detector === 'an0081.scan').map((x) => `${x.action} ${String(x.evidence['kind'])}`)).toEqual([`block ${KIND}`]);
  });

  it(`monitor: the same ${ATTEMPTS} destinations are relayed would-block and raise an0081.scan would-block`, async () => {
    const { records, scan } = await udpSweep('monitor');
    expect(records).toEqual(['would-block not-allowlisted']);
    expect(scan).toEqual([`would-block ${KIND}`]);
  });
});
