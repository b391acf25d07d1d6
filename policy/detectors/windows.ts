/**
 * Sliding-window counters used by `DetectionState`. Every call takes the time explicitly; nothing
 * reads a clock. Windows are pruned lazily when touched, so idle keys cost nothing per sweep.
 */

/**
 * A bucketed running sum: `add(t, v)`, then `sumSince(t0)` over the buckets not older than t0. The
 * buckets are one array, `[start, value, start, value, …]`, made at the first add: most of an
 * identity's windows hold a bucket or two, or none (two arrays, each grown to V8's 17 slots at its
 * first push, were most of an idle identity's memory).
 */
export class WindowSum {
  /** Bucket starts and their sums, interleaved, live from index `head` (even); null until the first add. */
  private buckets: number[] | null = null;
  private head = 0;

  constructor(
    private readonly bucketMs: number,
    private readonly horizonMs: number,
  ) {}

  /** Adds `v` at time `t` (times are non-decreasing in practice; a late add joins the last bucket). */
  add(t: number, v: number): void {
    if (v === 0) return;
    const b = Math.floor(t / this.bucketMs) * this.bucketMs;
    const list = this.buckets;
    if (list === null) {
      this.buckets = [b, v];
      return;
    }
    const n = list.length;
    if (n > this.head && list[n - 2]! >= b) list[n - 1]! += v;
    else list.push(b, v);
    this.prune(list, t);
  }

  /** Sum of the buckets that overlap [since, ∞). */
  sumSince(since: number): number {
    const list = this.buckets;
    if (list === null) return 0;
    let s = 0;
    for (let i = list.length - 2; i >= this.head; i -= 2) {
      if (list[i]! + this.bucketMs <= since) break;
      s += list[i + 1]!;
    }
    return s;
  }

  /** Buckets held, expired ones not yet compacted away included (DetectionState.footprint). */
  get bucketCount(): number {
    return this.buckets === null ? 0 : this.buckets.length / 2;
  }

  private prune(list: number[], now: number): void {
    const min = now - this.horizonMs;
    while (this.head < list.length && list[this.head]! + this.bucketMs <= min) this.head += 2;
    // Compact once the dead prefix dominates (more than 64 buckets), so the array stays O(horizon / bucket).
    if (this.head > 128 && this.head * 2 > list.length) {
      list.splice(0, this.head);
      this.head = 0;
    }
  }
}

/**
 * Distinct keys with their last-seen time, kept in time order (a touch moves the key to the end),
 * pruned from the front. `size` after `prune(since)` is the distinct count in the window.
 */
export class DistinctWindow<V = undefined> {
  readonly map = new Map<string, { t: number; v: V }>();
  /** The key touched last, i.e. the map's last entry while it is in the map. */
  private lastKey: string | undefined = undefined;

  constructor(
    private readonly maxKeys: number,
    private readonly evicted: ((key: string, v: V) => void) | null = null,
  ) {}

  /**
   * Records `key` at `t`; returns true when the key was not in the window. Past `maxKeys` the
   * oldest keys go in a batch (see evictOldest).
   */
  touch(key: string, t: number, v: V): boolean {
    if (key === this.lastKey) {
      // Already the last entry: update it where it is (a busy identity touches the same key per flow,
      // and each delete + set would leave a deleted slot in the map's table).
      const e = this.map.get(key);
      if (e !== undefined) {
        e.t = t;
        e.v = v;
        return false;
      }
    }
    const had = this.map.delete(key);
    this.map.set(key, { t, v });
    this.lastKey = key;
    if (this.map.size > this.maxKeys) {
      evictOldest(this.map, this.map.size - this.maxKeys + evictionBatch(this.maxKeys), (k, e) => this.dropped(k, e.v));
    }
    return !had;
  }

  /** Drops keys last seen before `since`; returns the remaining count. */
  prune(since: number): number {
    for (const [k, e] of this.map) {
      if (e.t >= since) break;
      this.map.delete(k);
      this.dropped(k, e.v);
    }
    return this.map.size;
  }

