/**
 * Quarantined identities (SPEC §3 `detection.quarantineSec`): identity key → until when (ms), since
 * when and what put it there. An operator may release one before its time (DELETE
 * /v1/quarantines/{key}). Kept in memory only: a restart ends every quarantine (state.path holds
 * baselines, never quarantines).
 *
 * Keys are `host|user|process` (policy/detectors/match.ts identityKeyOf). An identity quarantined
 * with its user or process unknown (`host|-|-`: killed before an agent or a login named it) covers
 * the same host's flows whatever their user or process turns out to be: that was all it was known
 * by. The other way round it does not: `host|alice|uploader` does not quarantine alice's other
 * processes, nor a flow whose process is not known yet (the agent's report decides).
 */
import type { Decision, MatchedRule, Mode } from '../../policy/types.ts';

/** What put an identity in quarantine: when, which detector, and its alert (null: none known). */
export interface QuarantineCause {
  atMs: number;
  detector: string;
  alertId: string | null;
}

/** One live quarantine (the admin API lists them: GET /v1/quarantines). */
export interface QuarantineEntry {
  /** When this quarantine began: a cause that comes while it runs extends it, `sinceMs` stays. */
  readonly sinceMs: number;
  readonly untilMs: number;
  /** The latest cause: the one `untilMs` counts from. */
  readonly detector: string;
  readonly alertId: string | null;
}

/** Entries held before `put` first drops the expired ones (see `pruneAt`). */
const MIN_PRUNE_AT = 1024;

export class Quarantine {
  private readonly until = new Map<string, QuarantineEntry>();
  /**
   * The size at which `put` next drops expired entries: twice the entries it kept last time (at least
   * MIN_PRUNE_AT), so the walk is O(1) per quarantine amortised. An expired entry went only when its
   * key was looked up again or the admin API listed the quarantines: the identities that came, were
   * quarantined and never came back piled up for the process's life.
   */
  private pruneAt = MIN_PRUNE_AT;

  /** The entries, expired ones not yet pruned included (read-only view for the admin side and tests). */
  get entries(): ReadonlyMap<string, QuarantineEntry> {
    return this.until;
  }

  /** Quarantine `key` until `untilMs` for `cause`; one already running keeps its start. */
  put(key: string, untilMs: number, cause: QuarantineCause): void {
    const running = this.until.get(key);
    const sinceMs = running !== undefined && running.untilMs > cause.atMs ? running.sinceMs : cause.atMs;
    this.until.set(key, { sinceMs, untilMs, detector: cause.detector, alertId: cause.alertId });
    if (this.until.size >= this.pruneAt) this.pruneExpired(cause.atMs);
  }

  /** Drop the entries expired at `now`. */
  private pruneExpired(now: number): void {
    for (const [key, entry] of this.until) if (entry.untilMs <= now) this.until.delete(key);
    this.pruneAt = Math.max(MIN_PRUNE_AT, 2 * this.until.size);
  }

  /**
   * Release `key`'s own entry now (an operator's decision, DELETE /v1/quarantines/{key}): what was
   * live, or null. Less specific entries of the same host are theirs to release.
   */
  release(key: string, now: number): QuarantineEntry | null {
    const entry = this.until.get(key);
    if (entry === undefined) return null;
    this.until.delete(key);
    return entry.untilMs > now ? entry : null;
  }

  /** The live entries at `now`, expired ones pruned. */
  live(now: number): Array<[string, QuarantineEntry]> {
    const out: Array<[string, QuarantineEntry]> = [];
    for (const [key, entry] of this.until) {
      if (entry.untilMs > now) out.push([key, entry]);
      else this.until.delete(key);
    }
    return out;
  }

  /**
   * Until when the identity `key` is quarantined at `now`, by its own entry or a less specific one
   * of the same host; 0 when it is not. Expired entries met on the way go.
   */
  quarantinedUntil(key: string, now: number): number {
    return this.lookUp(key, now, true);
  }

  /** `quarantinedUntil` changing nothing, expired entries included (the policy dry run). */
  peekUntil(key: string, now: number): number {
    return this.lookUp(key, now, false);
  }

  private lookUp(key: string, now: number, isPruning: boolean): number {
    let until = this.untilOf(key, now, isPruning);
    if (until !== 0 || this.until.size === 0) return until;
    const p = key.lastIndexOf('|');
    const u = key.lastIndexOf('|', p - 1);
    if (p < 0 || u < 0) return 0;
    const host = key.slice(0, u);
    const user = key.slice(u + 1, p);
    const proc = key.slice(p + 1);
    if (proc !== '-') until = this.untilOf(`${host}|${user}|-`, now, isPruning);
    if (until === 0 && user !== '-') until = this.untilOf(`${host}|-|${proc}`, now, isPruning);
    if (until === 0 && user !== '-' && proc !== '-') until = this.untilOf(`${host}|-|-`, now, isPruning);
    return until;
  }

  private untilOf(key: string, now: number, isPruning: boolean): number {
    const entry = this.until.get(key);
    if (entry === undefined) return 0;
    if (entry.untilMs > now) return entry.untilMs;
    if (isPruning) this.until.delete(key);
    return 0;
  }
}

/**
 * The parts of an identity key `host|user|process` (policy/detectors/match.ts identityKeyOf), `-`
 * (not known) as null. The host may hold `|` no more than the others: the last two split it.
 */
export function identityKeyParts(key: string): { host: string; user: string | null; process: string | null } {
  const p = key.lastIndexOf('|');
  const u = p < 0 ? -1 : key.lastIndexOf('|', p - 1);
  if (p < 0 || u < 0) return { host: key, user: null, process: null };
  const part = (s: string): string | null => (s === '-' || s === '' ? null : s);
  return { host: key.slice(0, u), user: part(key.slice(u + 1, p)), process: part(key.slice(p + 1)) };
}

/**
 * The refusal of a connection whose identity is quarantined until `until` (ms), in `mode`;
 * `isWouldBe`: monitor mode's, for an identity enforce mode would have quarantined. `matchedRule`
 * is the allow entry the policy admitted the connection by (the quarantine is judged after the
 * policy, as a connect-time detector is, and keeps it as connectDecision does).
 */
export function quarantineDecision(until: number, mode: Mode, matchedRule: MatchedRule | null, isWouldBe = false): Decision {
  const when = new Date(until).toISOString();
  return {
    verdict: mode === 'enforce' ? 'block' : 'would-block',
    reason: 'quarantine',
    detector: 'quarantine',
    mode,
    matchedRule,
    reasons: [isWouldBe ? `identity would be quarantined until ${when} (enforce mode would have quarantined it)` : `identity quarantined until ${when}`],
  };
}
