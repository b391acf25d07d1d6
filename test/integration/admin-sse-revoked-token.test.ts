/**
 * An alert stream ends when its token is revoked or loses the read scope (PUT /v1/policy), through
 * the real admin listener and a real alert (a CONNECT to a proxyware provider domain). Before, the
 * token was checked once, when the stream opened: a `soc` token removed by a PUT was 401 on every
 * request, yet its open stream went on receiving every alert (identity, process, destination).
 */
import { type ClientRequest, type IncomingMessage, request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpConnect } from '../helpers/detection-live.ts';
import { runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';

const PROVIDER = 'pw.example.test';
const SOC = 'soc-read-token-0123456789';
const DASH = 'dash-read-token-0123456789';

/** An open alert stream: the text received so far, and whether it ended. */
interface Stream {
  text: string;
  ended: boolean;
  req: ClientRequest;
}

function openStream(gw: TestGateway, token: string): Promise<Stream> {
  const u = new URL(gw.adminUrl);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: Number(u.port), path: '/v1/alerts/stream', headers: { authorization: `Bearer ${token}` } });
    const s: Stream = { text: '', ended: false, req };
    req.on('response', (res: IncomingMessage) => {
      if (res.statusCode !== 200) return reject(new Error(`stream answered ${res.statusCode}`));
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        s.text += c;
        if (s.text.includes(': connected')) resolve(s);
      });
      res.on('close', () => {
        s.ended = true;
      });
    });
    req.on('error', () => {
      s.ended = true;
    });
    req.end();
  });
}

async function status(gw: TestGateway, token: string, path: string): Promise<number> {
  const res = await fetch(`${gw.adminUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
  await res.arrayBuffer();
  return res.status;
}

describe('alert stream: a token revoked or narrowed while its stream is open', () => {
  let gw: TestGateway;
  const streams: Stream[] = [];

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
    const soc = await openStream(gw, SOC);
    const dash = await openStream(gw, DASH);
    const admin = await openStream(gw, gw.adminToken);
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
