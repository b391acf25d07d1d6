/**
 * A mode switch or a reload while flows are being dialled (admitted, their client not answered yet:
 * not established). A flow monitor mode admitted `would-block` whose connection is still being made
 * when `PUT /v1/mode {"mode":"enforce"}` comes is refused then, as a flow whose name is being looked
 * up is: its dial abandoned, its client answered 403 `not-allowlisted` with `X-Egress-Verdict: block`
 * / SOCKS `0x02`, one record, verdict block, enforced. Before, the dial went on and the client got
 * 200 / `0x00` and a tunnel to a destination enforce mode refuses, after the switch (reproduced:
 * switch 0.5 s into a dial, the destination answered at 1.0 s, 200, recorded would-block,
 * enforced false). On CONNECT, absolute-URI (the fast path and node:http's), Upgrade and SOCKS5. The
 * same for a reload that removes the allow entry of an allowed flow in enforce mode; and never the
 * other way round: a switch to monitor lets a dial go on.
 *
 * The destination whose connect hangs (test/helpers/hung-destination.ts): a listener that never
 * accepts, its one-slot accept queue filled from 127.0.0.9, so further SYNs are dropped (Linux).
 * Once freed it accepts for 3.5 s and names every peer: a dial left running connects then, from
 * 127.0.0.1.
 */
import { connect } from 'node:net';
import { SocksClient } from 'socks';
import { describe, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import type { Flow } from '../../gateway/flow/flow.ts';
import { adminPut, type DeepPartial, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { hungDestination } from '../helpers/hung-destination.ts';
import { caseSockets, replyOf } from '../helpers/dialling-cases.ts';

/** The live flows of the gateway once `n` of them are dialling (admitted, not connected). */
async function dialling(gw: TestGateway, n: number): Promise<Flow[]> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const flows = [...gw.flows.activeFlows().values()].filter((f) => f.dialling !== null && !f.isConnected);
    if (flows.length >= n) return flows;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`fewer than ${n} flows dialling`);
}

function socksConnect(gw: TestGateway, port: number): Promise<string> {
  return SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port }, timeout: 8000 }).then(
    (c) => {
      c.socket.destroy();
      return 'connected';
    },
    (err: Error) => err.message,
  );
}

/** Only 127.0.0.9 is allowed: the hung destination on 127.0.0.1 is not allowlisted. */
const NOT_ALLOWED: DeepPartial<Config> = { roles: { any: { allow: [{ cidr: '127.0.0.9/32' }] } }, limits: { connectTimeoutMs: 20_000 } };

describe.concurrent('a policy change while flows are being dialled', () => {
  it('PUT /v1/mode enforce: each would-block dial is refused at once (403 not-allowlisted, X-Egress-Verdict: block / SOCKS 0x02), one block record each, the destination never reached', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'monitor', ...NOT_ALLOWED });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const target = `127.0.0.1:${dest.port}`;
    const heads = [
      `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`,
      // The fast path's GET, node:http's POST (a body), and an Upgrade.
      `GET http://${target}/x HTTP/1.1\r\nHost: ${target}\r\n\r\n`,
      `POST http://${target}/x HTTP/1.1\r\nHost: ${target}\r\nContent-Length: 2\r\n\r\nhi`,
      `GET http://${target}/x HTTP/1.1\r\nHost: ${target}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    ];
    const replies: Array<Promise<string>> = [];
    for (const head of heads) {
      const s = connect(gw.httpPort, '127.0.0.1');
      s.on('error', () => undefined);
      clients.push(s);
      replies.push(replyOf(s, 6000));
      s.write(head);
    }
    const socks = socksConnect(gw, dest.port);
    const flows = await dialling(gw, heads.length + 1);
    for (const f of flows) expect(f.verdict).toBe('would-block');
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    for (const [i, text] of (await Promise.all(replies)).entries()) {
      expect(text, heads[i]).toMatch(/^HTTP\/1\.1 403 /);
      expect(text, heads[i]).toMatch(/\r\nX-Egress-Verdict: block\r\n/i);
      expect(text, heads[i]).toContain('"reason":"not-allowlisted"');
    }
    expect(await socks).toMatch(/NotAllowed/);
    for (const f of flows) {
      const records = gw.closed.filter((r) => r.id === f.id);
      expect(records.map((r) => [r.verdict, r.enforced, r.reason, r.closeReason])).toEqual([['block', true, 'not-allowlisted', 'not-allowlisted']]);
    }
    // The dials were abandoned: once the queue is free, nobody but the fillers connects.
    const peers = await dest.release();
    expect(peers.filter((p) => p !== '127.0.0.9')).toEqual([]);
    for (const f of flows) expect(gw.closed.filter((r) => r.id === f.id)).toHaveLength(1);
  }, 30_000);

  it('a reload removing the allow entry in enforce mode: the allowed CONNECT being dialled is refused 403 not-allowlisted', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'enforce', limits: { connectTimeoutMs: 20_000 } });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const s = connect(gw.httpPort, '127.0.0.1');
    s.on('error', () => undefined);
    clients.push(s);
    const reply = replyOf(s, 6000);
    s.write(`CONNECT 127.0.0.1:${dest.port} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`);
    const [flow] = await dialling(gw, 1);
    expect(flow?.verdict).toBe('allow');
    const res = gw.policy.reload({ ...gw.policy.current().config, roles: { any: { allow: [{ cidr: '127.0.0.9/32' }] } } }, { author: 'test' });
    expect(res.ok).toBe(true);
    const text = await reply;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain('"reason":"not-allowlisted"');
    expect(gw.closed.filter((r) => r.id === flow?.id).map((r) => [r.verdict, r.enforced, r.closeReason])).toEqual([['block', true, 'not-allowlisted']]);
    expect((await dest.release()).filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);

  it('never the other way round: PUT /v1/mode monitor lets a would-block dial go on; it connects once the destination answers', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'monitor', ...NOT_ALLOWED });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const s = connect(gw.httpPort, '127.0.0.1');
    s.on('error', () => undefined);
    clients.push(s);
    const reply = replyOf(s, 8000);
    s.write(`CONNECT 127.0.0.1:${dest.port} HTTP/1.1\r\nHost: 127.0.0.1:${dest.port}\r\n\r\n`);
    const [flow] = await dialling(gw, 1);
    expect(await adminPut(gw, '/v1/mode', { mode: 'monitor' })).toBe(200);
    const peers = dest.release();
    expect(await reply).toMatch(/^HTTP\/1\.1 200 /);
    expect((await peers).filter((p) => p !== '127.0.0.9')).toEqual(['127.0.0.1']);
    expect(gw.flows.activeFlows().get(flow?.id ?? '')?.verdict).toBe('would-block');
  }, 30_000);
});
