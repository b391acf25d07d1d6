/**
 * Settings a running gateway reads once, at start: its listeners, whether `tls` is on at all (its
 * files are read again on every reload: policy-writer.ts), where the flow log (and the audit log
 * beside it) and the detectors' state are written, how many closed flows the admin API keeps, how
 * many identities and destinations the detectors track. A reload or push that changes one of them
 * is applied everywhere else; these keep their running values until a restart, and
 * restartOnlyChanges names them so the gateway can say so.
 */
import { resolve } from 'node:path';
import type { Config } from '../policy/config.ts';

const RESTART_ONLY: ReadonlyArray<[string, (c: Readonly<Config>) => unknown]> = [
  ['listen', (c) => c.listen],
  // On or off: the HTTPS listener is made (or not) at start. Its files follow every reload.
  ['tls', (c) => c.tls !== null && c.tls !== undefined],
  ['flowLog.path', (c) => filePath(c.flowLog.path)],
  ['flowLog.keepClosed', (c) => c.flowLog.keepClosed],
  ['state.path', (c) => filePath(c.state.path)],
  // The detectors' tables are sized when their state is made (or read from state.path), at start.
  ['detection.maxTrackedIdentities', (c) => c.detection.maxTrackedIdentities],
  ['detection.maxTrackedDestinations', (c) => c.detection.maxTrackedDestinations],
];

/** A file setting as the file it names: `logs/./flows.jsonl` and its absolute form are one file ("-" and null stay). */
function filePath(p: string | null): string | null {
  return p === null || p === '-' ? p : resolve(p);
}

/**
 * The restart-only settings that `next` changes (config paths): those whose values differ from
 * `previous`'s and from the `running` gateway's (the config it started with), paths compared as the
 * files they name. A reload back to what is running changes nothing that waits for a restart.
 */
export function restartOnlyChanges(previous: Readonly<Config>, next: Readonly<Config>, running: Readonly<Config> = previous): string[] {
  const changed: string[] = [];
  for (const [path, read] of RESTART_ONLY) {
    const value = JSON.stringify(read(next));
    if (value !== JSON.stringify(read(previous)) && value !== JSON.stringify(read(running))) changed.push(path);
  }
  return changed;
}
