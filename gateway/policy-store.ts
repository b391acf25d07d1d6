/**
 * The one holder of the running policy (SPEC §3 reload, §6 policy/mode/history/rollback).
 *
 * Reload is parse → validate → compile → freeze → swap of a single reference: flows that are
 * already established keep the snapshot they were admitted with, new flows read `current()` and see
 * the new policy at once. A reload that fails at any step changes nothing (not the snapshot, not
 * the version counter, not the history) and returns every error with its path.
 *
 * Events: 'change' ({ snapshot, previous, entry }) after every successful swap, 'mode'
 * ({ mode, previous, author }) after a runtime mode change.
 */
import { EventEmitter } from 'node:events';
import { compilePolicy } from '../policy/compile.ts';
import type { Config } from '../policy/config.ts';
import { type ConfigError, type LoadResult, loadConfig, validateConfig } from '../policy/load-config.ts';
import type { Mode, PolicySnapshot } from '../policy/types.ts';

export type PolicySourceKind = 'file' | 'api' | 'rollback' | 'startup';

export interface PolicyVersion {
  readonly version: number;
  /** ISO 8601. */
  readonly time: string;
  readonly author: string | null;
  readonly source: PolicySourceKind | string;
  /** The text as given (file / API body), or null when the config came as an object. */
  readonly configText: string | null;
  readonly config: Readonly<Config>;
  /** For source 'rollback': the version restored. */
  readonly restoredFrom?: number;
}

export type ReloadResult = { ok: true; version: number } | { ok: false; errors: ConfigError[] };

export interface ReloadMeta {
  author?: string | null;
  source?: PolicySourceKind | string;
  /** Input format when `input` is text; default YAML (a superset of JSON). */
  format?: 'yaml' | 'json';
  /** A further condition on the validated config (the admin API's: an admin token remains); errors refuse it. */
  check?: ConfigCheck;
}

/** Errors that refuse a validated config, or none. */
export type ConfigCheck = (config: Readonly<Config>) => readonly ConfigError[];

export interface PolicyStoreOptions {
  /** How many versions to keep for history and rollback (default 20). */
  keep?: number;
  /** Injected clock for history times (tests). */
  now?: () => number;
}

export interface PolicyChange {
  readonly snapshot: PolicySnapshot;
  readonly previous: PolicySnapshot;
  readonly entry: PolicyVersion;
}

export class PolicyStore extends EventEmitter {
  private snapshot: PolicySnapshot;
  private override: Mode | null = null;
  private lastVersion: number;
  private readonly versions: PolicyVersion[] = [];
  private readonly keep: number;
  private readonly now: () => number;

