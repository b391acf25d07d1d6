import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AlertLike } from '../../../gateway/alerts/alert-store.ts';
import { bearer, type Harness, makeHarness, TOKENS } from './harness.ts';

const alert = (id: string, detector: string, time: string): AlertLike & Record<string, unknown> => ({
  id,
  time,
  detector,
  analytic: detector.startsWith('an0080') ? 'AN0080' : 'AN0081',
  severity: 'medium',
  action: 'flag',
  enforced: false,
  flowIds: [],
  identity: { user: null, host: null, roles: [], process: null },
  destination: null,
  evidence: { bytesOut: 1 },
  reasons: [],
});

describe('GET /v1/alerts', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await makeHarness();
    h.alerts.add(alert('a1', 'an0081.scan', '2026-11-25T10:00:00.000Z'));
    h.alerts.add(alert('a2', 'an0080.bulk-upload', '2026-11-25T11:00:00.000Z'));
    h.alerts.add(alert('a3', 'an0081.scan', '2026-11-25T12:00:00.000Z'));
  });
  afterAll(async () => {
    await h.close();
  });

  const ids = async (qs: string): Promise<string[]> => {
    const res = await h.app.inject({ url: `/v1/alerts${qs}`, headers: bearer(TOKENS.read) });
    expect(res.statusCode).toBe(200);
    return res.json().alerts.map((a: { id: string }) => a.id);
  };

  it('lists oldest first with the last event id; filters since (time or event id), detector, limit', async () => {
    const all = await h.app.inject({ url: '/v1/alerts', headers: bearer(TOKENS.read) });
    expect(all.json().lastEventId).toBe(3);
    expect(all.json().alerts[1]).toMatchObject({ id: 'a2', analytic: 'AN0080', evidence: { bytesOut: 1 } });
    expect(await ids('')).toEqual(['a1', 'a2', 'a3']);
    expect(await ids('?detector=an0081.scan')).toEqual(['a1', 'a3']);
    expect(await ids('?since=2026-11-25T10:30:00Z')).toEqual(['a2', 'a3']);
    expect(await ids('?since=2')).toEqual(['a3']);
    expect(await ids('?limit=2')).toEqual(['a2', 'a3']);
    expect(await ids('?since=0&limit=2')).toEqual(['a1', 'a2']);
  });

  it('a bad since or limit is 400', async () => {
    for (const qs of ['?since=yesterday-ish', '?limit=0', '?limit=x']) {
      const res = await h.app.inject({ url: `/v1/alerts${qs}`, headers: bearer(TOKENS.read) });
      expect(res.statusCode, qs).toBe(400);
      expect(res.json().error).toBe('bad-request');
    }
  });

  it('counts alerts in the metrics by detector and action', async () => {
    const res = await h.app.inject({ url: '/metrics', headers: bearer(TOKENS.read) });
    expect(res.body).toContain('gw_detector_alerts_total{detector="an0081.scan",action="flag"} 2');
  });
});

describe('agent reports', () => {
  let h: Harness;
  let server: Server;
  let client: Socket;
  beforeAll(async () => {
    h = await makeHarness();
    server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const addr = server.address();
    if (!addr || typeof addr === 'string') throw new Error('no address');
    client = connect({ host: '127.0.0.1', port: addr.port });
    await once(client, 'connect');
  });
  afterAll(async () => {
    client.destroy();
    server.close();
    await h.close();
  });

  const report = (localIp: string, localPort: number, name = 'rclone') => ({
    proto: 'tcp',
    localIp,
    localPort,
    remoteIp: '127.0.0.1',
    remotePort: 3128,
    pid: 999,
    ppid: 1,
    name,
    exe: `/usr/bin/${name}`,
    cmdline: `${name} copy /data remote:`,
    user: 'alice',
    uid: 1000,
    loginuid: 1000,
    parentName: 'bash',
    parentExe: '/bin/bash',
    startedAt: '2026-11-25T09:00:00Z',
  });

  it('attributes a live flow by its client address and counts the agent', async () => {
    const flow = h.flows.open({
      protocol: 'connect',
      listener: 'http',
      client: { ip: '127.0.0.1', port: client.localPort ?? 0 },
      identity: { user: null, host: null, roles: [], process: null },
      destination: { host: 'x.example.com', ip: null, port: 443 },
    });
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/agents/reports',
      headers: bearer(TOKENS.ws17),
      payload: { host: 'ws-17', reports: [report('127.0.0.1', client.localPort ?? 0), report('127.0.0.1', 1)] },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ accepted: 2, attributed: 1, pending: 1, shed: 0, ignored: 0, udpRelayPorts: null });
    expect(h.flows.get(flow.id)?.identity.process).toMatchObject({ name: 'rclone', pid: 999, source: 'agent', parentName: 'bash' });
    // A flow that opens after its report still gets it (pending attribution).
    const late = h.flows.open({
      protocol: 'connect',
      listener: 'http',
      client: { ip: '127.0.0.1', port: 1 },
      identity: { user: null, host: null, roles: [], process: null },
      destination: { host: 'y.example.com', ip: null, port: 443 },
    });
    expect(late.identity.process?.name).toBe('rclone');
    const agents = await h.app.inject({ url: '/v1/agents', headers: bearer(TOKENS.read) });
    expect(agents.statusCode).toBe(200);
    const ws = agents.json().agents.find((a: { name: string }) => a.name === 'ws-17');
    expect(ws).toMatchObject({ configured: true, host: 'ws-17', reports: 2, attributed: 1, refused: 0, lastSourceIp: '127.0.0.1' });
    expect(Date.parse(ws.lastSeenAt)).not.toBeNaN();
    // Accepted reports are telemetry, not audited writes.
    expect(h.audit.list()).toHaveLength(0);
  });

  it('a report for an address outside the agent sources is 403, applies nothing, and is audited', async () => {
    const res = await h.app.inject({
      method: 'POST',
      url: '/v1/agents/reports',
      headers: bearer(TOKENS.ws17),
      payload: { host: 'ws-17', reports: [report('127.0.0.1', 2), report('10.9.9.9', 40000)] },
    });
    expect(res.statusCode).toBe(403);
    expect(res.json()).toMatchObject({ error: 'forbidden', details: { refused: [{ index: 1, localIp: '10.9.9.9' }] } });
    const entry = h.audit.list()[0];
    expect(entry).toMatchObject({ actor: 'ws-17', scope: 'agent', route: '/v1/agents/reports', status: 403 });
    expect(entry?.detail).toContain('10.9.9.9');
    const agents = (await h.app.inject({ url: '/v1/agents', headers: bearer(TOKENS.read) })).json().agents;
    expect(agents.find((a: { name: string }) => a.name === 'ws-17').refused).toBe(2);
  });

  it('an invalid report is 400 with the paths of the bad fields', async () => {
    const bad = { ...report('127.0.0.1', 3), localPort: 70000, proto: 'sctp' };
    const res = await h.app.inject({ method: 'POST', url: '/v1/agents/reports', headers: bearer(TOKENS.ws17), payload: { host: 'ws-17', reports: [bad] } });
    expect(res.statusCode).toBe(400);
    const paths = res.json().details.map((d: { path: string }) => d.path);
    expect(paths).toEqual(expect.arrayContaining(['reports[0].localPort', 'reports[0].proto']));
    const notJson = await h.app.inject({
      method: 'POST',
      url: '/v1/agents/reports',
      headers: bearer(TOKENS.ws17, { 'content-type': 'application/json' }),
      payload: '{"host":',
    });
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json().error).toBe('bad-request');
  });
});
