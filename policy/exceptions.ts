/**
 * Policy lookups the detectors need (SPEC §3 `exceptions`, `approvedUploadDestinations`,
 * `expectedScanSources`). Compiled once per snapshot (cached on the frozen config object) so a
 * detector pass does Set/Map lookups, not pattern scans.
 */
import type { Config } from './config.ts';
import { compileHostSet, type HostPatternMap, normalizeHostFast } from './host-pattern.ts';
import type { PolicySnapshot, ProcessInfo } from './types.ts';

/** Who/what a detector finding is about. Every field is optional; missing = unknown. */
export interface ExceptionSubject {
  /** A process name, or the attributed process (its name and exe basename are both tried). */
  readonly process?: string | ProcessInfo | null;
  readonly user?: string | null;
  readonly host?: string | null;
  /** Destination host name (or IP literal). */
  readonly destination?: string | null;
}

interface CompiledException {
  readonly detectors: ReadonlySet<string>;
  readonly process: ReadonlySet<string> | null;
  readonly user: ReadonlySet<string> | null;
  readonly host: ReadonlySet<string> | null;
  readonly destination: HostPatternMap<true> | null;
}

interface CompiledLookups {
  readonly exceptions: readonly CompiledException[];
  readonly approvedUpload: HostPatternMap<true>;
  readonly scanSources: ReadonlyArray<{ host: string | null; user: string | null; process: ReadonlySet<string> | null }>;
}

const cache = new WeakMap<object, CompiledLookups>();

/** Process names compare case-insensitively, without directory and without a Windows `.exe`. */
export function normalizeProcessName(name: string): string {
  const base = name.slice(Math.max(name.lastIndexOf('/'), name.lastIndexOf('\\')) + 1).toLowerCase();
  return base.endsWith('.exe') ? base.slice(0, -4) : base;
}

function processNames(p: string | ProcessInfo | null | undefined): string[] {
  if (p === null || p === undefined) return [];
  if (typeof p === 'string') return [normalizeProcessName(p)];
  const out = [normalizeProcessName(p.name)];
  if (p.exe) out.push(normalizeProcessName(p.exe));
  return out;
}

function compile(config: Readonly<Config>): CompiledLookups {
  const setOf = (list: readonly string[] | undefined, norm: (s: string) => string = (s) => s) =>
    list === undefined ? null : new Set(list.map(norm));
  return {
    exceptions: config.exceptions.map((e) => ({
      detectors: new Set(e.detectors),
      process: setOf(e.process, normalizeProcessName),
      user: setOf(e.user),
      host: setOf(e.host),
      destination: e.destination === undefined ? null : compileHostSet(e.destination),
    })),
    approvedUpload: compileHostSet(config.approvedUploadDestinations),
    scanSources: config.expectedScanSources.map((s) => ({
      host: s.host ?? null,
      user: s.user ?? null,
      process: setOf(s.process, normalizeProcessName),
    })),
  };
}

function lookups(snapshot: PolicySnapshot): CompiledLookups {
  let c = cache.get(snapshot.config);
  if (c === undefined) {
    c = compile(snapshot.config);
    cache.set(snapshot.config, c);
  }
  return c;
}

function anyIn(set: ReadonlySet<string> | null, values: readonly string[]): boolean {
  if (set === null) return true;
  return values.some((v) => set.has(v));
}

/**
 * True when an `exceptions` entry exempts this subject from `detector`: the entry names the
 * detector and every criterion it sets (process, user, host, destination) matches one of its values.
 */
export function exceptionApplies(snapshot: PolicySnapshot, detector: string, subject: ExceptionSubject): boolean {
  const procs = processNames(subject.process);
  const dest = subject.destination ? normalizeHostFast(subject.destination) : null;
  for (const e of lookups(snapshot).exceptions) {
    if (!e.detectors.has(detector)) continue;
    if (!anyIn(e.process, procs)) continue;
    if (!anyIn(e.user, subject.user ? [subject.user] : [])) continue;
    if (!anyIn(e.host, subject.host ? [subject.host] : [])) continue;
    if (e.destination !== null && (dest === null || !e.destination.matches(dest))) continue;
    return true;
  }
  return false;
}

/** True when `host` matches `approvedUploadDestinations` (label-aware wildcards, IDN, case). */
export function isApprovedUploadDestination(snapshot: PolicySnapshot, host: string): boolean {
  return lookups(snapshot).approvedUpload.matches(normalizeHostFast(host));
}

/**
 * True when the identity is an expected scan source (`expectedScanSources`): every field an entry
 * sets (host, user, process) matches.
 */
export function isExpectedScanSource(
  snapshot: PolicySnapshot,
  who: { host?: string | null; user?: string | null; process?: string | ProcessInfo | null },
): boolean {
  const procs = processNames(who.process);
  return lookups(snapshot).scanSources.some(
    (s) => (s.host === null || s.host === who.host) && (s.user === null || s.user === who.user) && anyIn(s.process, procs),
  );
}
