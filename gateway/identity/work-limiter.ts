/**
 * A small FIFO concurrency limiter for work that runs on the libuv thread pool.
 *
 * Why: scrypt derivations and `dns.lookup` share that pool (4 threads by default). A burst of logins
 * with distinct passwords must not occupy every thread, or DNS for all other connections stalls
 * behind it. Password checks therefore take at most half the pool; the rest queue in order.
 */
import { availableParallelism } from 'node:os';

export class WorkLimiter {
  private active = 0;
  private readonly queue: Array<() => void> = [];

  constructor(readonly maxConcurrent: number) {}

  /** Jobs waiting for a slot (for metrics and tests). */
  get waiting(): number {
    return this.queue.length;
  }

  /** Runs `job` when a slot is free; the slot is released however the job ends. */
  async run<T>(job: () => Promise<T>): Promise<T> {
    if (this.active >= this.maxConcurrent) await new Promise<void>((resolve) => this.queue.push(resolve));
    else this.active++;
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

/** The process-wide limiter for password hashing (the pool is process-wide too). */
export const scryptLimiter = new WorkLimiter(defaultPoolShare());
