/**
 * SPEC §5 `communityId` for a flow ended while its dial was under way. A dial that was tried keeps
 * the hash (its SYN went out: Zeek logs the attempt), whatever ended it; only a flow refused before
 * any dial has none (docs/spec-notes.md, Records). Regression: a flow refused during its dial (a
 * switch to enforce mode refusing monitor mode's would-block: verdict block, never connected) was
 * recorded `communityId: null`, as if nothing had been sent, while a flow killed by an admin at the
 * same point of the same dial kept its hash.
 *
 * The destination whose connect hangs: test/helpers/hung-destination.ts.
 */
import { connect } from 'node:net';
import { describe, it } from 'vitest';
import { communityId } from '../../gateway/flow/community-id.ts';
import type { Flow } from '../../gateway/flow/flow.ts';
import { caseSockets, replyOf } from '../helpers/dialling-cases.ts';
import { adminPut, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { hungDestination } from '../helpers/hung-destination.ts';

/** The live flows once `n` of them are dialling (admitted, not connected). */
async function dialling(gw: TestGateway, n: number): Promise<Flow[]> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const flows = [...gw.flows.activeFlows().values()].filter((f) => f.dialling !== null && !f.isConnected);
    if (flows.length >= n) return flows;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`fewer than ${n} flows dialling`);
}

describe('a flow ended while it was dialled', () => {
  it('keeps its Community ID, refused by a mode switch as killed by an admin; one refused before its dial has none', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    // Only 127.0.0.9 is allowed: monitor mode dials the hung destination on 127.0.0.1 as would-block.
    const gw = await startTestGateway({ mode: 'monitor', roles: { any: { allow: [{ cidr: '127.0.0.9/32' }] } }, limits: { connectTimeoutMs: 20_000 } });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const target = `127.0.0.1:${dest.port}`;
    const replies: Array<Promise<string>> = [];
    for (let i = 0; i < 2; i++) {
      const s = connect(gw.httpPort, '127.0.0.1');
      s.on('error', () => undefined);
      clients.push(s);
      replies.push(replyOf(s, 6000));
      s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    }
    const [killed, refused] = (await dialling(gw, 2)) as [Flow, Flow];
    expect(gw.flows.kill(killed.id, 'admin')).toBe(true);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    for (const text of await Promise.all(replies)) expect(text).toMatch(/^HTTP\/1\.1 403 /);

    const hashOf = (f: Flow): string | null => communityId('tcp', f.client.ip, f.client.port, '127.0.0.1', dest.port);
    const recordOf = (f: Flow) => gw.closed.find((r) => r.id === f.id);
    expect(recordOf(killed)).toMatchObject({ verdict: 'would-block', closeReason: 'admin', connected: false, communityId: hashOf(killed) });
    expect(recordOf(refused)).toMatchObject({ verdict: 'block', closeReason: 'not-allowlisted', connected: false, communityId: hashOf(refused) });
    expect(hashOf(refused)).toMatch(/^1:/);

    // Enforce mode now refuses the same CONNECT before any dial: no packet went out, no hash.
    const s = connect(gw.httpPort, '127.0.0.1');
    s.on('error', () => undefined);
    clients.push(s);
    const reply = replyOf(s, 6000);
    s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    expect(await reply).toMatch(/^HTTP\/1\.1 403 /);
    const before = await gw.waitForClosed((r) => r.client.port === s.localPort);
    expect([before.verdict, before.connected, before.destination.ip, before.communityId]).toEqual(['block', false, '127.0.0.1', null]);
    // None of the dials went on: once the queue is free, nobody but its fillers connects.
    expect((await dest.release()).filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);
});
