/**
 * `GET /v1/quarantines` and `DELETE /v1/quarantines/{key}` through a real gateway: an identity a
 * real detection quarantined (a proxyware CONNECT, SPEC §3 `detection.quarantineSec`) is listed,
 * released by an admin token (audited), and its next CONNECT is admitted again.
 *
 * Regression: the admin API had no way to see who was quarantined nor to release a false positive;
 * the identity stayed refused `quarantine` for the whole `quarantineSec` (600 s here) unless the
 * gateway was restarted. A finding that quarantined it again after such a release raised no alert
 * (its group was still quiet for the quarantine period): the new quarantine came without one.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { QuarantineInfo, QuarantineList } from '../../gateway/control.ts';
import type { AuditEntry } from '../../gateway/audit-log.ts';
import type { Config } from '../../policy/config.ts';
import { type TcpOrigin, echoOrigin, echoRoundTrip, httpConnect } from '../helpers/detection-live.ts';
import { type DeepPartial, type TestGateway, startTestGateway } from '../helpers/gateway.ts';

const CLIENT_IP = '127.0.0.6';
const KEY = `${CLIENT_IP}|-|-`;
const OPS = 'quarantine-ops-token-0123456789';
const SOC = 'quarantine-soc-token-0123456789';

let origin: TcpOrigin;
let gw: TestGateway | null = null;
let stateDir: string | null = null;

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
});
afterAll(async () => {
  await origin?.close();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
  stateDir = null;
});

/** A gateway whose proxyware and ordinary names resolve (resolver.hosts) to the loopback echo origin. */
function start(overrides: DeepPartial<Config> = {}): Promise<TestGateway> {
  return startTestGateway({
    mode: 'enforce',
    resolver: { hosts: { 'api.honeygain.com': '127.0.0.1', 'ok.example.test': '127.0.0.1' } },
    detection: { sampleIntervalMs: 50, quarantineSec: 600 },
    admin: { tokens: [{ name: 'ops', token: OPS, scope: 'admin' }, { name: 'soc', token: SOC, scope: 'read' }] },
    ...overrides,
  });
}

