/**
 * An append-only log of JSON lines that survives its own write failures: the flow log's and the
 * audit trail's writer (see append-log-writer.ts for writing, failing and recovering). This file is
 * its life at a path: opening it, the removal watch, rotation (`reopen()`) and close.
 *
 * The watch's fstat also finds a file truncated under us (`: > flows.jsonl` on a full disk), and
 * takes its size as where our lines end: a line a full disk cut later is then completed in place,
 * not left as a fragment before its whole copy.
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
import { close as closeFd, fstat } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { countLines, ignore, isUnlinked, type OpenFile, openAppend, readBack } from './append-log-file.ts';
import { type AppendLogOptions, AppendLogWriter, RETRY_MS } from './append-log-writer.ts';
import { LogLockedError, lockLog } from './log-lock.ts';

export { type AppendLogEvent, type AppendLogOptions, type AppendLogStatus, BACKLOG_BYTES, RETRY_MS, STALL_MS } from './append-log-writer.ts';

/** The open file is checked this often for having been removed from its path. */
export const WATCH_MS = 1000;

export class AppendLog extends AppendLogWriter {
  /** The removal watch (file mode). */
  private watchTimer: NodeJS.Timeout | null = null;
  private isWatching = false;
  /** Releases `<path>.lock` (opts.lock). */
  private unlock: (() => Promise<void>) | null = null;
  /** A rotation whose open failed (EMFILE at the descriptor limit, say): tried again every retryMs. */
  private reopenTimer: NodeJS.Timeout | null = null;

  private constructor(path: string, opts: AppendLogOptions) {
    super(path, opts);
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
      if (opts.lock && log.file.isRegular) await log.takeLock();
      log.watchTimer = setInterval(log.onWatch, WATCH_MS);
      log.watchTimer.unref();
    }
    return log;
  }

  /** Another live gateway's lock: the file is closed and open() fails. */
  private async takeLock(): Promise<void> {
    try {
      this.unlock = await lockLog(this.path);
    } catch (err) {
      if (err instanceof LogLockedError) {
        if (this.file) closeFd(this.file.fd, ignore);
        this.file = null;
        throw err;
      }
      this.opts.onStateChange?.({ event: 'unlocked', path: this.path, error: (err as Error).message });
    }
  }

  /**
   * A failed log's file was removed (found by recover(), which has a new file open at the path): what
   * was written to it since it was last seen named goes first, then the rest of a line a failed write
   * cut (its start is among the bytes read back), then everything held.
   */
  protected async takeBackRemoved(old: OpenFile): Promise<void> {
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
    const isIdle = !this.isWriting;
    this.isWatching = true;
    fstat(file.fd, (err, st) => {
      this.isWatching = false;
      if (err || this.file !== file) return;
      if (st.nlink > 0) {
        file.named = Math.max(file.named, end);
        // No write of ours before or during the check, and the file is not as long as we wrote it:
        // truncated (`: > flows.jsonl` to make room) or written by someone else. Our writes land at
        // its real end (append mode), so that is where a line a full disk cuts is to be found.
        if (isIdle && !this.isWriting && file.end === end && st.size !== end) file.end = file.named = st.size;
      } else if (this.isWriting) this.removedFile = file;
      else void this.replaceRemoved(file);
    });
  };

  /**
   * The open file has no name left: what was written to it since it was last seen named is read back
   * and goes, before everything queued since, to a new file at the path.
   */
  protected async replaceRemoved(file: OpenFile): Promise<void> {
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
   * than the one open (moved away, say). A failed log tries to recover at once instead. An open that
   * fails (EMFILE: the process at its descriptor limit) rejects, for the caller to say so, and is
   * tried again every retryMs until it succeeds: the log stays healthy on the file it has (the one
   * rotated away) meanwhile, and writes at the path again as soon as a descriptor is free.
   */
  async reopen(): Promise<void> {
    this.cancelReopenRetry();
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
    let next: OpenFile;
    try {
      next = await openAppend(this.path);
    } catch (err) {
      this.retryReopen();
      throw err;
    }
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
   * A rotation's open failed: again in retryMs, quietly (the caller logged the first failure; the
   * switch, when it comes, is reported 'reopened'). A failed log's recover() opens the path itself.
   */
  private retryReopen(): void {
    if (this.reopenTimer || this.isClosed) return;
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = null;
      if (this.failure === null) this.reopen().catch(ignore);
    }, this.opts.retryMs ?? RETRY_MS);
    this.reopenTimer.unref();
  }

  private cancelReopenRetry(): void {
    if (this.reopenTimer) clearTimeout(this.reopenTimer);
    this.reopenTimer = null;
  }

  /**
   * Switch to the file reopen() opened; only between writes. The file left may have been removed
   * (`rm`, then the signal) before the removal watch saw it: what was written to it since it was last
   * seen named is read back first, as the watch would (writes wait meanwhile).
   */
  protected async takeNextFile(): Promise<void> {
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
    this.cancelReopenRetry();
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
    const unlock = this.unlock;
    this.unlock = null;
    await unlock?.();
  }
}
