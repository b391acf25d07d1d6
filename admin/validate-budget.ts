/**
 * The event-loop budget of `POST /v1/policy/validate` for read tokens. A validation parses and
 * compiles the draft synchronously, on the loop the proxy and SOCKS listeners run on: a 1 MB policy
 * held it 70–250 ms, and four read-token clients posting one in a loop held a CONNECT echo's answers
 * back up to 849 ms (p50 631 ms). Validations now run one at a time: after one that took t ms, the
 * next starts only k·t ms later (k = 4: at most a fifth of the loop over time). Callers waiting for
 * their turn queue, a few per token and a few in all; beyond that they are refused (429 with
 * Retry-After). An admin token's validation and PUT /v1/policy are the operator's own: they neither
 * wait nor count (docs/spec-notes.md).
 */

/** How the budget is set: the defaults below, or a test's. */
export interface ValidateBudgetOptions {
  /** After a validation of t ms the next waits idleFactor·t ms (4: validation holds at most 20 % of the loop). */
  idleFactor?: number;
  /** Callers of one token that may wait for their turn (the one running not counted). */
  maxWaitingPerToken?: number;
  /** Callers that may wait in all. */
  maxWaiting?: number;
  /** Clock in ms (performance.now()). */
  now?: () => number;
}

interface Waiter {
  token: string;
  start: () => void;
}

/** A turn to validate: `done(ms)` with the event-loop time it took, exactly once. */
export interface ValidateTurn {
  done(ms: number): void;
}

/** Refused: no place in the queue; the seconds to send as Retry-After. */
export interface ValidateRefusal {
  retryAfterSec: number;
}

const DEFAULTS = { idleFactor: 4, maxWaitingPerToken: 3, maxWaiting: 8 } as const;

/** One at a time, k·t apart, a bounded queue: see the file comment. */
export class ValidateBudget {
  private readonly idleFactor: number;
  private readonly maxWaitingPerToken: number;
  private readonly maxWaiting: number;
  private readonly now: () => number;
  private running = false;
  /** When the next validation may start (the clock's ms). */
  private nextStart = 0;
  /** The last validation's time, for Retry-After. */
  private lastMs = 0;
  private readonly waiting: Waiter[] = [];
  private readonly waitingPerToken = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  /** Validations refused (429) since start, before or after their body was read (gw_admin_validate_refused_total). */
  refusedTotal = 0;

  constructor(opts: ValidateBudgetOptions = {}) {
    this.idleFactor = opts.idleFactor ?? DEFAULTS.idleFactor;
    this.maxWaitingPerToken = opts.maxWaitingPerToken ?? DEFAULTS.maxWaitingPerToken;
    this.maxWaiting = opts.maxWaiting ?? DEFAULTS.maxWaiting;
    this.now = opts.now ?? (() => performance.now());
  }

  /**
   * Whether `token` would be refused now (asked before the body is read, so a refused one is never
   * parsed); a refusal is counted.
   */
  wouldRefuse(token: string): ValidateRefusal | null {
    const refused = this.refusalFor(token);
    if (refused) this.refusedTotal++;
    return refused;
  }

  private refusalFor(token: string): ValidateRefusal | null {
    if (!this.running && this.waiting.length === 0 && this.now() >= this.nextStart) return null;
    if (this.waiting.length < this.maxWaiting && (this.waitingPerToken.get(token) ?? 0) < this.maxWaitingPerToken) return null;
    // The queue ahead drained, one validation of the last one's length per place, k·t apart.
    const aheadMs = Math.max(0, this.nextStart - this.now()) + (this.waiting.length + 1) * (this.idleFactor + 1) * this.lastMs;
    return { retryAfterSec: Math.max(1, Math.ceil(aheadMs / 1000)) };
  }

  /** A turn for `token`, now or once those ahead have had theirs; a refusal when the queue is full. */
  enter(token: string): Promise<ValidateTurn> | ValidateRefusal {
    const refused = this.wouldRefuse(token);
    if (refused) return refused;
    return new Promise<ValidateTurn>((resolve) => {
      this.waiting.push({ token, start: () => resolve(this.turn()) });
      this.waitingPerToken.set(token, (this.waitingPerToken.get(token) ?? 0) + 1);
      this.next();
    });
  }

  private turn(): ValidateTurn {
    let ended = false;
    return {
      done: (ms) => {
        if (ended) return;
        ended = true;
        this.running = false;
        this.lastMs = ms;
        this.nextStart = this.now() + this.idleFactor * ms;
        this.next();
      },
    };
  }

  /** Starts the first waiter if its time has come, else sets one timer for it. */
  private next(): void {
    if (this.running || this.timer !== null) return;
    const first = this.waiting[0];
    if (!first) return;
    const wait = this.nextStart - this.now();
    if (wait > 0) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.next();
      }, Math.ceil(wait));
      return;
    }
    this.waiting.shift();
    const left = (this.waitingPerToken.get(first.token) ?? 1) - 1;
    if (left > 0) this.waitingPerToken.set(first.token, left);
    else this.waitingPerToken.delete(first.token);
    this.running = true;
    first.start();
  }
}
