/**
 * Text output of the replay harness: alert lines, the score table and totals, and the
 * `--against` impact list. Pure string building.
 */
import type { ReplayFinding } from './driver.ts';
import { formatAuthority } from '../protocol/authority.ts';
import type { Judgement } from './suite.ts';

const MiB = 1024 * 1024;

function dur(ms: number | null): string {
  if (ms === null) return '-';
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** One line per alert (grouped repeats omitted). */
export function alertLines(findings: readonly ReplayFinding[]): string[] {
  return findings
    .filter((f) => f.isNew)
    .map((f) => {
      const a = f.alert;
      const who = [a.identity.host ?? '-', a.identity.user ?? '-', a.identity.process?.name ?? '-'].join('/');
      const dest = a.destination ? formatAuthority(a.destination.host, a.destination.port) : '*';
      return `${a.time} [${f.scenario}] ${a.detector} ${a.severity} ${a.action} ${who} -> ${dest}: ${a.reasons[0] ?? ''}`;
    });
}

function pad(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const r of rows) {
    r.forEach((c, i) => {
      widths[i] = Math.max(widths[i] ?? 0, c.length);
    });
  }
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
}

/** The score table and the totals lines. */
export function scoreTable(judgements: readonly Judgement[]): string[] {
  const rows: string[][] = [['scenario', 'run', 'expected', 'got', 'max sev', 'detect (virtual)', 'past budget', 'ok']];
  for (const j of judgements) {
    rows.push([
      j.scenario,
      j.variant,
      j.expected,
      j.got,
      j.maxSeverity,
      dur(j.timeToDetectMs),
      j.bytesPastBudget > 0 ? `${(j.bytesPastBudget / MiB).toFixed(2)} MiB` : '0',
      j.ok ? 'ok' : 'FAIL',
    ]);
  }
  const mal = judgements.filter((j) => j.kind === 'malicious');
  const ben = judgements.filter((j) => j.kind === 'benign');
  const caught = mal.filter((j) => j.ok).length;
  const stopped = (j: Judgement) => j.strongest === 'block' || j.strongest === 'kill';
  const benWithStop = ben.filter((j) => j.variant !== 'no-allowlist' && stopped(j)).length;
  const benNoAllowStop = ben.filter((j) => j.variant === 'no-allowlist' && stopped(j));
  const aboveLow = ben.filter((j) => j.variant === 'allowlist' && (j.maxSeverity === 'medium' || j.maxSeverity === 'high')).length;
  const past = judgements.reduce((n, j) => n + j.bytesPastBudget, 0);
  const failed = judgements.filter((j) => !j.ok);
  const ttd = mal.map((j) => j.timeToDetectMs).filter((x): x is number => x !== null).sort((a, b) => a - b);
  const median = ttd.length ? ttd[Math.floor(ttd.length / 2)]! : null;
  return [
    ...pad(rows),
    '',
    `malicious caught with the expected action: ${caught}/${mal.length} (median time to detect ${dur(median)})`,
    `benign blocked or killed (with allowlist, and mixed): ${benWithStop}`,
    `benign without allowlist stopped: ${benNoAllowStop.length}${benNoAllowStop.length ? ` (${benNoAllowStop.map((j) => `${j.scenario}${j.ok ? ' declared' : ' UNEXPECTED'}`).join(', ')})` : ''}`,
    `benign flagged above low with allowlist: ${aboveLow}`,
    `bytes past a kill budget: ${past}`,
    `as expected: ${judgements.length - failed.length}/${judgements.length}${failed.length ? `; FAILED: ${failed.map((j) => `${j.scenario}(${j.variant})`).join(', ')}` : ''}`,
  ];
}
