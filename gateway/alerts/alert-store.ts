/**
 * Bounded in-memory alert store and bus. Every alert added gets an event id from one monotonically
 * increasing counter, so a Server-Sent Events client that reconnects with `Last-Event-ID` gets
 * exactly the alerts it missed (as long as they are still in the ring). Subscribers are called
 * synchronously in add order; one that throws is isolated from the others and from the caller.
 */

/** The fields of an alert (SPEC §5) the store relies on; the full record passes through untouched. */
export interface AlertLike {
  readonly id: string;
  /** ISO 8601. */
  readonly time: string;
  readonly detector: string;
}

export interface AlertEvent<A extends AlertLike = AlertLike> {
  /** Event id: strictly increasing across the process lifetime (never reused after eviction), and across restarts of `serve` (firstEventId). */
  readonly eventId: number;
  readonly alert: A;
}

export interface AlertQuery {
  /** An event id (digits) or an ISO time: only alerts after it. */
  since?: string;
  detector?: string;
  limit?: number;
}

export interface AlertStoreOptions {
  /** How many alerts to keep (oldest dropped first). */
  keep?: number;
  /**
   * The event ids of this store start after it (default 0). `serve` passes its start time in ms, so
   * the ids of one run are above every id an earlier run gave out (one alert per ms it ran would be
   * needed to catch up) and a client resuming with an id from before a restart gets everything the
   * new run raised: with ids from 1 again, its id skipped the new run's first alerts.
   */
  firstEventId?: number;
}

export class AlertStore<A extends AlertLike = AlertLike> {
  private readonly ring: Array<AlertEvent<A>> = [];
  private start = 0;
  private keep: number;
  private seq = 0;
  private readonly subscribers = new Set<(event: AlertEvent<A>) => void>();

  constructor(opts: AlertStoreOptions = {}) {
    this.keep = Math.max(1, opts.keep ?? 10_000);
    this.seq = Math.max(0, Math.floor(opts.firstEventId ?? 0));
  }

  /** Store an alert, notify subscribers; returns its event id. */
  add(alert: A): number {
    const event: AlertEvent<A> = { eventId: ++this.seq, alert };
    if (this.ring.length < this.keep) this.ring.push(event);
    else {
      this.ring[this.start] = event;
      this.start = (this.start + 1) % this.keep;
    }
    for (const fn of [...this.subscribers]) {
      try {
        fn(event);
      } catch {
        // A broken subscriber (a dead SSE socket, a failing webhook) must not stop the others.
      }
    }
    return event.eventId;
  }

  /**
   * Keep `keep` alerts from now on (`alerts.keep` after a reload, push or rollback): the newest of
   * those held stay, oldest first, and event ids go on. O(alerts held), once per change.
   */
  resize(keep: number): void {
    const next = Math.max(1, keep);
    if (next === this.keep) return;
    const held = Array.from(this.chronological());
    // No spread into push: a ring of 100,000s of alerts is too many arguments for one call.
    this.ring.length = 0;
    for (let i = Math.max(0, held.length - next); i < held.length; i++) this.ring.push(held[i] as AlertEvent<A>);
    this.start = 0;
    this.keep = next;
  }

  /** The id of the newest alert ever added (`firstEventId` = none). */
  get lastEventId(): number {
    return this.seq;
  }

  get size(): number {
    return this.ring.length;
  }

  /** Listen to new alerts; returns the unsubscribe function. */
  subscribe(fn: (event: AlertEvent<A>) => void): () => void {
    this.subscribers.add(fn);
    return () => {
      this.subscribers.delete(fn);
    };
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** Events newer than `afterEventId`, oldest first (SSE resume). */
  after(afterEventId: number, detector?: string): Array<AlertEvent<A>> {
    const out: Array<AlertEvent<A>> = [];
    for (const ev of this.chronological()) {
      if (ev.eventId > afterEventId && (!detector || ev.alert.detector === detector)) out.push(ev);
    }
    return out;
  }

  /**
   * Alerts matching a query, oldest first. With `since`, the first `limit` after it (so a poller
   * pages forward without gaps); without, the newest `limit`.
   */
  list(query: AlertQuery = {}): A[] {
    const limit = Math.max(0, query.limit ?? 100);
    const since = parseSince(query.since);
    const matched: A[] = [];
    for (const ev of this.chronological()) {
      if (query.detector && ev.alert.detector !== query.detector) continue;
      if (since.kind === 'event' && ev.eventId <= since.value) continue;
      if (since.kind === 'time' && !(Date.parse(ev.alert.time) > since.value)) continue;
      matched.push(ev.alert);
      if (since.kind !== 'none' && matched.length >= limit) break;
    }
    return since.kind === 'none' ? matched.slice(Math.max(0, matched.length - limit)) : matched;
  }

  private *chronological(): Generator<AlertEvent<A>> {
    const n = this.ring.length;
    for (let i = 0; i < n; i++) yield this.ring[(this.start + i) % n] as AlertEvent<A>;
  }
}

type Since = { kind: 'none' } | { kind: 'event'; value: number } | { kind: 'time'; value: number };

/** ISO 8601 / RFC 3339: a date, or a date and time (seconds, fraction and offset optional). */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:[Zz]|[+-]\d{2}:?\d{2})?)?$/;

/**
 * ms since epoch of an ISO 8601 time, or NaN. Only ISO: Date.parse alone takes anything its legacy
 * parser can read, so `06/12/2026` was 12 June (month first) and `yesterday 1` the year 2001.
 */
function parseIsoTime(text: string): number {
  return ISO_TIME.test(text) ? Date.parse(text.replace(' ', 'T')) : Number.NaN;
}

function parseSince(since: string | undefined): Since {
  if (since === undefined || since === '') return { kind: 'none' };
  if (/^\d+$/.test(since)) return { kind: 'event', value: Number(since) };
  const t = parseIsoTime(since);
  // An unparsable value matches nothing rather than everything: the route validates it first.
  return { kind: 'time', value: Number.isNaN(t) ? Number.POSITIVE_INFINITY : t };
}

/** True when `since` is an event id or an ISO 8601 time (the route's 400 check). */
export function isValidSince(since: string): boolean {
  return /^\d+$/.test(since) || !Number.isNaN(parseIsoTime(since));
}
