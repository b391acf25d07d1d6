/**
 * `alerts.keep` follows the running policy: a reload, push or rollback that changes it changes how
 * many alerts `GET /v1/alerts` (and a stream's resume) can reach, as every setting not read at start
 * only does (docs/spec-notes.md, "Settings read at start only"). Real gateway, real proxyware
 * CONNECTs from distinct loopback clients (one alert each), the policy pushed through the admin API.
 *
 * Regression: the alert ring was sized once, at start: with `keep: 2` pushed to 10, GET /v1/policy
 * said 10 and GET /v1/alerts still listed 2 of 5 alerts, and no warning said it waited for a restart.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TcpOrigin, echoOrigin, httpConnect } from '../helpers/detection-live.ts';
import { type TestGateway, adminGet, adminPut, runningConfig, startTestGateway, until } from '../helpers/gateway.ts';

let origin: TcpOrigin;
let gw: TestGateway;

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
  gw = await startTestGateway({
    mode: 'enforce',
    resolver: { hosts: { 'api.honeygain.com': '127.0.0.1' } },
    alerts: { keep: 2 },
  });
});
afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

interface Listed {
  alerts: Array<{ id: string; detector: string }>;
}

async function listed(): Promise<Listed['alerts']> {
  const res = await adminGet(gw, '/v1/alerts?limit=1000');
  expect(res.status).toBe(200);
  return (JSON.parse(res.text) as Listed).alerts;
}

/** A proxyware CONNECT from `clientIp` (its own identity: its own alert), refused in enforce mode. */
async function raiseFrom(clientIp: string): Promise<void> {
  const before = gw.alerts.lastEventId;
  const answer = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `api.honeygain.com:${origin.port}`, { localAddress: clientIp });
  answer.socket.destroy();
  expect(answer.status).toBe(403);
  await until(`the alert of ${clientIp}`, () => gw.alerts.lastEventId > before);
}

async function pushKeep(keep: number): Promise<void> {
  const config = await runningConfig(gw);
  expect(await adminPut(gw, '/v1/policy', { ...config, alerts: { ...(config['alerts'] as object), keep } })).toBe(200);
}

describe('alerts.keep after a reload', () => {
  it('raised: the alerts raised after it are kept up to the new number; lowered: the newest stay', async () => {
    for (const ip of ['127.0.0.11', '127.0.0.12', '127.0.0.13']) await raiseFrom(ip);
    expect(await listed()).toHaveLength(2);

    await pushKeep(10);
    for (const ip of ['127.0.0.14', '127.0.0.15', '127.0.0.16']) await raiseFrom(ip);
    const five = await listed();
    // The two kept at the push and the three raised after it.
    expect(five).toHaveLength(5);
    expect(five.every((a) => a.detector === 'an0081.proxyware')).toBe(true);

    await pushKeep(3);
    expect((await listed()).map((a) => a.id)).toEqual(five.slice(2).map((a) => a.id));
    // Full at 3: the next alert replaces the oldest.
    await raiseFrom('127.0.0.17');
    const after = await listed();
    expect(after).toHaveLength(3);
    expect(after.slice(0, 2).map((a) => a.id)).toEqual(five.slice(3).map((a) => a.id));
    expect(gw.logs.filter((l) => l.msg?.startsWith('these settings apply at the next restart'))).toEqual([]);
  });

  // Regression: keep 0 was taken (200, GET /v1/policy said 0) and the ring kept 1 alert all the same.
  it('keep 0 is refused at alerts.keep; the alerts kept stay', async () => {
    const before = (await listed()).map((a) => a.id);
    const config = await runningConfig(gw);
    const res = await fetch(`${gw.adminUrl}/v1/policy`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ...config, alerts: { ...(config['alerts'] as object), keep: 0 } }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { details: Array<{ path: string }> }).details.map((d) => d.path)).toEqual(['alerts.keep']);
    expect((await listed()).map((a) => a.id)).toEqual(before);
    expect(((await runningConfig(gw))['alerts'] as { keep: number }).keep).toBe(3);
  });
});
