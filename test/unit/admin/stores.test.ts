import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AlertStore, isValidSince } from '../../../gateway/alerts/alert-store.ts';
import { type AuditEntry, AuditLog, UNAUTHENTICATED_PER_MINUTE } from '../../../gateway/audit-log.ts';
import { GatewayStats } from '../../../gateway/stats.ts';

const a = (id: string, detector = 'an0081.scan', time = '2026-11-25T10:00:00.000Z') => ({ id, time, detector });

describe('AlertStore', () => {
  it('event ids increase and are never reused after eviction; the ring keeps the newest', () => {
    const s = new AlertStore({ keep: 3 });
    const ids = ['1', '2', '3', '4', '5'].map((i) => s.add(a(i)));
    expect(ids).toEqual([1, 2, 3, 4, 5]);
    expect(s.size).toBe(3);
    expect(s.list().map((x) => x.id)).toEqual(['3', '4', '5']);
    expect(s.after(0).map((e) => e.eventId)).toEqual([3, 4, 5]);
    expect(s.after(4).map((e) => e.alert.id)).toEqual(['5']);
    expect(s.lastEventId).toBe(5);
  });

  it('ids start after firstEventId (serve: its start time), so an earlier run\'s ids sort before them', () => {
    const s = new AlertStore({ firstEventId: 1_700_000_000_000 });
    expect(s.lastEventId).toBe(1_700_000_000_000);
    expect(s.add(a('1'))).toBe(1_700_000_000_001);
    expect(s.after(2).map((e) => e.alert.id)).toEqual(['1']);
    expect(s.list({ since: '2' }).map((x) => x.id)).toEqual(['1']);
  });

  it('filters by detector and since (event id or time), limit from the right end', () => {
    const s = new AlertStore();
    s.add(a('1', 'x', '2026-01-01T00:00:00Z'));
    s.add(a('2', 'y', '2026-01-02T00:00:00Z'));
    s.add(a('3', 'x', '2026-01-03T00:00:00Z'));
    expect(s.list({ detector: 'x' }).map((x) => x.id)).toEqual(['1', '3']);
    expect(s.list({ since: '1' }).map((x) => x.id)).toEqual(['2', '3']);
    expect(s.list({ since: '2026-01-01T12:00:00Z' }).map((x) => x.id)).toEqual(['2', '3']);
    expect(s.list({ limit: 1 }).map((x) => x.id)).toEqual(['3']);
    expect(s.list({ since: '0', limit: 1 }).map((x) => x.id)).toEqual(['1']);
    expect(s.after(0, 'y').map((e) => e.alert.id)).toEqual(['2']);
    expect(isValidSince('17')).toBe(true);
    expect(isValidSince('2026-01-01T00:00:00Z')).toBe(true);
    expect(isValidSince('soon')).toBe(false);
  });

  it('a throwing subscriber neither stops the others nor the caller; unsubscribe works', () => {
    const s = new AlertStore();
    const got: number[] = [];
    s.subscribe(() => {
      throw new Error('broken');
    });
    const off = s.subscribe((e) => got.push(e.eventId));
    expect(() => s.add(a('1'))).not.toThrow();
    off();
    s.add(a('2'));
    expect(got).toEqual([1]);
    expect(s.subscriberCount).toBe(1);
  });
});

