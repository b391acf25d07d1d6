/**
 * A switch to enforce mode while a flow monitor mode let through `would-block` by admission's step 8
 * (a quarantine, a connect-time detector) is still being dialled: the flow meets step 8 as enforce
 * mode runs it. Before, only the policy's verdict was judged again and such a dial went on: a
 * CONNECT to a proxyware name (an0081.proxyware) switched 0.5 s into its dial was answered 200 once
 * the destination answered, recorded would-block, enforced false; the same for a CONNECT of an
 * identity under an enforced quarantine.
 *
 *  - A connect-time detector: 403 with its name, `X-Egress-Verdict: block` / SOCKS `0x02`, one
 *    record (block, detector, enforced), a `block` alert, and the identity quarantined (enforced),
 *    as at admission.
 *  - An enforced quarantine (opened in enforce mode, then switched to monitor): 403 `quarantine`.
 *  - Monitor mode's would-be quarantine refuses nothing after the switch (spec-notes): that dial
 *    goes on and connects once the destination answers.
 *
 * The destination whose connect hangs: test/helpers/hung-destination.ts (Linux).
 */
import { connect, type Socket } from 'node:net';
import { SocksClient } from 'socks';
import { describe, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import type { Flow } from '../../gateway/flow/flow.ts';
import { closedPort } from '../helpers/closed-port.ts';
import { caseSockets, replyOf } from '../helpers/dialling-cases.ts';
import { adminGet, adminPut, type DeepPartial, runningConfig, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { hungDestination } from '../helpers/hung-destination.ts';

/** A raw CONNECT to `target`, its reply (up to `ms`). */
function rawConnect(gw: TestGateway, target: string, clients: Socket[], ms: number): Promise<string> {
  const s = connect(gw.httpPort, '127.0.0.1');
  s.on('error', () => undefined);
  clients.push(s);
  const reply = replyOf(s, ms);
  s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  return reply;
}

/** The one live flow being dialled (admitted, not connected) to `port`. */
async function dialling(gw: TestGateway, port: number): Promise<Flow> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const flow = [...gw.flows.activeFlows().values()].find((f) => f.destination.port === port && f.dialling !== null && !f.isConnected);
    if (flow !== undefined) return flow;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no flow dialling port ${port}`);
}

/** Loopback allowed; the proxyware provider's name answers 127.0.0.1 (resolver.hosts). */
const SETUP: DeepPartial<Config> = {
  roles: { any: { allow: [{ cidr: '127.0.0.1/32' }] } },
  resolver: { hosts: { 'api.honeygain.com': '127.0.0.1' } },
  detection: { quarantineSec: 600 },
  limits: { connectTimeoutMs: 20_000 },
};
const KEY = '127.0.0.1|-|-';

describe.concurrent('a switch to enforce mode while a flow would-block by step 8 is dialled', () => {
  it('a connect-time detector (an0081.proxyware): 403 an0081.proxyware, one block record, a block alert, the identity quarantined, the destination never reached', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'monitor', ...SETUP });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const reply = rawConnect(gw, `api.honeygain.com:${dest.port}`, clients, 6000);
    const flow = await dialling(gw, dest.port);
    expect([flow.verdict, flow.reason, flow.detector]).toEqual(['would-block', 'detector', 'an0081.proxyware']);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    const text = await reply;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toMatch(/\r\nX-Egress-Verdict: block\r\n/i);
    expect(text).toContain('"reason":"an0081.proxyware"');
    const records = gw.closed.filter((r) => r.id === flow.id);
    expect(records.map((r) => [r.verdict, r.enforced, r.reason, r.detector, r.closeReason])).toEqual([['block', true, 'detector', 'an0081.proxyware', 'an0081.proxyware']]);
    expect(gw.alerts.list({ detector: 'an0081.proxyware', limit: 10 }).map((a) => a.action)).toContain('block');
    const listed = JSON.parse((await adminGet(gw, '/v1/quarantines')).text) as { quarantines: Array<{ key: string; enforced: boolean; detector: string }> };
    expect(listed.quarantines.map((q) => [q.key, q.enforced, q.detector])).toContainEqual([KEY, true, 'an0081.proxyware']);
    expect((await dest.release()).filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);

  // Regression: the refusal took the flow's matchedRule, the entry the old policy admitted it by
  // (any/0 `cidr=127.0.0.1/32`), though the reload moved that entry to index 1.
  it("a reload to enforce mode that moves the allow entry: the refusal's record names the running policy's entry", async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'monitor', ...SETUP });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const reply = rawConnect(gw, `api.honeygain.com:${dest.port}`, clients, 6000);
    const flow = await dialling(gw, dest.port);
    expect([flow.verdict, flow.detector, flow.matchedRule]).toEqual(['would-block', 'an0081.proxyware', { role: 'any', index: 0, entry: 'cidr=127.0.0.1/32' }]);
    const config = await runningConfig(gw);
    expect(await adminPut(gw, '/v1/policy', { ...config, mode: 'enforce', roles: { any: { allow: [{ host: 'other.test' }, { cidr: '127.0.0.1/32' }] } } })).toBe(200);
    expect(await reply).toContain('"reason":"an0081.proxyware"');
    expect(gw.closed.filter((r) => r.id === flow.id).map((r) => [r.verdict, r.detector, r.matchedRule])).toEqual([['block', 'an0081.proxyware', { role: 'any', index: 1, entry: 'cidr=127.0.0.1/32' }]]);
    expect((await dest.release()).filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);

  it('the same through SOCKS5: 0x02, one block record an0081.proxyware', async ({ expect, onTestFinished }) => {
    const gw = await startTestGateway({ mode: 'monitor', ...SETUP });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    const socks = SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: 'api.honeygain.com', port: dest.port }, timeout: 8000 }).then(
      (c) => {
        c.socket.destroy();
        return 'connected';
      },
      (err: Error) => err.message,
    );
    const flow = await dialling(gw, dest.port);
    expect([flow.verdict, flow.detector]).toEqual(['would-block', 'an0081.proxyware']);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    expect(await socks).toMatch(/NotAllowed/);
    expect(gw.closed.filter((r) => r.id === flow.id).map((r) => [r.verdict, r.enforced, r.detector, r.closeReason])).toEqual([['block', true, 'an0081.proxyware', 'an0081.proxyware']]);
    expect((await dest.release()).filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);

  it('an enforced quarantine (opened in enforce mode, then monitor): 403 quarantine, one block record, the destination never reached', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'enforce', ...SETUP });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    expect(await rawConnect(gw, `api.honeygain.com:${await closedPort()}`, clients, 6000)).toContain('"reason":"an0081.proxyware"');
    expect(await adminPut(gw, '/v1/mode', { mode: 'monitor' })).toBe(200);
    const reply = rawConnect(gw, `127.0.0.1:${dest.port}`, clients, 6000);
    const flow = await dialling(gw, dest.port);
    expect([flow.verdict, flow.reason]).toEqual(['would-block', 'quarantine']);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    const text = await reply;
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toContain('"reason":"quarantine"');
    expect(gw.closed.filter((r) => r.id === flow.id).map((r) => [r.verdict, r.enforced, r.reason, r.closeReason])).toEqual([['block', true, 'quarantine', 'quarantine']]);
    expect((await dest.release()).filter((p) => p !== '127.0.0.9')).toEqual([]);
  }, 30_000);

  it("monitor mode's would-be quarantine refuses nothing after the switch: the dial goes on and connects", async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway({ mode: 'monitor', ...SETUP });
    const dest = await hungDestination();
    onTestFinished(async () => {
      dest.close();
      await gw.stop();
    });
    // The proxyware flow fails its dial at once (nothing listens): only its would-be quarantine stays.
    expect(await rawConnect(gw, `api.honeygain.com:${await closedPort()}`, clients, 6000)).toMatch(/^HTTP\/1\.1 50\d /);
    const reply = rawConnect(gw, `127.0.0.1:${dest.port}`, clients, 8000);
    const flow = await dialling(gw, dest.port);
    expect([flow.verdict, flow.reason]).toEqual(['would-block', 'quarantine']);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    const peers = dest.release();
    expect(await reply).toMatch(/^HTTP\/1\.1 200 /);
    expect((await peers).filter((p) => p !== '127.0.0.9')).toEqual(['127.0.0.1']);
    expect(gw.flows.activeFlows().get(flow.id)?.verdict).toBe('would-block');
  }, 30_000);
});
