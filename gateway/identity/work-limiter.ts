/**
 * A small FIFO concurrency limiter for work that runs on the libuv thread pool.
 *
 * Why: scrypt derivations and `dns.lookup` share that pool (4 threads by default). A burst of logins
 * with distinct passwords must not occupy every thread, or DNS for all other connections stalls
 * behind it. Password checks therefore take at most half the pool; the rest queue in order, up to
 * `maxQueued`: past that a job is refused (`hasRoom()` says so beforehand, `run()` rejects with
 * WorkShedError), so a flood of logins holds neither memory nor everyone's logins without bound.
 */
import { availableParallelism } from 'node:os';

/** A job refused because the limiter's queue was full. */
export class WorkShedError extends Error {
  constructor() {
    super('work queue full');
    this.name = 'WorkShedError';
  }
}

export class WorkLimiter {
  private active = 0;
  private readonly queue: Array<() => void> = [];
  /** Jobs refused because the queue was full (monotonic). */
  shedTotal = 0;

  constructor(
    readonly maxConcurrent: number,
    readonly maxQueued: number = Number.POSITIVE_INFINITY,
  ) {}

  /** Jobs waiting for a slot (for metrics and tests). */
  get waiting(): number {
    return this.queue.length;
  }

  /** True when a job started now would run or be queued, not refused. */
  hasRoom(): boolean {
    return this.active < this.maxConcurrent || this.queue.length < this.maxQueued;
  }

  /** Runs `job` when a slot is free; the slot is released however the job ends. Rejects with WorkShedError when the queue is full. */
  async run<T>(job: () => Promise<T>): Promise<T> {
    if (this.active >= this.maxConcurrent) {
      if (this.queue.length >= this.maxQueued) {
        this.shedTotal++;
        throw new WorkShedError();
      }
      await new Promise<void>((resolve) => this.queue.push(resolve));
    } else this.active++;
    try {
      return await job();
    } finally {
      const next = this.queue.shift();
      // Hand the slot straight to the next job so `active` never dips below what is running.
      if (next) next();
      else this.active--;
    }
  }
}

/** Half the libuv pool (UV_THREADPOOL_SIZE, default 4), at least one. */
export function defaultPoolShare(): number {
  const pool = Number(process.env['UV_THREADPOOL_SIZE']) || 4;
  return Math.max(1, Math.min(Math.floor(pool / 2), availableParallelism()));
}

/**
 * scrypt derivations allowed to wait for a slot. With the per-source cap of the auth throttle
 * (16 in flight), one address fills an eighth of it; at ~50 ms a derivation on two threads a
 * login waits at most about 3 s behind a full queue, and is refused at once (407) past it.
 */
export const MAX_SCRYPT_QUEUED = 128;

/** The process-wide limiter for password hashing (the pool is process-wide too). */
export const scryptLimiter = new WorkLimiter(defaultPoolShare(), MAX_SCRYPT_QUEUED);
