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
 *  - a write that hangs (a stuck network file system) is a failure too once it has taken STALL_MS,
 *    until it completes: the backlog is bounded and callers see `isFailing`, instead of records
 *    piling up in memory without limit;
 *  - stdout cannot be reopened: it stays failed, and what it holds is reported lost at close;
 *  - `isFailing` is true meanwhile. Each change of state is reported once (`onStateChange`).
 * A file is written with positionless `write`s on an append-mode descriptor, one at a time, so the
 * log always knows how many bytes reached the file. `reopen()` (SIGHUP) follows a rotated path.
 *
 * A regular file removed from under us (its directory deleted, the file unlinked) still takes every
 * write, into an inode nobody can read: records lost with no error. Every WATCH_MS the open file is
 * checked (one fstat), a write in flight or not; once it has no name left, the lines written to it
 * since the last check that found it named are read back (/proc/self/fd), and they and everything
 * after go to a new file at the path (its directory made again, as at start). Opening it failing is a
 * failure like a write's. A failed log is not watched: a retry that opens another file at the path
 * and finds the old one removed (`rm` to make room on a full disk) reads it back the same way, so
 * what a partial recovery wrote to it since is not lost either. A reopen (rotation signal) and close
 * check the file they leave the same way: removed before the watch saw it (`rm`, then the signal at
 * once), it is read back too.
 */
import { close as closeFd, fstat, ftruncate, open as openFd, read as readFd, type Stats, write as writeFd } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Bytes held while the log cannot be written (~100,000 flow records). */
export const BACKLOG_BYTES = 64 * 1024 * 1024;
/** A failed file is reopened this often. */
export const RETRY_MS = 1000;
/** A file write not done after this long (a hung NFS mount, say) counts as a failure until it is. */
export const STALL_MS = 10_000;
/** The open file is checked this often for having been removed from its path. */
export const WATCH_MS = 1000;
const NEWLINE = 0x0a;

/** A change of state worth one log line (the log has no logger of its own). */
export type AppendLogEvent =
  | { event: 'failed'; path: string; error: string; message: string; willRetry: boolean }
  | { event: 'recovered'; path: string; records: number; failedForMs: number }
  | { event: 'dropping'; path: string; backlogBytes: number }
  | { event: 'lost'; path: string; records: number }
  | { event: 'reopened'; path: string }
  /** The open file had been removed: a new one is open at the path; `records` were written again, `unreadBytes` could not be read back. */
  | { event: 'replaced'; path: string; records: number; unreadBytes: number };

export interface AppendLogOptions {
  onStateChange?: (e: AppendLogEvent) => void;
  /** Tests only: a smaller backlog. */
  backlogBytes?: number;
  /** Tests only: a faster retry. */
  retryMs?: number;
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

/** The open file: its descriptor, which file it is, and where its end is (as far as we wrote it). */
interface OpenFile {
  fd: number;
  dev: number;
  ino: number;
  end: number;
  /** A regular file (watched for removal); not a device or a FIFO. */
  isRegular: boolean;
  /** Bytes up to here were in the file while it still had a name (the last watch that found one). */
  named: number;
}

export class AppendLog {
  readonly path: string;
  private readonly opts: AppendLogOptions;
  private readonly backlogLimit: number;
  /** stdout mode: the stream. */
  private stdout: NodeJS.WritableStream | null = null;
  /** File mode: the open file. */
  private file: OpenFile | null = null;
  /** A file opened by reopen(), taken over once the write in flight is done. */
  private nextFile: OpenFile | null = null;
  /** Lines not yet written, oldest first (the first may be partly written already). */
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  /** File mode: a write is in flight (one at a time). */
  private isWriting = false;
  /** Bytes of the queue's first buffer already in the file (a write that stopped part-way). */
  private headWritten = 0;
  private failure: { code: string; since: number } | null = null;
  /** A reopened file is taking the held lines: writes go on although `failure` is still set. */
  private isRecovering = false;
  private dropped = 0;
  private isDropping = false;
  private retryTimer: NodeJS.Timeout | null = null;
  /** The recover() under way: one at a time (two closed each other's descriptor mid-write). */
  private recovery: Promise<boolean> | null = null;
  /** Armed while a file write is in flight; when it fires the write is stalled. */
  private stallTimer: NodeJS.Timeout | null = null;
  private isStalled = false;
  private isClosed = false;
  /** The removal watch (file mode). */
  private watchTimer: NodeJS.Timeout | null = null;
  private isWatching = false;
  /** A removed file is being replaced: writes wait for the new one. */
  private isReplacing = false;
  /** Where the write in flight started in the file (a line's end: a healthy log writes whole lines). */
  private writeStartsAt = 0;
  /** The open file, found removed while a write was in flight: replaced once that write is done. */
  private removedFile: OpenFile | null = null;
  private idleWaiters: Array<() => void> = [];

