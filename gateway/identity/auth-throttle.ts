/**
 * Slows down password and token guessing per source address.
 *
 * Each failed credential check is recorded against the client address (sliding window of
 * `windowMs`). Once a source has `freeFailures` failures in the window, every further credential
 * check from it waits `baseDelayMs · 2^(failures − freeFailures)` (capped at `maxDelayMs`) before
 * it is answered — successes included, otherwise a quick answer would tell a guesser it hit.
 * Waiting is a timer, never a busy loop. A source with more than `maxPendingPerSource` checks
 * already waiting is answered at once with a refusal (shed) so parallel guessing gains nothing
 * and memory stays bounded. Sources are kept in an LRU of `maxSources`.
 *
 * A costly check (one that starts a scrypt derivation) counts as pending from before it runs until
 * it is answered, failures or not: one address cannot queue more than its share of derivations
 * (1,000 parallel wrong logins from one address used to hold every other client's login behind
 * them). Cheap checks (cached answers, tokens) of a source without failures pass straight through.
 *
 * The same class keyed by user name is the per-user failure budget (identity-resolver.ts), so
 * guessing one account from many addresses is slowed too.
 */
import { LRUCache } from 'lru-cache';

export interface AuthThrottleOptions {
  windowMs: number;
  freeFailures: number;
  baseDelayMs: number;
  maxDelayMs: number;
  maxPendingPerSource: number;
  maxSources: number;
  /** Failures remembered per source (older ones drop out; the count saturates here). */
  maxFailuresPerSource: number;
}

export const DEFAULT_AUTH_THROTTLE: AuthThrottleOptions = Object.freeze({
  windowMs: 60_000,
  freeFailures: 5,
  baseDelayMs: 250,
  maxDelayMs: 5_000,
  maxPendingPerSource: 16,
  maxSources: 10_000,
  maxFailuresPerSource: 64,
});

/** Counters for /metrics (monotonic except `sourcesTracked`). */
export interface AuthThrottleStats {
  failuresTotal: number;
  delayedTotal: number;
  delayMsTotal: number;
  shedTotal: number;
  sourcesTracked: number;
}

interface SourceState {
  /** Failure times, oldest first. */
  failures: number[];
  pending: number;
}

export type Sleep = (ms: number) => Promise<void>;

const noop = (): void => {};

const realSleep: Sleep = (ms) =>
  new Promise((resolve) => {
    // unref: a throttled login must not keep a draining gateway alive.
    setTimeout(resolve, ms).unref();
  });

/** Per-source failure windows and the delays derived from them. */
export class AuthThrottle {
  readonly options: AuthThrottleOptions;
  readonly stats: AuthThrottleStats = { failuresTotal: 0, delayedTotal: 0, delayMsTotal: 0, shedTotal: 0, sourcesTracked: 0 };
  private readonly sources: LRUCache<string, SourceState>;

  constructor(
    opts: Partial<AuthThrottleOptions> = {},
    private readonly now: () => number = Date.now,
    private readonly sleep: Sleep = realSleep,
  ) {
    this.options = { ...DEFAULT_AUTH_THROTTLE, ...opts };
    this.sources = new LRUCache({ max: this.options.maxSources });
  }

  /** Failures of `source` inside the window ending now. */
  failureCount(source: string): number {
    const s = this.sources.get(source);
    if (s === undefined) return 0;
    this.prune(s);
    return s.failures.length;
  }

  /** How long a credential check from `source` would wait now (0 = not throttled). */
  delayFor(source: string): number {
    const excess = this.failureCount(source) - this.options.freeFailures;
    if (excess < 0) return 0;
    return Math.min(this.options.maxDelayMs, this.options.baseDelayMs * 2 ** Math.min(excess, 30));
  }

  /**
   * Waits as long as `source` deserves before a credential check. Resolves to a release function
   * to call once the check is answered, or null when the source already has too many checks
   * waiting (or, `isCostly`, running): the caller then refuses without checking.
   */
  async acquire(source: string, isCostly = false): Promise<(() => void) | null> {
    const delay = this.delayFor(source);
    if (delay === 0 && !isCostly) return noop;
    const s = this.state(source);
    if (s.pending >= this.options.maxPendingPerSource) {
      this.stats.shedTotal++;
      return null;
    }
    s.pending++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      if (s.pending > 0) s.pending--;
    };
    if (delay === 0) return release;
    this.stats.delayedTotal++;
    this.stats.delayMsTotal += delay;
    try {
      await this.sleep(delay);
    } catch {
      // A sleep never rejects; if an injected one does, answering is still correct.
    }
    return release;
  }

  /** Records one failed credential check from `source`. */
  recordFailure(source: string): void {
    this.stats.failuresTotal++;
    const s = this.state(source);
    this.prune(s);
    s.failures.push(this.now());
    if (s.failures.length > this.options.maxFailuresPerSource) s.failures.shift();
    this.stats.sourcesTracked = this.sources.size;
  }

  private state(source: string): SourceState {
    let s = this.sources.get(source);
    if (s === undefined) {
      s = { failures: [], pending: 0 };
      this.sources.set(source, s);
      this.stats.sourcesTracked = this.sources.size;
    }
    return s;
  }

  private prune(s: SourceState): void {
    const cutoff = this.now() - this.options.windowMs;
    let i = 0;
    while (i < s.failures.length && s.failures[i]! <= cutoff) i++;
    if (i > 0) s.failures.splice(0, i);
  }
}