  /** `key` (its value `v`) left the window: evicted or pruned. */
  protected dropped(key: string, v: V): void {
    this.evicted?.(key, v);
  }
}

/**
 * A DistinctWindow whose values name a group (an address), with `counts` its keys per group: the
 * caller counts a new key in, the window counts out those it drops. A class, not an `evicted`
 * callback: that closure (and its context) was made per identity.
 */
export class CountedWindow extends DistinctWindow<string> {
  readonly counts = new Map<string, number>();

  protected override dropped(_key: string, group: string): void {
    const c = (this.counts.get(group) ?? 1) - 1;
    if (c <= 0) this.counts.delete(group);
    else this.counts.set(group, c);
  }
}

/** Coefficient of variation of the gaps between sorted times; null with fewer than 2 gaps. */
export function intervalJitter(times: readonly number[]): { meanMs: number; cv: number } | null {
  if (times.length < 3) return null;
  const gaps: number[] = [];
  for (let i = 1; i < times.length; i++) gaps.push(times[i]! - times[i - 1]!);
  const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
  if (mean <= 0) return null;
  const variance = gaps.reduce((a, g) => a + (g - mean) ** 2, 0) / gaps.length;
  return { meanMs: mean, cv: Math.sqrt(variance) / mean };
}

/**
 * How many entries a full bounded map drops at once: 1/16 of its bound. Finding the oldest entry
 * of a JS Map means iterating from the front of its table, over the slots of every entry deleted
 * since the table was last rehashed — and a map that moves keys to the end on each use and evicts
 * from the front piles those slots up exactly there. Evicting one entry per insertion made each
 * insertion cost O(table size) (at 12,000 flows/s, 16 % of the gateway's CPU and sweeps of up to
 * a second); evicting a batch makes that scan once per max/16 insertions.
 */
export function evictionBatch(max: number): number {
  return Math.max(1, Math.floor(max / 16));
}

/** Delete the `n` oldest entries of `map` (insertion order), telling `onEvict` about each. */
export function evictOldest<K, V>(map: Map<K, V>, n: number, onEvict: ((key: K, value: V) => void) | null): void {
  let left = n;
  for (const [k, v] of map) {
    if (left-- <= 0) break;
    map.delete(k);
    onEvict?.(k, v);
  }
}

/**
 * A Map bounded to `max` entries that evicts the least recently set/read keys, a batch at a time
 * (evictionBatch). Used instead of lru-cache for maps that empty often: lru-cache clears its
 * preallocated arrays (O(max)) each time its size drops to zero.
 */
export class BoundedMap<K, V> {
  private readonly map = new Map<K, V>();
  /**
   * The most recently used key: using it again needs no move to the end (a busy identity is looked
   * up once per flow, and each move leaves a deleted slot behind).
   */
  private newest: K | undefined = undefined;

  constructor(private readonly max: number) {}

  get size(): number {
    return this.map.size;
  }

  /** The value, refreshed as most recently used. */
  get(key: K): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined && key !== this.newest) {
      this.map.delete(key);
      this.map.set(key, v);
      this.newest = key;
    }
    return v;
  }

  /** The value without touching its recency (hot paths that read every entry every sweep). */
  peek(key: K): V | undefined {
    return this.map.get(key);
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  set(key: K, value: V): void {
    if (key === this.newest && this.map.has(key)) {
      this.map.set(key, value);
      return;
    }
    this.map.delete(key);
    this.map.set(key, value);
    this.newest = key;
    if (this.map.size > this.max) evictOldest(this.map, this.map.size - this.max + evictionBatch(this.max), null);
  }

  delete(key: K): boolean {
    if (key === this.newest) this.newest = undefined;
    return this.map.delete(key);
  }

  /** Entries, least recently used first. */
  entries(): IterableIterator<[K, V]> {
    return this.map.entries();
  }
}