  private constructor(path: string, opts: AppendLogOptions) {
    this.path = path;
    this.opts = opts;
    this.backlogLimit = opts.backlogBytes ?? BACKLOG_BYTES;
  }

  /** "-" = stdout; anything else = a file opened for append (its directory created). */
  static async open(path: string, opts: AppendLogOptions = {}): Promise<AppendLog> {
    const log = new AppendLog(path, opts);
    if (path === '-') {
      log.stdout = process.stdout;
      process.stdout.on('error', log.onStdoutError);
    } else {
      await mkdir(dirname(path), { recursive: true });
      log.file = await openAppend(path);
      log.watchTimer = setInterval(log.onWatch, WATCH_MS);
      log.watchTimer.unref();
    }
    return log;
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

  private readonly onStdoutError = (err: Error): void => {
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
  private pump(): void {
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
    if (!this.isWriting || (this.failure !== null && !this.isRecovering)) return;
    this.isStalled = true;
    if (this.isRecovering) this.isRecovering = false;
    else {
      const ms = this.opts.stallMs ?? STALL_MS;
      this.failure = { code: 'ESTALLED', since: Date.now() };
      this.opts.onStateChange?.({ event: 'failed', path: this.path, error: 'ESTALLED', message: `a write has not completed in ${ms} ms`, willRetry: true });
    }
    this.wakeIdle();
  };

  private writeFrom(file: OpenFile, data: Buffer, offset: number): void {
    writeFd(file.fd, data, offset, data.length - offset, null, (error, n) => {
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

  private fail(err: NodeJS.ErrnoException): void {
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
  private recover(): Promise<boolean> {
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

  /**
   * A failed log's file was removed (found by recover(), which has a new file open at the path): what
   * was written to it since it was last seen named goes first, then the rest of a line a failed write
   * cut (its start is among the bytes read back), then everything held.
   */
  private async takeBackRemoved(old: OpenFile): Promise<void> {
    const lost = old.end - old.named;
    // More than the backlog could hold was written by recoveries since it was seen: not read back.
    const back = lost <= 0 ? Buffer.alloc(0) : lost <= this.backlogLimit ? await readBack(old.fd, old.named, lost) : null;
    old.named = old.end;
    if (back !== null) {
      const head = this.queue[0];
      if (head !== undefined && this.headWritten > 0) {
        this.queue[0] = head.subarray(this.headWritten);
        this.queuedBytes -= this.headWritten;
        this.headWritten = 0;
      }
      if (back.length > 0) {
        this.queue.unshift(back);
        this.queuedBytes += back.length;
      }
    }
    this.opts.onStateChange?.({ event: 'replaced', path: this.path, records: back === null ? 0 : countLines(back), unreadBytes: back === null ? lost : 0 });
  }

  /**
   * Whether the open file still has a name; once a second while the log is healthy, a write in
   * flight or not (under constant writing a check that waited for a pause could wait for ever).
   */
  private readonly onWatch = (): void => {
    const file = this.file;
    if (file === null || !file.isRegular || this.isWatching || this.isReplacing || this.failure !== null || this.nextFile !== null) return;
    // Bytes up to here were written before the fstat starts, and end a line: the file's end between
    // writes, or where the write in flight started.
    const end = this.isWriting ? this.writeStartsAt : file.end;
    this.isWatching = true;
    fstat(file.fd, (err, st) => {
      this.isWatching = false;
      if (err || this.file !== file) return;
      if (st.nlink > 0) file.named = Math.max(file.named, end);
      else if (this.isWriting) this.removedFile = file;
      else void this.replaceRemoved(file);
    });
  };

  /**
   * The open file has no name left: what was written to it since it was last seen named is read back
   * and goes, before everything queued since, to a new file at the path.
   */
  private async replaceRemoved(file: OpenFile): Promise<void> {
    if (this.isWriting || this.isReplacing || this.failure !== null || this.isClosed || this.file !== file) return;
    this.isReplacing = true;
    const lost = file.end - file.named;
    let unwritten = lost > 0 ? await readBack(file.fd, file.named, lost) : Buffer.alloc(0);
    const unreadBytes = unwritten === null ? lost : 0;
    unwritten ??= Buffer.alloc(0);
    // The held lines go first; a healthy log between writes has no part-written head.
    if (unwritten.length > 0) {
      this.queue.unshift(unwritten);
      this.queuedBytes += unwritten.length;
    }
    // Taken back (or not to be had): a recover() from this file must not take them again.
    file.named = file.end;
    let next: OpenFile;
    try {
      next = await openAppend(this.path);
    } catch (err) {
      // As a failed write: records held, the path tried again every retryMs (recover()).
      this.isReplacing = false;
      this.fail(err as NodeJS.ErrnoException);
      return;
    }
    this.isReplacing = false;
    if (this.isClosed) {
      closeFd(next.fd, ignore);
      return;
    }
    this.file = next;
    closeFd(file.fd, ignore);
    // A signal's file, opened before this one: this is the path's file now.
    if (this.nextFile) closeFd(this.nextFile.fd, ignore);
    this.nextFile = null;
    this.opts.onStateChange?.({ event: 'replaced', path: this.path, records: countLines(unwritten), unreadBytes });
    this.pump();
  }

  /**
   * Log rotation (SIGHUP): open the path again and write there from now on, if it is another file
   * than the one open (moved away, say). A failed log tries to recover at once instead.
   */
  async reopen(): Promise<void> {
    // A removed file being replaced is being reopened already.
    if (this.stdout || this.isClosed || this.isReplacing) return;
    // A recovery under way is waited for: it may have opened the path before the rotation.
    if (this.recovery !== null) await this.recovery;
    if (this.isClosed || this.isReplacing) return;
    if (this.failure !== null) {
      if (this.retryTimer) clearTimeout(this.retryTimer);
      this.retryTimer = null;
      await this.recover();
      return;
    }
    const next = await openAppend(this.path);
    const current = this.file;
    // A switch under way (a removed file replaced, an earlier signal's) opens the path itself.
    if (this.isClosed || this.isReplacing || (current !== null && current.dev === next.dev && current.ino === next.ino) || this.failure !== null) {
      closeFd(next.fd, ignore);
      return;
    }
    if (this.nextFile) closeFd(this.nextFile.fd, ignore);
    this.nextFile = next;
    if (!this.isWriting) void this.takeNextFile();
  }

  /**
   * Switch to the file reopen() opened; only between writes. The file left may have been removed
   * (`rm`, then the signal) before the removal watch saw it: what was written to it since it was last
   * seen named is read back first, as the watch would (writes wait meanwhile).
   */
  private async takeNextFile(): Promise<void> {
    const next = this.nextFile;
    if (next === null || this.isReplacing) return;
    this.nextFile = null;
    const old = this.file;
    let back: Buffer | null = null;
    let unreadBytes = 0;
    if (old?.isRegular && old.end > old.named) {
      this.isReplacing = true;
      if (await isUnlinked(old)) {
        const lost = old.end - old.named;
        back = await readBack(old.fd, old.named, lost);
        if (back === null) unreadBytes = lost;
        old.named = old.end;
      }
      this.isReplacing = false;
    }
    if (this.isClosed) {
      closeFd(next.fd, ignore);
      return;
    }
    // A healthy log between writes has no part-written head: the lines read back go first.
    if (back !== null && back.length > 0) {
      this.queue.unshift(back);
      this.queuedBytes += back.length;
    }
    this.file = next;
    if (old) closeFd(old.fd, ignore);
    if (back !== null || unreadBytes > 0) this.opts.onStateChange?.({ event: 'replaced', path: this.path, records: back === null ? 0 : countLines(back), unreadBytes });
    this.opts.onStateChange?.({ event: 'reopened', path: this.path });
    this.pump();
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

  /**
   * Flush and close (stdout stays open). A failed file gets one last reopen; what still cannot be
   * written is counted as dropped and reported ('lost').
   */
  async close(): Promise<void> {
    await this.flush();
    // Removed since the watch last looked (`rm`, then SIGTERM): what went to it since is read back.
    const open = this.file;
    if (open?.isRegular && open.end > open.named && this.failure === null && !this.isWriting && (await isUnlinked(open))) {
      await this.replaceRemoved(open);
      await this.flush();
    }
    this.isClosed = true;
    if (this.watchTimer) clearInterval(this.watchTimer);
    this.watchTimer = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.nextFile) closeFd(this.nextFile.fd, ignore);
    this.nextFile = null;
    // The last reopen follows a recovery under way (a retry's, a signal's), not folded into it.
    if (this.recovery !== null) await this.recovery;
    if (this.failure !== null && !this.stdout) await this.recover();
    if (this.failure !== null) {
      this.dropped += this.status().backlogRecords;
      this.queue = [];
      this.queuedBytes = 0;
      if (this.dropped > 0) this.opts.onStateChange?.({ event: 'lost', path: this.path, records: this.dropped });
    }
    const file = this.file;
    this.file = null;
    // A write still stuck in the thread pool holds the descriptor: leave it to the process's exit.
    if (file && !this.isWriting) await new Promise<void>((resolve) => closeFd(file.fd, () => resolve()));
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.stdout?.removeListener('error', this.onStdoutError);
    this.stdout = null;
  }
}

/** Open `path` for append (its directory made again if it was removed) and learn which file it is and how long. */
async function openAppend(path: string): Promise<OpenFile> {
  const open = (): Promise<number> => new Promise<number>((resolve, reject) => openFd(path, 'a', 0o666, (err, n) => (err ? reject(err) : resolve(n))));
  let fd: number;
  try {
    fd = await open();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await mkdir(dirname(path), { recursive: true });
    fd = await open();
  }
  try {
    const st = await new Promise<Stats>((resolve, reject) => fstat(fd, (err, s) => (err ? reject(err) : resolve(s))));
    return { fd, dev: st.dev, ino: st.ino, end: st.size, isRegular: st.isFile(), named: st.size };
  } catch (err) {
    closeFd(fd, ignore);
    throw err;
  }
}

/** True when `file` has no name left (removed from its directory); false if fstat cannot say. */
function isUnlinked(file: OpenFile): Promise<boolean> {
  return new Promise((resolve) => fstat(file.fd, (err, st) => resolve(!err && st.nlink === 0)));
}

/**
 * Take the last `bytes` off `file` (a line cut by a failed write) if it still ends where we left it:
 * nothing else has written to it, nor truncated it (copytruncate), since.
 */
async function cutBack(file: OpenFile, bytes: number): Promise<void> {
  await new Promise<void>((resolve) => {
    fstat(file.fd, (err, st) => {
      if (err || st.size !== file.end) resolve();
      else ftruncate(file.fd, file.end - bytes, () => resolve());
    });
  });
}

/**
 * `length` bytes at `position` of the file open (write-only) as `fd`, read through its /proc link,
 * which still reaches a removed file; null if they cannot be read.
 */
async function readBack(fd: number, position: number, length: number): Promise<Buffer | null> {
  let rfd: number;
  try {
    rfd = await new Promise<number>((resolve, reject) => openFd(`/proc/self/fd/${fd}`, 'r', (err, n) => (err ? reject(err) : resolve(n))));
  } catch {
    return null;
  }
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  try {
    while (got < length) {
      const n = await new Promise<number>((resolve, reject) => readFd(rfd, buf, got, length - got, position + got, (err, r) => (err ? reject(err) : resolve(r))));
      if (n === 0) break;
      got += n;
    }
  } catch {
    got = 0;
  }
  closeFd(rfd, ignore);
  return got === length ? buf : null;
}

function countLines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(NEWLINE); i >= 0; i = b.indexOf(NEWLINE, i + 1)) n++;
  return n;
}

function ignore(): void {}