async function api(g: TestGateway, method: string, path: string, token: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${g.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function listed(g: TestGateway): Promise<QuarantineList> {
  const res = await api(g, 'GET', '/v1/quarantines', SOC);
  expect(res.status).toBe(200);
  return res.body as unknown as QuarantineList;
}

const release = (g: TestGateway, key: string, token = OPS) => api(g, 'DELETE', `/v1/quarantines/${encodeURIComponent(key)}`, token);

/** A CONNECT from CLIENT_IP: its status and refusal reason (null on 200, the tunnel checked and closed). */
async function connectFrom(g: TestGateway, host: string): Promise<{ status: number; reason: string | null }> {
  const a = await httpConnect({ host: g.httpHost, port: g.httpPort }, `${host}:${origin.port}`, { localAddress: CLIENT_IP });
  if (a.status !== 200) return { status: a.status, reason: (JSON.parse(a.body) as { reason: string }).reason };
  await echoRoundTrip(a.socket, Buffer.from('admitted'));
  a.socket.destroy();
  return { status: 200, reason: null };
}

/** The proxyware CONNECT that quarantines CLIENT_IP (enforce: refused, monitor: relayed would-block). */
async function quarantined(g: TestGateway, mode: 'enforce' | 'monitor'): Promise<void> {
  expect(await connectFrom(g, 'api.honeygain.com')).toEqual(mode === 'enforce' ? { status: 403, reason: 'an0081.proxyware' } : { status: 200, reason: null });
}

const proxywareAlerts = (g: TestGateway): string[] => g.alerts.list({ detector: 'an0081.proxyware', limit: 100 }).map((a) => a.id);

describe('admin API: list and release quarantines', () => {
  it('enforce: listed with its cause; read token 403 on DELETE; unknown key 404; released by ops (audited), the next CONNECT passes', async () => {
    gw = await start();
    await quarantined(gw, 'enforce');
    expect(await connectFrom(gw, 'ok.example.test')).toEqual({ status: 403, reason: 'quarantine' });

    const list = await listed(gw);
    expect(list.mode).toBe('enforce');
    expect(list.quarantines).toHaveLength(1);
    const q = list.quarantines[0] as QuarantineInfo;
    expect(q).toMatchObject({ key: KEY, host: CLIENT_IP, user: null, process: null, detector: 'an0081.proxyware', enforced: true });
    expect(q.alertId).toBe(proxywareAlerts(gw)[0]);
    expect(Date.parse(q.until) - Date.parse(q.since)).toBe(600_000);

    // A read token may list, not release.
    const refused = await release(gw, KEY, SOC);
    expect(refused.status).toBe(403);
    expect(refused.body).toMatchObject({ error: 'forbidden' });
    expect(await connectFrom(gw, 'ok.example.test')).toEqual({ status: 403, reason: 'quarantine' });

    const unknown = await release(gw, '127.0.0.99|-|-');
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatchObject({ error: 'not-found' });
    expect(typeof unknown.body['message']).toBe('string');

    const done = await release(gw, KEY);
    expect(done.status).toBe(200);
    expect(done.body).toMatchObject({ released: true, key: KEY, quarantines: [{ key: KEY, detector: 'an0081.proxyware', enforced: true }] });
    expect((await listed(gw)).quarantines).toEqual([]);
    expect(await connectFrom(gw, 'ok.example.test')).toEqual({ status: 200, reason: null });
    expect((await release(gw, KEY)).status).toBe(404);

    const audit = (await api(gw, 'GET', '/v1/audit?limit=100', SOC)).body['entries'] as AuditEntry[];
    // Newest first as listed: oldest first here.
    const deletes = audit.filter((e) => e.route === '/v1/quarantines/:key').reverse();
    expect(deletes.map((e) => [e.actor, e.scope, e.method, e.status])).toEqual([
      ['soc', 'read', 'DELETE', 403],
      ['ops', 'admin', 'DELETE', 404],
      ['ops', 'admin', 'DELETE', 200],
      ['ops', 'admin', 'DELETE', 404],
    ]);
    const released = deletes[2] as AuditEntry;
    expect(released.path).toBe(`/v1/quarantines/${encodeURIComponent(KEY)}`);
    expect(released.detail).toContain(`quarantine ${KEY} released`);
    expect(Number.isNaN(Date.parse(released.time))).toBe(false);
  });

  it('a finding that quarantines a released identity again comes with a new alert', async () => {
    gw = await start();
    await quarantined(gw, 'enforce');
    const [first] = proxywareAlerts(gw);
    expect((await release(gw, KEY)).status).toBe(200);
    await quarantined(gw, 'enforce');
    const alerts = proxywareAlerts(gw);
    expect(alerts).toHaveLength(2);
    const q = (await listed(gw)).quarantines[0] as QuarantineInfo;
    expect(q.alertId).toBe(alerts[1]);
    expect(q.alertId).not.toBe(first);
  });

  it('monitor: listed as would-be (enforced false, mode monitor); released, the next flow is recorded allow', async () => {
    gw = await start({ mode: 'monitor' });
    await quarantined(gw, 'monitor');
    expect(await connectFrom(gw, 'ok.example.test')).toEqual({ status: 200, reason: null });
    const before = await gw.waitForClosed((r) => r.destination.host === 'ok.example.test');
    expect([before.verdict, before.reason]).toEqual(['would-block', 'quarantine']);

    const list = await listed(gw);
    expect(list.mode).toBe('monitor');
    expect(list.quarantines).toMatchObject([{ key: KEY, detector: 'an0081.proxyware', enforced: false }]);
    expect((await release(gw, KEY)).body).toMatchObject({ released: true, quarantines: [{ key: KEY, enforced: false }] });

    const count = gw.closed.length;
    expect(await connectFrom(gw, 'ok.example.test')).toEqual({ status: 200, reason: null });
    const after = await gw.waitForClosed((r) => gw!.closed.indexOf(r) >= count && r.destination.host === 'ok.example.test');
    expect([after.verdict, after.reason]).toEqual(['allow', 'allowed']);
  });

  it('a key longer than a path segment may be (100 characters) is released with ?key=', async () => {
    // An inventory name of 120 characters: the key is the host's name, not its address.
    const host = `${'ws-17.'.repeat(19)}example`.slice(0, 120);
    const key = `${host}|-|-`;
    gw = await start({ identity: { hosts: [{ cidr: `${CLIENT_IP}/32`, name: host, roles: ['any'] }] } });
    await quarantined(gw, 'enforce');
    expect((await listed(gw)).quarantines).toMatchObject([{ key, host, user: null, process: null }]);
    const byPath = await release(gw, key);
    expect([byPath.status, byPath.body['error']]).toEqual([414, 'uri-too-long']);
    expect((await api(gw, 'DELETE', '/v1/quarantines', OPS)).status).toBe(400);
    expect((await api(gw, 'DELETE', `/v1/quarantines?key=${encodeURIComponent(key)}`, SOC)).status).toBe(403);
    const done = await api(gw, 'DELETE', `/v1/quarantines?key=${encodeURIComponent(key)}`, OPS);
    expect(done.status).toBe(200);
    expect(done.body).toMatchObject({ released: true, key });
    expect(await connectFrom(gw, 'ok.example.test')).toEqual({ status: 200, reason: null });
  });

  it('a restart with state.path does not bring a released quarantine back', async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'egw-quarantine-'));
    const path = join(stateDir, 'detection.json');
    gw = await start({ state: { path } });
    await quarantined(gw, 'enforce');
    expect((await release(gw, KEY)).status).toBe(200);
    await gw.stop();
    gw = null;
    // The detector state was persisted, and is what the next start reads.
    expect((await stat(path)).size).toBeGreaterThan(0);
    gw = await start({ state: { path } });
    expect((await listed(gw)).quarantines).toEqual([]);
    expect(await connectFrom(gw, 'ok.example.test')).toEqual({ status: 200, reason: null });
  });
});
