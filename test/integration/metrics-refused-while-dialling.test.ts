/**
 * A flow refused while it is being dialled (a mode switch or a reload judges it again:
 * admission.ts refuseDialsAfterChange) is counted by gw_policy_decisions_total as its record says:
 * verdict block, its refusal's reason. Its client hears that refusal (403 / SOCKS 0x02); the verdict
 * it was admitted with never showed. Before, the counter kept the admission's verdict (would-block
 * in monitor mode, allow after a reload), so blocks in the records were missing from /metrics.
 * Sweeps run while the dials hang: a verdict is not final while its flow is dialled.
 *
 * The destination whose connect hangs: test/helpers/hung-destination.ts (Linux).
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { SocksClient } from 'socks';
import { describe, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { caseSockets, replyOf } from '../helpers/dialling-cases.ts';
import { adminGet, adminPut, type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { hungDestination } from '../helpers/hung-destination.ts';

/** Wait until `n` flows are being dialled (admitted, not connected), then two sweeps more. */
async function diallingThroughSweeps(gw: TestGateway, n: number): Promise<void> {
  const deadline = Date.now() + 5000;
  while ([...gw.flows.activeFlows().values()].filter((f) => f.dialling !== null && !f.isConnected).length < n) {
    if (Date.now() > deadline) throw new Error(`fewer than ${n} flows dialling`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await once(gw.flows, 'sweep');
  await once(gw.flows, 'sweep');
}

/** gw_policy_decisions_total's non-zero samples, as "verdict reason" → count. */
async function decisions(gw: TestGateway): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const line of (await adminGet(gw, '/metrics')).text.split('\n')) {
    const m = /^gw_policy_decisions_total\{verdict="([^"]*)",reason="([^"]*)"\} (\S+)$/.exec(line);
    if (m !== null && Number(m[3]) !== 0) out[`${m[1]} ${m[2]}`] = Number(m[3]);
  }
  return out;
}

function tally(recs: readonly FlowRecord[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of recs) out[`${r.verdict} ${r.reason}`] = (out[`${r.verdict} ${r.reason}`] ?? 0) + 1;
  return out;
}

describe.concurrent('a flow refused while it is dialled is counted as its record says', () => {
  it('PUT /v1/mode enforce during would-block dials (CONNECT, absolute-URI, SOCKS5): gw_policy_decisions_total counts block not-allowlisted, as the records', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'monitor', roles: { any: { allow: [{ cidr: '127.0.0.9/32' }] } }, limits: { connectTimeoutMs: 20_000 }, detection: { sampleIntervalMs: 50 } });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const target = `127.0.0.1:${dest.port}`;
    const replies: Array<Promise<string>> = [];
    for (const head of [`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`, `GET http://${target}/x HTTP/1.1\r\nHost: ${target}\r\n\r\n`]) {
      const s = connect(gw.httpPort, '127.0.0.1');
      s.on('error', () => undefined);
      clients.push(s);
      replies.push(replyOf(s, 6000));
      s.write(head);
    }
    const socks = SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: dest.port }, timeout: 8000 }).then(
      (c) => {
        c.socket.destroy();
        return 'connected';
      },
      (err: Error) => err.message,
    );
    await diallingThroughSweeps(gw, 3);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    for (const text of await Promise.all(replies)) expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(await socks).toMatch(/NotAllowed/);
    expect(tally(gw.closed)).toEqual({ 'block not-allowlisted': 3 });
    expect(gw.flows.activeCount).toBe(0);
    expect(await decisions(gw)).toEqual(tally(gw.closed));
    await dest.release();
  }, 30_000);

  it('a reload removing the allow entry of an allowed CONNECT being dialled: counted block not-allowlisted, as its record', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'enforce', limits: { connectTimeoutMs: 20_000 }, detection: { sampleIntervalMs: 50 } });
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
    await diallingThroughSweeps(gw, 1);
    expect(gw.policy.reload({ ...gw.policy.current().config, roles: { any: { allow: [{ cidr: '127.0.0.9/32' }] } } }, { author: 'test' }).ok).toBe(true);
    expect(await reply).toMatch(/^HTTP\/1\.1 403 /);
    expect(tally(gw.closed)).toEqual({ 'block not-allowlisted': 1 });
    expect(await decisions(gw)).toEqual(tally(gw.closed));
    await dest.release();
  }, 30_000);
});
