/**
 * A SOCKS5 UDP association none of whose destinations was relayed, some refused, still leaves its
 * one record (SPEC §5, docs/spec-notes.md "For `socks5-udp`, one record per association"): no
 * bytes, the destination it declared, the destinations refused and every datagram it dropped, beside
 * each refused destination's own record.
 *
 * Regression: end() wrote the record of an association without a flow only when no destination had
 * been refused, so one whose destinations were all refused left their refused records alone: its
 * drop counts (here a fragment and a malformed datagram) and its end were in no record. The same
 * for one that ended while its first destination was admitted and then refused: end() left the
 * record to the flow `admit` had opened, which became that destination's refusal.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import type { ProcessInfo } from '../../policy/types.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';

const DENIED = '127.0.0.66';
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

function recordsOf(gw: TestGateway, port: number): FlowRecord[] {
  return gw.closed.filter((r) => r.protocol === 'socks5-udp' && r.client.port === port);
}

/** The association's own record: the one not naming the refused address. */
function associationRecord(gw: TestGateway, port: number): Promise<FlowRecord> {
  return gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === port && r.destination.ip !== DENIED);
}

describe('an association whose destinations were all refused', () => {
  it('leaves its own record with its drop counts beside each refused destination\'s record', async () => {
    const gw = await startTestGateway({ deny: { cidrs: [`${DENIED}/32`] } });
    cleanups.push(() => gw.stop());
    const client = await udpSocket(cleanups);
    const port = client.address().port;
    const a = await associate(gw, client, cleanups);
    // Dropped on arrival: a fragment and a datagram too short for its header.
    await sendTo(client, udpFrame(DENIED, 9, Buffer.from('frag'), 1), a.relay);
    await sendTo(client, Buffer.from([0, 0, 0, 1, 127]), a.relay);
    for (const p of [9, 10]) {
      await sendTo(client, udpFrame(DENIED, p, Buffer.from('no')), a.relay);
      await gw.waitForClosed((r) => r.client.port === port && r.destination.ip === DENIED && r.destination.port === p);
    }
    a.control.end();
    const rec = await associationRecord(gw, port);
    expect([rec.closeReason, rec.verdict, rec.reason, rec.bytesOut, rec.bytesIn]).toEqual(['closed', 'allow', null, 0, 0]);
    expect(rec.destination).toEqual({ host: '0.0.0.0', ip: null, port });
    expect(rec.reasons).toContain('udp association: 0 destinations relayed, 2 refused');
    expect(rec.reasons.join('\n')).toMatch(/udp datagrams dropped: 1 fragments, 0 from foreign sources, 1 malformed, 2 to refused destinations,/);
    // One record per refused destination, one for the association.
    expect(recordsOf(gw, port).map((r) => [r.destination.port, r.closeReason])).toEqual([
      [9, 'deny-range'],
      [10, 'deny-range'],
      [port, 'closed'],
    ]);
  });

  it('ended while its first destination was admitted, then refused: the refusal\'s record and the association\'s', async () => {
    let answer: (p: ProcessInfo | null) => void = () => {};
    const held = new Promise<ProcessInfo | null>((resolve) => {
      answer = resolve;
    });
    // Local attribution the test holds: the first destination's admission waits on it, its flow open.
    const gw = await startTestGateway({ deny: { cidrs: [`${DENIED}/32`] }, identity: { localAttribution: true } }, { attributor: { attribute: () => held } });
    cleanups.push(() => gw.stop());
    cleanups.push(() => answer(null));
    const client = await udpSocket(cleanups);
    const port = client.address().port;
    const a = await associate(gw, client, cleanups);
    await sendTo(client, udpFrame('127.0.0.1', 9, Buffer.from('x'), 1), a.relay);
    await sendTo(client, udpFrame(DENIED, 9, Buffer.from('no')), a.relay);
    await until('the first destination to be admitted', () => [...gw.flows.activeFlows().values()].some((f) => f.protocol === 'socks5-udp' && f.client.port === port));
    a.control.destroy();
    // Ended (its relay closed) while the admission still waits.
    await until('the association to end', () => !gw.ctx.udpRelays.hasPort(a.relay.port));
    answer(null);
    const rec = await associationRecord(gw, port);
    expect([rec.closeReason, rec.verdict, rec.reason, rec.bytesOut]).toEqual(['closed', 'allow', null, 0]);
    expect(rec.reasons).toContain('udp association: 0 destinations relayed, 1 refused');
    expect(rec.reasons.join('\n')).toMatch(/udp datagrams dropped: 1 fragments,/);
    expect(recordsOf(gw, port).map((r) => r.closeReason)).toEqual(['deny-range', 'closed']);
  });
});
