/**
 * An append-only log of JSON lines that survives its own write failures: the flow log's and the
 * audit trail's writer. The caller hands it whole lines (one Buffer may hold many); it writes them
 * in order, to stdout ("-") or to a file.
 *
 * A write can fail: a full disk (ENOSPC), a quota, an I/O error, a closed stdout pipe (EPIPE). The
 * log then keeps what it could not write instead of losing it:
 *  - the unwritten bytes stay queued, in order, and so does everything appended later: at most
 *    `backlogBytes` (64 MiB), past which lines are dropped and counted;
 *  - a file is reopened at its path every `retryMs` (1 s). Writing resumes at the exact byte where it
 *    stopped when the path is still the same file, ending where we left it: a line cut by a full disk
 *    is completed, not repeated. On another file (rotated, recreated) a cut line is written whole,
 *    and its start taken off the end of the file left behind;
 *  - a write that hangs (a stuck network file system, a FIFO whose reader stopped reading) is a
 *    failure too once it has taken STALL_MS, until it completes: the backlog is bounded and callers
 *    see `isFailing`, instead of records piling up in memory without limit. A FIFO is written
 *    without blocking (append-log-file.ts): a full pipe is waited out here, not in a pool thread,
 *    and given up at once when the drain's grace ends (giveUpWaitForRoom());
 *  - stdout cannot be reopened: it stays failed, and what it holds is reported lost at close;
 *  - `isFailing` is true meanwhile. Each change of state is reported once (`onStateChange`).
 * A file is written with positionless `write`s on an append-mode descriptor, one at a time, so the
 * log always knows how many bytes reached the file.
 *
 * This is the writer; the file's removal watch, rotation (`reopen()`) and close are AppendLog's
 * (append-log.ts), which reaches in here through the hooks below.
 */
import { close as closeFd, write as writeFd } from 'node:fs';
import { countLines, cutBack, ignore, isUnlinked, NEWLINE, type OpenFile, openAppend } from './append-log-file.ts';

/** Bytes held while the log cannot be written (~100,000 flow records). */
export const BACKLOG_BYTES = 64 * 1024 * 1024;
/** A failed file is reopened this often. */
export const RETRY_MS = 1000;
/** A file write not done after this long (a hung NFS mount, say) counts as a failure until it is. */
export const STALL_MS = 10_000;
/** A write to a full pipe (EAGAIN) is tried again after this long, doubling up to AGAIN_MAX_MS. */
const AGAIN_MS = 10;
const AGAIN_MAX_MS = 250;

/** A change of state worth one log line (the log has no logger of its own). */
export type AppendLogEvent =
  | { event: 'failed'; path: string; error: string; message: string; willRetry: boolean }
  | { event: 'recovered'; path: string; records: number; failedForMs: number }
  | { event: 'dropping'; path: string; backlogBytes: number }
  | { event: 'lost'; path: string; records: number }
  | { event: 'reopened'; path: string }
  /** lock: `<path>.lock` could not be made; written without it. */
  | { event: 'unlocked'; path: string; error: string }
  /** The open file had been removed: a new one is open at the path; `records` were written again, `unreadBytes` could not be read back. */
  | { event: 'replaced'; path: string; records: number; unreadBytes: number };

export interface AppendLogOptions {
  onStateChange?: (e: AppendLogEvent) => void;
  /** Tests only: a smaller backlog. */
  backlogBytes?: number;
  /** Tests only: a faster retry. */
  retryMs?: number;
  /**
   * Take `<path>.lock` (log-lock.ts) for a regular file: open() fails when another live gateway
   * holds it; a lock that cannot be made (a read-only directory) is reported ('unlocked').
   */
  lock?: boolean;
  /** Tests only: a shorter stall limit. */
  stallMs?: number;
}

export interface AppendLogStatus {
  failing: boolean;
  /** The error code (ENOSPC, EPIPE, …) of the write that failed, while failing. */
  error: string | null;
  /** Epoch ms of that failure, while failing. */
  since: number | null;
  /** Lines waiting to be written (while failing: held in memory until the log takes them). */
  backlogRecords: number;
  /** Lines lost for good: the backlog was full, or the log closed before it recovered. */
  droppedRecords: number;
}