describe('AuditLog', () => {
  let dir: string | null = null;
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const entry = (i: number): AuditEntry => ({
    time: new Date(Date.UTC(2026, 10, 25, 10, i)).toISOString(),
    actor: i % 2 ? 'ops' : 'soc',
    scope: 'admin',
    method: 'PUT',
    route: '/v1/mode',
    path: '/v1/mode',
    sourceIp: '127.0.0.1',
    beforeVersion: i,
    afterVersion: i + 1,
    status: 200,
    detail: null,
  });

  it('keeps a bounded ring in memory (newest first) and appends JSON lines to the file', async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-audit-'));
    const path = join(dir, 'sub', 'flows.jsonl.audit.jsonl');
    const log = await AuditLog.open(path, { keep: 3 });
    for (let i = 0; i < 5; i++) log.record(entry(i));
    expect(log.list().map((e) => e.beforeVersion)).toEqual([4, 3, 2]);
    expect(log.list({ actor: 'ops' }).map((e) => e.beforeVersion)).toEqual([3]);
    expect(log.list({ limit: 1 }).map((e) => e.beforeVersion)).toEqual([4]);
    expect(log.list({ since: entry(3).time }).map((e) => e.beforeVersion)).toEqual([4]);
    await log.close();
    const lines = (await readFile(path, 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(5);
    expect(JSON.parse(lines[4] ?? '')).toEqual(entry(4));
    // A restart appends to the same file: the trail outlives the process.
    const again = await AuditLog.open(path);
    again.record(entry(9));
    await again.close();
    expect((await readFile(path, 'utf8')).trim().split('\n')).toHaveLength(6);
  });
});

describe('AuditLog: writes without a valid token', () => {
  const refused = (i: number): AuditEntry => ({
    time: new Date(Date.UTC(2026, 10, 25, 11, 0, 0, i)).toISOString(),
    actor: null,
    scope: null,
    method: 'POST',
    route: '/v1/policy/rollback/:version',
    path: '/v1/policy/rollback/1',
    sourceIp: `127.0.${i >> 8}.${i & 255}`,
    beforeVersion: null,
    afterVersion: null,
    status: 401,
  });
  const real = (n: number): AuditEntry => ({ ...refused(0), actor: 'ops', scope: 'admin', method: 'PUT', route: '/v1/mode', path: '/v1/mode', sourceIp: '127.0.0.1', status: 200, beforeVersion: n });

  // Regression: each token-less request was one entry, so a flood from rotating addresses pushed
  // every real entry out of the ring (10,500 requests in 8.5 s emptied ?actor=ops).
  it('cannot push real entries out: the first 60 a minute are listed, the rest summed up in one entry', () => {
    let now = Date.UTC(2026, 10, 25, 11);
    const log = new AuditLog({ keep: 100, now: () => now });
    log.record(real(1));
    for (let i = 0; i < 5000; i++) log.record(refused(i));
    log.record(real(2));
    expect(log.list({ actor: 'ops', limit: 1000 }).map((e) => e.beforeVersion)).toEqual([2, 1]);
    expect(log.list({ limit: 1000 }).filter((e) => e.actor === null)).toHaveLength(UNAUTHENTICATED_PER_MINUTE);
    now += 60_000;
    const summary = log.list({ limit: 1 })[0];
    expect(summary).toMatchObject({ actor: null, status: 401, sourceIp: '*' });
    expect(summary?.detail).toMatch(/^4940 more writes without a valid token from 4940 address\(es\)/);
    // A new minute lists again.
    log.record(refused(1));
    expect(log.list({ limit: 1 })[0]).toMatchObject({ path: '/v1/policy/rollback/1', sourceIp: '127.0.0.1' });
  });
});

describe('GatewayStats', () => {
  it('each instance has its own registry; label values outside the closed sets become "other"', async () => {
    const s1 = new GatewayStats();
    const s2 = new GatewayStats();
    s1.downstreamOpened('socks');
    s1.alert('an0081.scan', 'kill');
    s1.alert('evil.example.com', 'explode');
    s1.decision('allow', 'allowed');
    s1.upstreamConnectFailed('refused');
    s1.sweepObserved(3);
    const t1 = await s1.text();
    const t2 = await s2.text();
    expect(t1).toContain('gw_downstream_cx_total{listener="socks"} 1');
    expect(t1).toContain('gw_downstream_cx_active{listener="socks"} 1');
    expect(t1).toContain('gw_detector_alerts_total{detector="an0081.scan",action="kill"} 1');
    expect(t1).toContain('gw_detector_alerts_total{detector="other",action="other"} 1');
    expect(t1).not.toContain('evil.example.com');
    expect(t1).toContain('gw_upstream_cx_connect_fail_total{type="refused"} 1');
    expect(t1).toContain('gw_sweep_duration_ms_count 1');
    expect(t2).toContain('gw_downstream_cx_total{listener="socks"} 0');
    s1.downstreamClosed('socks');
    expect(await s1.text()).toContain('gw_downstream_cx_active{listener="socks"} 0');
  });

  it('hot-path counts kept as plain numbers add up at every scrape (counters never reset between scrapes)', async () => {
    const s = new GatewayStats();
    for (let i = 0; i < 3; i++) s.downstreamOpened('http');
    s.decision('allow', 'allowed');
    s.decision('block', 'not-allowlisted');
    s.decision('block', 'not-allowlisted');
    const first = await s.text();
    expect(first).toContain('gw_downstream_cx_total{listener="http"} 3');
    expect(first).toContain('gw_downstream_cx_active{listener="http"} 3');
    expect(first).toContain('gw_policy_decisions_total{verdict="block",reason="not-allowlisted"} 2');
    s.downstreamOpened('http');
    s.downstreamClosed('http');
    s.decision('allow', 'allowed');
    const second = await s.text();
    expect(second).toContain('gw_downstream_cx_total{listener="http"} 4');
    expect(second).toContain('gw_downstream_cx_active{listener="http"} 3');
    expect(second).toContain('gw_policy_decisions_total{verdict="allow",reason="allowed"} 2');
    expect(second).toContain('gw_flow_bytes_total{direction="out"} 0');
  });
});