  /**
   * `initial` must be a validated Config (from `loadConfig`) or config text, which is validated
   * here and throws when invalid: at start-up a bad policy is fatal, unlike on reload.
   */
  constructor(
    initial: Config | string,
    meta: { author?: string | null; source?: PolicySourceKind | string; text?: string | null } = {},
    opts: PolicyStoreOptions = {},
  ) {
    super();
    this.keep = Math.max(1, opts.keep ?? 20);
    this.now = opts.now ?? Date.now;
    let config: Config;
    let text = meta.text ?? null;
    if (typeof initial === 'string') {
      const r = loadConfig(initial);
      if (!r.ok) throw new Error(`invalid policy: ${r.errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
      config = r.config;
      text = initial;
    } else config = initial;
    this.lastVersion = 1;
    this.snapshot = compilePolicy(config, 1);
    this.record(this.snapshot, meta.author ?? 'startup', meta.source ?? 'startup', text);
  }

  /** The running snapshot (one reference; hold it for the life of a flow). */
  current(): PolicySnapshot {
    return this.snapshot;
  }

  /** Runtime global mode (admin API), or null for the config's own `mode`. */
  modeOverride(): Mode | null {
    return this.override;
  }

  /** The mode in force globally: the runtime override, else the config's. */
  globalMode(): Mode {
    return this.override ?? this.snapshot.config.mode;
  }

  /** Sets (or with null clears) the runtime global mode; role overrides still apply. */
  setMode(mode: Mode | null, author: string | null = null): void {
    const previous = this.override;
    this.override = mode;
    if (previous !== mode) this.emit('mode', { mode, previous, author });
  }

  /** Highest version number handed out so far. */
  version(): number {
    return this.snapshot.version;
  }

  /**
   * Replaces the policy: text is parsed and validated, an object is validated, then compiled and
   * swapped in under a new version number. On any error nothing changes.
   */
  reload(input: string | Config | object, meta: ReloadMeta = {}): ReloadResult {
    const r = this.validate(input, meta);
    if (!r.ok) return { ok: false, errors: r.errors };
    return this.apply(r.config, typeof input === 'string' ? input : null, meta);
  }

  /**
   * reload's first half: `input` parsed and validated, nothing changed. For a caller that has more
   * to check of the config before it is swapped (policy-writer.ts reads the TLS files it names).
   */
  validate(input: string | Config | object, meta: Pick<ReloadMeta, 'format'> = {}): LoadResult {
    return typeof input === 'string' ? loadConfig(input, { format: meta.format }) : validateConfig(input);
  }

  /** reload's second half: a config `validate` returned (`text`: its input when text), checked and swapped in. */
  apply(config: Config, text: string | null, meta: ReloadMeta = {}): ReloadResult {
    const refused = meta.check?.(config) ?? [];
    if (refused.length > 0) return { ok: false, errors: [...refused] };
    // loadConfig/validateConfig return a fresh object: compile may freeze it in place.
    return this.swap(config, meta.author ?? null, meta.source ?? 'api', text);
  }

  /** Restores a version kept in history as a new version (source 'rollback'). */
  rollback(version: number, meta: { author?: string | null; check?: ConfigCheck } = {}): ReloadResult {
    const v = this.versions.find((e) => e.version === version);
    if (v === undefined) {
      const kept = this.versions.map((e) => e.version).join(', ');
      return { ok: false, errors: [{ path: '(version)', message: `version ${version} is not in the history (kept: ${kept})` }] };
    }
    const refused = meta.check?.(v.config) ?? [];
    if (refused.length > 0) return { ok: false, errors: [...refused] };
    // Kept configs were validated when they were loaded; compile from the frozen copy.
    return this.swap(structuredClone(v.config) as Config, meta.author ?? null, 'rollback', v.configText, version);
  }

  /** The version serving now (the newest in the history). */
  running(): PolicyVersion {
    // The constructor records the first version, and trimming keeps the newest.
    return this.versions[this.versions.length - 1] as PolicyVersion;
  }

  /** Call `fn` after every successful swap (the 'change' event); returns the unsubscribe. */
  onChange(fn: () => void): () => void {
    const listener = (): void => fn();
    this.on('change', listener);
    return () => this.off('change', listener);
  }

  /** The kept versions, oldest first. */
  history(): readonly PolicyVersion[] {
    return this.versions;
  }

  private swap(config: Config, author: string | null, source: string, text: string | null, restoredFrom?: number): ReloadResult {
    let next: PolicySnapshot;
    try {
      next = compilePolicy(config, this.lastVersion + 1, { owned: true });
    } catch (e) {
      // Compilation of a validated config should not fail; if it does, the old policy keeps serving.
      return { ok: false, errors: [{ path: '(compile)', message: (e as Error).message }] };
    }
    const previous = this.snapshot;
    this.lastVersion = next.version;
    this.snapshot = next;
    const entry = this.record(next, author, source, text, restoredFrom);
    this.emit('change', { snapshot: next, previous, entry } satisfies PolicyChange);
    return { ok: true, version: next.version };
  }

  private record(snap: PolicySnapshot, author: string | null, source: string, text: string | null, restoredFrom?: number): PolicyVersion {
    const entry: PolicyVersion = Object.freeze({
      version: snap.version,
      time: new Date(this.now()).toISOString(),
      author,
      source,
      configText: text,
      config: snap.config,
      ...(restoredFrom === undefined ? {} : { restoredFrom }),
    });
    this.versions.push(entry);
    if (this.versions.length > this.keep) this.versions.splice(0, this.versions.length - this.keep);
    return entry;
  }
}
