/**
 * Quarantined identities (SPEC §3 `detection.quarantineSec`): identity key → until when (ms).
 *
 * Keys are `host|user|process` (policy/detectors/match.ts identityKeyOf). An identity quarantined
 * with its user or process unknown (`host|-|-`: killed before an agent or a login named it) covers
 * the same host's flows whatever their user or process turns out to be: that was all it was known
 * by. The other way round it does not: `host|alice|uploader` does not quarantine alice's other
 * processes, nor a flow whose process is not known yet (the agent's report decides).
 */
import type { Decision, Mode } from '../../policy/types.ts';

export class Quarantine {
  private readonly until = new Map<string, number>();

  /** The live entries (read-only view for the admin side and tests). */
  get entries(): ReadonlyMap<string, number> {
    return this.until;
  }

  /** Quarantine `key` until `untilMs`. */
  put(key: string, untilMs: number): void {
    this.until.set(key, untilMs);
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
    let until = this.live(key, now, isPruning);
    if (until !== 0 || this.until.size === 0) return until;
    const p = key.lastIndexOf('|');
    const u = key.lastIndexOf('|', p - 1);
    if (p < 0 || u < 0) return 0;
    const host = key.slice(0, u);
    const user = key.slice(u + 1, p);
    const proc = key.slice(p + 1);
    if (proc !== '-') until = this.live(`${host}|${user}|-`, now, isPruning);
    if (until === 0 && user !== '-') until = this.live(`${host}|-|${proc}`, now, isPruning);
    if (until === 0 && user !== '-' && proc !== '-') until = this.live(`${host}|-|-`, now, isPruning);
    return until;
  }

  private live(key: string, now: number, isPruning: boolean): number {
    const until = this.until.get(key);
    if (until === undefined) return 0;
    if (until > now) return until;
    if (isPruning) this.until.delete(key);
    return 0;
  }
}

/**
 * The refusal of a connection whose identity is quarantined until `until` (ms), in `mode`;
 * `isWouldBe`: monitor mode's, for an identity enforce mode would have quarantined.
 */
export function quarantineDecision(until: number, mode: Mode, isWouldBe = false): Decision {
  const when = new Date(until).toISOString();
  return {
    verdict: mode === 'enforce' ? 'block' : 'would-block',
    reason: 'quarantine',
    detector: 'quarantine',
    mode,
    matchedRule: null,
    reasons: [isWouldBe ? `identity would be quarantined until ${when} (enforce mode would have quarantined it)` : `identity quarantined until ${when}`],
  };
}