export abstract class AppendLogWriter {
  readonly path: string;
  protected readonly opts: AppendLogOptions;
  protected readonly backlogLimit: number;
  /** stdout mode: the stream. */
  protected stdout: NodeJS.WritableStream | null = null;
  /** File mode: the open file. */
  protected file: OpenFile | null = null;
  /** A file opened by reopen(), taken over once the write in flight is done. */
  protected nextFile: OpenFile | null = null;
  /** Lines not yet written, oldest first (the first may be partly written already). */
  protected queue: Buffer[] = [];
  protected queuedBytes = 0;
  /** File mode: a write is in flight (one at a time). */
  protected isWriting = false;
  /** Bytes of the queue's first buffer already in the file (a write that stopped part-way). */
  protected headWritten = 0;
  protected failure: { code: string; since: number } | null = null;
  /** A reopened file is taking the held lines: writes go on although `failure` is still set. */
  private isRecovering = false;
  protected dropped = 0;
  private isDropping = false;
  protected retryTimer: NodeJS.Timeout | null = null;
  /** The recover() under way: one at a time (two closed each other's descriptor mid-write). */
  protected recovery: Promise<boolean> | null = null;
  /** Armed while a file write is in flight; when it fires the write is stalled. */
  protected stallTimer: NodeJS.Timeout | null = null;
  private isStalled = false;
  /** The write in flight last found its pipe full (EAGAIN) and waits on a timer for room. */
  private isWaitingForRoom = false;
  protected isClosed = false;
  /** A removed file is being replaced: writes wait for the new one. */
  protected isReplacing = false;
  /** Where the write in flight started in the file (a line's end: a healthy log writes whole lines). */
  protected writeStartsAt = 0;
  /** The open file, found removed while a write was in flight: replaced once that write is done. */
  protected removedFile: OpenFile | null = null;
  private idleWaiters: Array<() => void> = [];

  protected constructor(path: string, opts: AppendLogOptions) {
    this.path = path;
    this.opts = opts;
    this.backlogLimit = opts.backlogBytes ?? BACKLOG_BYTES;
  }

