/**
 * A SOCKS5 UDP association ended by a kill (admin DELETE, a detector, the drain's end) keeps its
 * counts in its one record, as one ended by its client or its idle timeout does: the destinations it
 * relayed and had refused, and every datagram it dropped (SPEC §5, docs/spec-notes.md "For
 * `socks5-udp`, one record per association").
 *
 * Regression: FlowTable.kill closes the flow (writing its record) before the association's abort
 * runs, and the association added its counts only on its own way out, for a flow still active: a
 * killed association's record had its admission reason only, with nothing of the 1 destination
 * refused or the fragment dropped.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { associate, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho } from './socks5-harness.ts';

const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

const DENIED = '127.0.0.66';

/**
 * An association that relayed 3 bytes to an echo (8 back), had DENIED refused (deny-range, its own
 * record) and dropped one fragment: the association's live flow, once all of that has happened.
 */
async function busyAssociation(gw: TestGateway): Promise<{ id: string; echoPort: number }> {
  const echo = await startUdpEcho('udp4');
  cleanups.push(() => echo.close());
  const client = await udpSocket(cleanups);
  const a = await associate(gw, client, cleanups);
  const reply = nextReply(client);
  await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('abc')), a.relay);
  expect((await reply).data.toString()).toBe('echo:abc');
  await sendTo(client, udpFrame(DENIED, echo.port, Buffer.from('no')), a.relay);
  await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.ip === DENIED);
  // The fragment is dropped on arrival; the echo's reply to the next datagram comes after it.
  await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('x'), 1), a.relay);
  const second = nextReply(client);
  await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('de')), a.relay);
  expect((await second).data.toString()).toBe('echo:de');
  const live = [...gw.flows.activeFlows().values()].find((f) => f.protocol === 'socks5-udp' && f.client.port === client.address().port);
  expect(live).toBeDefined();
  return { id: (live as { id: string }).id, echoPort: echo.port };
}

function expectCounts(rec: FlowRecord): void {
  expect(rec.bytesOut).toBe(5);
  expect(rec.bytesIn).toBe(15);
  expect(rec.reasons).toContain('udp association: 1 destination relayed, 1 refused');
  expect(rec.reasons.join('\n')).toMatch(/udp datagrams dropped: 1 fragments, 0 from foreign sources, 0 malformed, 1 to refused destinations,/);
}

describe('a killed SOCKS5 UDP association keeps its counts in its record', () => {
  it('admin DELETE /v1/flows/{id}: the answer and the record count the destinations and the drops', async () => {
    const gw = await startTestGateway({ deny: { cidrs: [`${DENIED}/32`] } });
    cleanups.push(() => gw.stop());
    const { id } = await busyAssociation(gw);
    const res = await fetch(`${gw.adminUrl}/v1/flows/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${gw.adminToken}` } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { killed: boolean; flow: FlowRecord };
    expect(body.killed).toBe(true);
    expect(body.flow.closeReason).toBe('admin');
    expectCounts(body.flow);
    const rec = await gw.waitForClosed((r) => r.id === id);
    expect(rec.closeReason).toBe('admin');
    expectCounts(rec);
  });

  it("the drain's end: the record closed `shutdown` counts them too", async () => {
    const gw = await startTestGateway({ deny: { cidrs: [`${DENIED}/32`] } });
    cleanups.push(() => gw.stop());
    const { id } = await busyAssociation(gw);
    await gw.drain(0);
    const rec = await gw.waitForClosed((r) => r.id === id);
    expect(rec.closeReason).toBe('shutdown');
    expectCounts(rec);
  });
});
