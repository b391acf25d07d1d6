
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpConnect } from '../helpers/detection-live.ts';
import { type AlertStream, openAlertStream } from '../helpers/alert-stream.ts';
import { runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';

const PROVIDER = 'pw.example.test';
const SOC = 'soc-read-token-0123456789';
const DASH = 'dash-read-token-0123456789';

async function status(gw: TestGateway, token: string, path: string): Promise<number> {
  const res = await fetch(`${gw.adminUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
  await res.arrayBuffer();
  return res.status;
}

describe('alert stream: a token revoked or narrowed while its stream is open', () => {
  let gw: TestGateway;
  const streams: AlertStream[] = [];

  beforeAll(async () => {
    gw = await startTestGateway({
      mode: 'enforce',
      admin: {
        tokens: [
          { name: 'soc', token: SOC, scope: 'read' },
          { name: 'dash', token: DASH, scope: 'read' },
        ],
      },
      resolver: { hosts: { [PROVIDER]: '127.0.0.1' } },
      detection: { lists: { proxywareDomains: [PROVIDER] } },
    });
  });

  afterAll(async () => {
    for (const s of streams) s.req.destroy();
    await gw.stop();
  });

  it('ends the streams of the removed token and of the one narrowed to agent scope; the admin stream gets the alert', async () => {
    const soc = await openAlertStream(new URL(gw.adminUrl).host, SOC);
    const dash = await openAlertStream(new URL(gw.adminUrl).host, DASH);
    const admin = await openAlertStream(new URL(gw.adminUrl).host, gw.adminToken);
    streams.push(soc, dash, admin);

    // soc removed, dash narrowed to the agent scope.
    const config = await runningConfig(gw);
    const res = await fetch(`${gw.adminUrl}/v1/policy`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ...config, admin: { ...(config['admin'] as object), tokens: [{ name: 'dash', token: DASH, scope: 'agent' }] } }),
    });
    expect(res.status).toBe(200);
    expect(await status(gw, SOC, '/v1/alerts')).toBe(401);
    expect(await status(gw, DASH, '/v1/alerts')).toBe(403);

    // A real alert: a CONNECT to a proxyware provider domain, refused at admission.
    const answer = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `${PROVIDER}:443`);
    answer.socket.destroy();
    expect(answer.status).toBe(403);
    await until('the admin stream receiving the alert', () => admin.text.includes('"detector":"an0081.proxyware"'));

    await until('the revoked and narrowed streams ending', () => soc.ended && dash.ended);
    expect(soc.text).not.toContain('event: alert');
    expect(dash.text).not.toContain('event: alert');
    expect(admin.ended).toBe(false);
    // Their places in the stream limits are free again: only the admin stream is counted.
    const metrics = await fetch(`${gw.adminUrl}/metrics`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
    expect(await metrics.text()).toMatch(/^gw_admin_streams_active 1$/m);
  });
});
