/**
 * A runtime mode switch (`PUT /v1/mode`, a policy reload) through the real listeners: connections
 * from then on are judged in the new mode (docs/spec-notes.md, Modes). The same scenario runs from
 * enforce to monitor and from monitor to enforce, and the answers are compared.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const cleanups: Cleanups = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function echo(): Promise<UdpEcho> {
  const e = await startUdpEcho('udp4');
  cleanups.push(() => e.close());
  return e;
}

async function putMode(gw: TestGateway, mode: Mode): Promise<void> {
  const res = await fetch(`${gw.adminUrl}/v1/mode`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ mode }),
  });
  expect(res.status).toBe(200);
}

describe('a SOCKS5 UDP association across a mode switch', () => {
  /**
   * One association: a datagram to an allowed echo (opens the flow), one to an echo no allow entry
   * admits, the switch, then the same not-allowlisted destination again. Returns what that echo
   * received before and after the switch, and the records.
   */
  async function run(from: Mode, to: Mode): Promise<{ before: string[]; after: string[]; gw: TestGateway; other: UdpEcho }> {
    const allowed = await echo();
    const other = await echo();
    const gw = await startTestGateway({ mode: from, roles: { any: { allow: [{ cidr: '127.0.0.1/32', ports: [allowed.port] }] } } });
    cleanups.push(() => gw.stop());
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    await sendTo(client, udpFrame('127.0.0.1', allowed.port, Buffer.from('first')), a.relay);
    await until('the allowed echo', () => allowed.received.length === 1);
    await sendTo(client, udpFrame('127.0.0.1', other.port, Buffer.from('before')), a.relay);
    // Admission of the second destination: refused (a record) or relayed (the echo has it).
    await until('the second destination judged', () => other.received.length === 1 || gw.closed.some((r) => r.destination.port === other.port));
    const before = other.received.map((r) => r.data.toString());
    await putMode(gw, to);
    // A few datagrams, as a client retrying would send (the first after the switch is judged again).
    for (let i = 0; i < 3; i++) {
      await sendTo(client, udpFrame('127.0.0.1', other.port, Buffer.from(`after${i}`)), a.relay);
      await sleep(50);
    }
    if (to === 'monitor') await until('the datagrams after the switch', () => other.received.length >= before.length + 3);
    else await sleep(200);
    const after = other.received.map((r) => r.data.toString()).slice(before.length);
    a.control.destroy();
    await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === allowed.port);
    return { before, after, gw, other };
  }

  it('enforce → monitor: the destination refused before the switch is relayed after it (the emergency brake), recorded would-block', async () => {
    const { before, after, gw, other } = await run('enforce', 'monitor');
    expect(before).toEqual([]);
    expect(after).toEqual(['after0', 'after1', 'after2']);
    const refused = gw.closed.filter((r) => r.destination.port === other.port);
    expect(refused.map((r) => [r.verdict, r.enforced, r.reason])).toEqual([['block', true, 'not-allowlisted']]);
    const association = gw.closed.find((r) => r.protocol === 'socks5-udp' && r.destination.port !== other.port);
    expect(association).toMatchObject({ verdict: 'would-block', enforced: false, reason: 'not-allowlisted', detector: 'policy.deny' });
    expect(association?.reasons.join('\n')).toContain('2 destinations relayed, 1 refused');
  });

  it('monitor → enforce: the destination relayed before the switch goes on, as an open TCP flow does', async () => {
    const { before, after, gw } = await run('monitor', 'enforce');
    expect(before).toEqual(['before']);
    expect(after).toEqual(['after0', 'after1', 'after2']);
    const association = gw.closed.find((r) => r.protocol === 'socks5-udp');
    expect(association).toMatchObject({ verdict: 'would-block', enforced: false, reason: 'not-allowlisted' });
  });

  it('a reload that allows a refused destination lets the same association reach it', async () => {
    const allowed = await echo();
    const other = await echo();
    const roles = (ports: number[]) => ({ any: { allow: [{ cidr: '127.0.0.1/32', ports }] } });
    const gw = await startTestGateway({ mode: 'enforce', roles: roles([allowed.port]) });
    cleanups.push(() => gw.stop());
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    await sendTo(client, udpFrame('127.0.0.1', allowed.port, Buffer.from('first')), a.relay);
    await until('the allowed echo', () => allowed.received.length === 1);
    await sendTo(client, udpFrame('127.0.0.1', other.port, Buffer.from('refused')), a.relay);
    await until('the refusal', () => gw.closed.some((r) => r.destination.port === other.port));
    const res = gw.policy.reload({ ...gw.policy.current().config, roles: roles([allowed.port, other.port]) }, { author: 'test' });
    expect(res.ok).toBe(true);
    await sendTo(client, udpFrame('127.0.0.1', other.port, Buffer.from('allowed now')), a.relay);
    await until('the destination after the reload', () => other.received.length === 1);
    expect(other.received.map((r) => r.data.toString())).toEqual(['allowed now']);
  });
});
