/**
 * SPEC §5: a record's `matchedRule` is the role and allow entry that let the flow through. A
 * quarantine is judged after the policy, as a connect-time detector is, and the record of a flow it
 * refuses (enforce) or marks would-block (monitor) keeps the allow entry the policy admitted it by,
 * as a detector's does; so does `POST /v1/policy/evaluate` for that connection.
 *
 * Regression: the quarantine's decision carried `matchedRule: null`. After a proxyware CONNECT
 * (an0081.proxyware, which keeps its rule) quarantined 127.0.0.6, its CONNECT to ok.example.test,
 * allowed by `web` allow[1], was recorded `quarantine` with no rule: in monitor mode a tunnel that
 * carried its bytes through that entry read as if no entry had admitted it.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { type TcpOrigin, echoOrigin, echoRoundTrip, httpConnect } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

const CLIENT_IP = '127.0.0.6';
const OK_RULE = { role: 'web', index: 1, entry: 'host=ok.example.test' };

let origin: TcpOrigin;
let gw: TestGateway | null = null;

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
});
afterAll(async () => {
  await origin?.close();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({
    mode,
    roles: { web: { allow: [{ host: 'api.honeygain.com' }, { host: 'ok.example.test' }] } },
    defaultRoles: ['web'],
    resolver: { hosts: { 'api.honeygain.com': '127.0.0.1', 'ok.example.test': '127.0.0.1' } },
    detection: { sampleIntervalMs: 50, quarantineSec: 600 },
  });
}

async function evaluate(g: TestGateway, body: Record<string, string>): Promise<{ verdict: string; reason: string; matchedRule: unknown }> {
  const res = await fetch(`${g.adminUrl}/v1/policy/evaluate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${g.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as { verdict: string; reason: string; matchedRule: unknown };
}

describe.each(['enforce', 'monitor'] as const)('%s: a flow the quarantine judges keeps the allow entry that admitted it', (mode) => {
  it('in its record, as a detector refusal keeps its own, and in the dry run', async () => {
    const g = await start(mode);
    gw = g;
    const proxy = { host: g.httpHost, port: g.httpPort };
    // The provider domain alone trips an0081.proxyware: refused (enforce) or relayed would-block
    // (monitor), and the identity quarantined (or would be).
    const provider = await httpConnect(proxy, `api.honeygain.com:${origin.port}`, { localAddress: CLIENT_IP });
    expect(provider.status).toBe(mode === 'enforce' ? 403 : 200);
    provider.socket.destroy();
    const detected = await g.waitForClosed((r) => r.client.ip === CLIENT_IP && r.destination.host === 'api.honeygain.com');
    expect([detected.reason, detected.detector, detected.matchedRule]).toEqual(['detector', 'an0081.proxyware', { role: 'web', index: 0, entry: 'host=api.honeygain.com' }]);

    const dest = `ok.example.test:${origin.port}`;
    const next = await httpConnect(proxy, dest, { localAddress: CLIENT_IP });
    if (mode === 'enforce') {
      expect(next.status).toBe(403);
      expect(JSON.parse(next.body)).toMatchObject({ reason: 'quarantine' });
    } else {
      expect(next.status).toBe(200);
      await echoRoundTrip(next.socket, Buffer.from('through web allow[1]'));
      next.socket.destroy();
    }
    const rec = await g.waitForClosed((r) => r.client.ip === CLIENT_IP && r.destination.host === 'ok.example.test');
    expect({ verdict: rec.verdict, reason: rec.reason, detector: rec.detector, matchedRule: rec.matchedRule }).toEqual({
      verdict: mode === 'enforce' ? 'block' : 'would-block',
      reason: 'quarantine',
      detector: 'quarantine',
      matchedRule: OK_RULE,
    });
    expect(rec.bytesOut).toBe(mode === 'enforce' ? 0 : 20);

    // The dry run judges the same connection the same way.
    expect(await evaluate(g, { dest, source: CLIENT_IP })).toMatchObject({ reason: 'quarantine', matchedRule: OK_RULE });
    // Another source is not quarantined: the same rule, allowed.
    expect(await evaluate(g, { dest, source: '127.0.0.9' })).toMatchObject({ verdict: 'allow', matchedRule: OK_RULE });
  });
});