  /** True from a failed write until the log takes lines again. */
  get isFailing(): boolean {
    return this.failure !== null;
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  status(): AppendLogStatus {
    let records = 0;
    for (let i = 0; i < this.queue.length; i++) records += countLines((this.queue[i] as Buffer).subarray(i === 0 ? this.headWritten : 0));
    return {
      failing: this.failure !== null,
      error: this.failure?.code ?? null,
      since: this.failure?.since ?? null,
      backlogRecords: records,
      droppedRecords: this.dropped,
    };
  }

  /** Append whole lines (`lines` ends in a newline); `records` = how many, for the counts. */
  append(lines: Buffer, records: number): void {
    if (this.isClosed) return;
    if (this.stdout && this.failure === null) {
      this.stdout.write(lines, (err?: Error | null) => {
        if (err) this.holdAfterFailure(lines, err);
      });
      return;
    }
    if (this.failure !== null && this.queuedBytes + lines.length > this.backlogLimit) {
      this.drop(records);
      return;
    }
    this.queue.push(lines);
    this.queuedBytes += lines.length;
    this.pump();
  }

  /** stdout: a write failed (EPIPE, …); it and every later one are held (stdout does not come back). */
  private holdAfterFailure(lines: Buffer, err: Error): void {
    this.fail(err as NodeJS.ErrnoException);
    if (this.queuedBytes + lines.length > this.backlogLimit) this.drop(countLines(lines));
    else {
      this.queue.push(lines);
      this.queuedBytes += lines.length;
    }
  }

  protected readonly onStdoutError = (err: Error): void => {
    this.fail(err as NodeJS.ErrnoException);
  };

  private drop(records: number): void {
    this.dropped += records;
    if (this.isDropping) return;
    this.isDropping = true;
    this.opts.onStateChange?.({ event: 'dropping', path: this.path, backlogBytes: this.backlogLimit });
  }

  /** File mode: whether queued bytes can go to the file now. */
  private canWrite(): boolean {
    return this.file !== null && !this.isReplacing && (this.failure === null || this.isRecovering);
  }

  /** File mode: write the queue, one write at a time, all of it in one go. */
  protected pump(): void {
    const file = this.file;
    if (this.isWriting) return;
    if (file === null || !this.canWrite() || this.queue.length === 0) {
      this.wakeIdle();
      return;
    }
    // The head keeps the start of a line a failed write cut, though it is in the file: cut again
    // (the disk full again), a recovery on another file still knows the whole line.
    const head = this.queue[0] as Buffer;
    const lineStart = this.headWritten === 0 ? 0 : head.lastIndexOf(NEWLINE, this.headWritten - 1) + 1;
    const first = lineStart === 0 ? head : head.subarray(lineStart);
    const data = this.queue.length === 1 ? first : Buffer.concat([first, ...this.queue.slice(1)]);
    const offset = this.headWritten - lineStart;
    this.queue = [data];
    this.queuedBytes -= lineStart;
    this.headWritten = offset;
    this.isWriting = true;
    this.writeStartsAt = file.end;
    this.stallTimer = setTimeout(this.onStall, this.opts.stallMs ?? STALL_MS);
    this.stallTimer.unref();
    this.writeFrom(file, data, offset);
  }

  /**
   * A write has not come back: failing until it does (no retry: the stuck write holds the file). A
   * recovery's write that hangs ends that recovery; the log stays failed as it was.
   */
  private readonly onStall = (): void => {
    this.stallTimer = null;
    this.stall(`a write has not completed in ${this.opts.stallMs ?? STALL_MS} ms`);
  };

  private stall(message: string): void {
    if (!this.isWriting || (this.failure !== null && !this.isRecovering)) return;
    this.isStalled = true;
    if (this.isRecovering) this.isRecovering = false;
    else {
      this.failure = { code: 'ESTALLED', since: Date.now() };
      this.opts.onStateChange?.({ event: 'failed', path: this.path, error: 'ESTALLED', message, willRetry: true });
    }
    this.wakeIdle();
  }

  /**
   * The SIGTERM drain's grace is over: a write waiting for room in a pipe (its reader stopped) is
   * stalled from now, not STALL_MS after it started, so flush() and close() no longer wait for it
   * and close() reports what is held as lost. True if there was such a write. A write in a pool
   * thread (a regular file) cannot be given up: it is left to complete or stall as ever.
   */
  giveUpWaitForRoom(): boolean {
    if (!this.isWriting || !this.isWaitingForRoom || this.isStalled) return false;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.stall("a write was still waiting for room in the pipe when the drain's grace period ended");
    return this.isStalled;
  }

  private writeFrom(file: OpenFile, data: Buffer, offset: number, againMs = AGAIN_MS): void {
    writeFd(file.fd, data, offset, data.length - offset, null, (error, n) => {
      this.isWaitingForRoom = error?.code === 'EAGAIN';
      if (error?.code === 'EAGAIN') {
        // A pipe with no room (its reader behind): waited out as a blocking write would be, outside
        // the pool; the stall timer still counts. Given up once the log is closed.
        const retry = setTimeout(() => {
          if (this.file === file) this.writeFrom(file, data, offset, Math.min(againMs * 2, AGAIN_MAX_MS));
          else this.abandonWrite(file);
        }, againMs);
        retry.unref();
        return;
      }
      // A write that takes nothing would be retried forever: a failure like any other.
      const err = error ?? (n > 0 ? null : Object.assign(new Error('write took no bytes'), { code: 'EIO' }));
      if (!err) file.end += n;
      const done = err ? offset : offset + n;
      if (!err && done < data.length) {
        this.writeFrom(file, data, done);
        return;
      }
      this.isWriting = false;
      if (this.stallTimer) clearTimeout(this.stallTimer);
      this.stallTimer = null;
      const stalledSince = this.isStalled ? (this.failure?.since ?? Date.now()) : null;
      if (this.isStalled) {
        // The stuck write came back: the stall was the failure; what the write says decides now.
        this.isStalled = false;
        this.failure = null;
      }
      if (err) {
        // `data` is still the queue's head; `done` bytes of it are in the file.
        this.headWritten = done;
        if (this.isRecovering) {
          // Still failing: recover() sees it, and tries again later.
          this.isRecovering = false;
          this.wakeIdle();
          return;
        }
        this.fail(err);
      } else {
        this.queue.shift();
        this.queuedBytes -= data.length;
        this.headWritten = 0;
        if (stalledSince !== null) {
          this.isDropping = false;
          this.opts.onStateChange?.({ event: 'recovered', path: this.path, records: this.status().backlogRecords, failedForMs: Date.now() - stalledSince });
        }
      }
      const removed = this.removedFile;
      this.removedFile = null;
      // Found removed while this write was in flight (a failed write leaves it to recover()).
      if (removed !== null && removed === this.file && this.failure === null) void this.replaceRemoved(removed);
      // A failed write leaves the switch to recover(), which opens the path and cuts a cut line back.
      else if (this.nextFile && this.failure === null) void this.takeNextFile();
      else this.pump();
    });
  }

  /** close() left `file` to a write that a full pipe held: it ends here, unwritten bytes lost. */
  private abandonWrite(file: OpenFile): void {
    this.isWriting = false;
    this.isWaitingForRoom = false;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    closeFd(file.fd, ignore);
  }

  protected fail(err: NodeJS.ErrnoException): void {
    if (this.failure !== null) return;
    this.failure = { code: err.code ?? 'EIO', since: Date.now() };
    this.opts.onStateChange?.({ event: 'failed', path: this.path, error: this.failure.code, message: err.message, willRetry: this.stdout === null });
    this.wakeIdle();
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    // stdout cannot be opened again; a file can, at its path.
    if (this.retryTimer || this.isClosed || this.stdout) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.recover();
    }, this.opts.retryMs ?? RETRY_MS);
    this.retryTimer.unref();
  }

  /**
   * Open the path again and write what is held. The same file, ending where we stopped: go on at
   * that byte. Another file: a line cut in the old one is written whole (its start is put back).
   * Healthy again once everything held is written; otherwise the next retry is scheduled. One at a
   * time: a call while one is under way (the retry timer's, a signal's, close's) gets its outcome.
   */
  protected recover(): Promise<boolean> {
    if (this.recovery === null) {
      this.recovery = this.recoverOnce().finally(() => {
        this.recovery = null;
      });
    }
    return this.recovery;
  }

  private async recoverOnce(): Promise<boolean> {
    const failure = this.failure;
    if (failure === null || this.stdout || this.isStalled) return failure === null;
    let next: OpenFile;
    try {
      next = await openAppend(this.path);
    } catch {
      this.scheduleRetry();
      return false;
    }
    if (this.nextFile) closeFd(this.nextFile.fd, ignore);
    this.nextFile = null;
    const old = this.file;
    const isSameFile = old !== null && old.dev === next.dev && old.ino === next.ino && old.end === next.end;
    // The same file: what was in it when last seen named still is (`next` was opened mid-line, maybe).
    if (isSameFile) next.named = old.named;
    else if (old?.isRegular && (await isUnlinked(old))) await this.takeBackRemoved(old);
    if (!isSameFile && this.headWritten > 0) {
      const head = this.queue[0] as Buffer;
      const lineStart = head.lastIndexOf(NEWLINE, this.headWritten - 1) + 1;
      // The cut line's start, left at the end of the file we leave (rotated away), is no record.
      if (old !== null && this.headWritten > lineStart) await cutBack(old, this.headWritten - lineStart);
      this.headWritten = lineStart;
    }
    if (old) closeFd(old.fd, ignore);
    const records = this.status().backlogRecords;
    this.file = next;
    this.isRecovering = true;
    this.pump();
    await this.flush();
    if (!this.isRecovering) {
      this.scheduleRetry();
      return false;
    }
    this.isRecovering = false;
    this.failure = null;
    this.isDropping = false;
    this.opts.onStateChange?.({ event: 'recovered', path: this.path, records, failedForMs: Date.now() - failure.since });
    return true;
  }

  /** Resolve flush() waiters once nothing is being written and nothing more can be now. */
  private wakeIdle(): void {
    if (this.idleWaiters.length === 0 || (this.isWriting && !this.isStalled) || this.isReplacing) return;
    if (this.queue.length > 0 && this.canWrite()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * Resolve when everything appended so far is in the kernel, or held because the log cannot take
   * it (never waits for a failed log to recover).
   */
  flush(): Promise<void> {
    if (this.stdout) {
      if (this.failure !== null) return Promise.resolve();
      const stream = this.stdout;
      return new Promise((resolve) => {
        // An empty write's callback fires after every earlier write has been flushed (or failed).
        stream.write('', () => resolve());
      });
    }
    if (this.isStalled || (!this.isWriting && !this.isReplacing && (this.queue.length === 0 || !this.canWrite()))) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The open file, found removed (by the watch, while a write was in flight): replace it. */
  protected abstract replaceRemoved(file: OpenFile): Promise<void>;

  /** Switch to the file a reopen opened, now that the write in flight is done. */
  protected abstract takeNextFile(): Promise<void>;

  /** recover() found the failed log's file removed: take back what went to it since it was seen named. */
  protected abstract takeBackRemoved(old: OpenFile): Promise<void>;
}
