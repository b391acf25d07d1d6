/**
 * Settings a running gateway reads once, at start: its listeners, TLS files, where the flow log
 * (and the audit log beside it) and the detectors' state are written, how many closed flows the
 * admin API keeps. A reload or push that changes one of them is applied everywhere else; these keep
 * their running values until a restart, and restartOnlyChanges names them so the gateway can say so.
 */
import type { Config } from '../policy/config.ts';

const RESTART_ONLY: ReadonlyArray<[string, (c: Readonly<Config>) => unknown]> = [
  ['listen', (c) => c.listen],
  ['tls', (c) => c.tls ?? null],
  ['flowLog.path', (c) => c.flowLog.path],
  ['flowLog.keepClosed', (c) => c.flowLog.keepClosed],
  ['state.path', (c) => c.state.path],
];

/** The restart-only settings whose values differ between `previous` and `next` (config paths). */
export function restartOnlyChanges(previous: Readonly<Config>, next: Readonly<Config>): string[] {
  const changed: string[] = [];
  for (const [path, read] of RESTART_ONLY) if (JSON.stringify(read(previous)) !== JSON.stringify(read(next))) changed.push(path);
  return changed;
}
