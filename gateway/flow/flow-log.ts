/**
 * The flow log: one JSON line per closed flow (and interim records), to stdout ("-") or a file.
 * Lines are batched: the records of up to BATCH_MS (or 256 KiB of them, whichever comes first) go
 * out as one write. Each write costs a string-to-Buffer copy and, for a file, a trip through libuv's
 * thread pool (on a stdout pipe, which node writes synchronously on Linux, a system call); per
 * record that was ~6 µs of CPU per flow more than with 10 ms batches at a few thousand flows/s.
 * Lines are built by Flow.toJsonLine, without a record object. `flush()` resolves once everything
 * written so far has reached the kernel, so a draining gateway loses no record; a killed one loses
 * at most the last BATCH_MS of them.
 *
 * A write can fail: a full disk (ENOSPC), a quota, an I/O error, a closed stdout pipe (EPIPE). The
 * log then keeps what it could not write instead of losing it:
 *  - the unwritten bytes stay queued, in order, and so does every later batch: at most
 *    BACKLOG_BYTES, past which records are dropped and counted;
 *  - a file log is reopened at its path every RETRY_MS. Writing resumes at the exact byte where it
 *    stopped when the path is still the same file, ending where we left it: a line cut by a full disk
 *    is completed, not repeated. On another file (rotated, recreated) a cut line is written whole;
 *  - stdout cannot be reopened: it stays failed, and what it holds is reported lost at close;
 *  - `isFailing` is true meanwhile: admission refuses new flows (`flowLog.onError: refuse`) and the
 *    gateway reports itself not ready. Each change of state is reported once (`onStateChange`).
 * A file is written with positionless `write`s on an append-mode descriptor, one at a time, so the
 * log always knows how many bytes of a batch reached the file.
 */
import { close as closeFd, fstat, open as openFd, write as writeFd } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Flow, FlowRecord } from './flow.ts';

export interface FlowSink {
  /** True when records go nowhere (`flowLog.path: null`): the table then skips building them. */
  readonly isDiscarding?: boolean;
  write(record: FlowRecord): void;
  /** If present, called instead of `write`: the flow's record at `now`, without building it first. */
  writeFlow?(flow: Flow, now: number, intermediate: boolean): void;
  flush(): Promise<void>;
}

/** A batch is written this long after its first record at the latest... */
const BATCH_MS = 10;
/** ...or at once when it is this large. */
const BATCH_BYTES = 256 * 1024;
/** What a closed flow's line is counted as until it is built (a typical record is 500–700). */
const CLOSED_FLOW_CHARS = 640;
/** Bytes of records held while the log cannot be written (~100,000 closed flows). */
export const BACKLOG_BYTES = 64 * 1024 * 1024;
/** A failed file log is reopened this often. */
export const RETRY_MS = 1000;
const NEWLINE = 0x0a;

/** Where a flow log stands, for readiness, metrics and the admin API. */
export interface FlowLogStatus {
  failing: boolean;
  /** The error code (ENOSPC, EPIPE, …) of the write that failed, while failing. */
  error: string | null;
  /** Epoch ms of that failure, while failing. */
  since: number | null;
  /** Records waiting to be written (while failing: held in memory until the log takes them). */
  backlogRecords: number;
  /** Records lost for good: the backlog was full, or the gateway stopped before the log recovered. */
  droppedRecords: number;
}

/** A change of state worth one log line (the FlowLog has no logger of its own). */
export type FlowLogEvent =
  | { event: 'failed'; path: string; error: string; message: string; willRetry: boolean }
  | { event: 'recovered'; path: string; records: number; failedForMs: number }
  | { event: 'dropping'; path: string; backlogBytes: number }
  | { event: 'lost'; path: string; records: number }
  | { event: 'reopened'; path: string };

export interface FlowLogOptions {
  onStateChange?: (e: FlowLogEvent) => void;
  /** Tests only: a smaller backlog. */
  backlogBytes?: number;
  /** Tests only: a faster retry. */
  retryMs?: number;
}

/** The open file: its descriptor, which file it is, and where its end is (as far as we wrote it). */
interface OpenFile {
  fd: number;
  dev: number;
  ino: number;
  end: number;
}

export class FlowLog implements FlowSink {
  private readonly path: string | null;
  private readonly opts: FlowLogOptions;
  private readonly backlogLimit: number;
  /** stdout mode: the stream. */
  private stdout: NodeJS.WritableStream | null = null;
  /** File mode: the open file (null while failed and not reopened). */
  private file: OpenFile | null = null;
  /**
   * Records not yet handed out, in order: a line, or a closed flow whose line is built when the
   * batch is sent (a closed flow no longer changes; building a batch's lines in one loop measured a
   * few µs per request cheaper than building each amid its connection's close). `batchChars`
   * counts lines exactly and closed flows at an estimate.
   */
  private batch: Array<string | Flow> = [];
  private batchChars = 0;
  private isBatchScheduled = false;
  /** Encoded batches not yet written, oldest first (the first may be partly written already). */
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  /** File mode: a write is in flight (one at a time). */
  private isWriting = false;
  /** A file opened by reopenFile(), taken over once the write in flight is done. */
  private nextFile: OpenFile | null = null;
  /** Bytes of the queue's first buffer already in the file (a write that stopped part-way). */
  private headWritten = 0;
  private failure: { code: string; since: number } | null = null;
  /** A reopened file is taking the held records: writes go on although `failure` is still set. */
  private isRecovering = false;
  private dropped = 0;
  private isDropping = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private isClosed = false;
  private idleWaiters: Array<() => void> = [];
  written = 0;

  get isDiscarding(): boolean {
    return this.path === null || this.isClosed;
  }

  /** True from a failed write until the log takes records again. */
  get isFailing(): boolean {
    return this.failure !== null;
  }

  private constructor(path: string | null, opts: FlowLogOptions) {
    this.path = path;
    this.opts = opts;
    this.backlogLimit = opts.backlogBytes ?? BACKLOG_BYTES;
  }

  /** Open a flow log: "-" = stdout, null = discard, anything else = a file opened for append. */
  static async open(path: string | null, opts: FlowLogOptions = {}): Promise<FlowLog> {
    const log = new FlowLog(path === '-' ? '-' : path, opts);
    if (path === '-') {
      log.stdout = process.stdout;
      process.stdout.on('error', log.onStdoutError);
    } else if (path) {
      await mkdir(dirname(path), { recursive: true });
      log.file = await openAppend(path);
    }
    return log;
  }

  status(): FlowLogStatus {
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

  write(record: FlowRecord): void {
    if (this.isDiscarding) return;
    this.add(`${JSON.stringify(record)}\n`);
  }

  writeFlow(flow: Flow, now: number, intermediate: boolean): void {
    if (this.isDiscarding) return;
    if (!intermediate && flow.state === 'closed') this.add(flow, CLOSED_FLOW_CHARS);
    else this.add(`${flow.toJsonLine(now, intermediate)}\n`);
  }

  private add(entry: string | Flow, chars = (entry as string).length): void {
    this.written++;
    this.batch.push(entry);
    this.batchChars += chars;
    if (this.batchChars >= BATCH_BYTES) this.sendBatch();
    else if (!this.isBatchScheduled) {
      this.isBatchScheduled = true;
      // Not unref'd: a pending batch keeps a process alive for at most BATCH_MS, and is then written.
      setTimeout(this.onBatchDue, BATCH_MS);
    }
  }

  private readonly onBatchDue = (): void => {
    this.isBatchScheduled = false;
    this.sendBatch();
  };

  /** Turn the batched records into one buffer and hand it on. */
  private sendBatch(): void {
    if (this.batch.length === 0 || this.isDiscarding) return;
    const batch = this.batch;
    for (let i = 0; i < batch.length; i++) {
      const entry = batch[i] as string | Flow;
      // A closed flow's record does not depend on `now` (it ends at endedAt).
      if (typeof entry !== 'string') batch[i] = `${entry.toJsonLine(0)}\n`;
    }
    const chunk = Buffer.from(batch.length === 1 ? (batch[0] as string) : batch.join(''), 'utf8');
    const records = batch.length;
    this.batch = [];
    this.batchChars = 0;
    if (this.stdout && this.failure === null) {
      this.stdout.write(chunk, (err?: Error | null) => {
        if (err) this.holdAfterFailure(chunk, err);
      });
      return;
    }
    if (this.failure !== null && this.queuedBytes + chunk.length > this.backlogLimit) {
      this.drop(records);
      return;
    }
    this.queue.push(chunk);
    this.queuedBytes += chunk.length;
    this.pump();
  }

  /** stdout: a write failed (EPIPE, …); it and every later one are held (stdout does not come back). */
  private holdAfterFailure(chunk: Buffer, err: Error): void {
    this.fail(err as NodeJS.ErrnoException);
    if (this.queuedBytes + chunk.length > this.backlogLimit) this.drop(countLines(chunk));
    else {
      this.queue.push(chunk);
      this.queuedBytes += chunk.length;
    }
  }

  private readonly onStdoutError = (err: Error): void => {
    this.fail(err as NodeJS.ErrnoException);
  };

  private drop(records: number): void {
    this.dropped += records;
    if (this.isDropping) return;
    this.isDropping = true;
    this.opts.onStateChange?.({ event: 'dropping', path: this.path ?? '', backlogBytes: this.backlogLimit });
  }

  /** File mode: whether queued bytes can go to the file now. */
  private canWrite(): boolean {
    return this.file !== null && (this.failure === null || this.isRecovering);
  }

  /** File mode: write the queue, one write at a time, all of it in one go. */
  private pump(): void {
    const file = this.file;
    if (this.isWriting) return;
    if (file === null || !this.canWrite() || this.queue.length === 0) {
      this.wakeIdle();
      return;
    }
    const first = (this.queue[0] as Buffer).subarray(this.headWritten);
    const data = this.queue.length === 1 ? first : Buffer.concat([first, ...this.queue.slice(1)]);
    this.queue = [data];
    this.queuedBytes -= this.headWritten;
    this.headWritten = 0;
    this.isWriting = true;
    this.writeFrom(file, data, 0);
  }

  /**
   * Log rotation (SIGHUP): open the path again and write there from now on, if it is another file
   * than the one open (moved away, say). A failed log tries to recover at once instead.
   */
  async reopenFile(): Promise<void> {
    const path = this.path;
    if (!path || path === '-' || this.isClosed) return;
    if (this.failure !== null) {
      if (this.retryTimer) clearTimeout(this.retryTimer);
      this.retryTimer = null;
      await this.recover();
      return;
    }
    const next = await openAppend(path);
    const current = this.file;
    if (this.isClosed || (current !== null && current.dev === next.dev && current.ino === next.ino) || this.failure !== null) {
      closeFd(next.fd, ignore);
      return;
    }
    if (this.nextFile) closeFd(this.nextFile.fd, ignore);
    this.nextFile = next;
    if (!this.isWriting) this.takeNextFile();
  }

  /** Switch to the file reopenFile() opened; only between writes. */
  private takeNextFile(): void {
    const next = this.nextFile;
    if (next === null) return;
    this.nextFile = null;
    const old = this.file;
    this.file = next;
    if (old) closeFd(old.fd, ignore);
    this.opts.onStateChange?.({ event: 'reopened', path: this.path ?? '' });
    this.pump();
  }

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
      if (err) {
        // `data` is still the queue's head; `done` bytes of it are in the file.
        this.headWritten = done;
        if (this.isRecovering) {
          // Still failing: reopen() sees it, and tries again later.
          this.isRecovering = false;
          this.wakeIdle();
          return;
        }
        this.fail(err);
      } else {
        this.queue.shift();
        this.queuedBytes -= data.length;
      }
      if (this.nextFile) this.takeNextFile();
      else this.pump();
    });
  }

  private fail(err: NodeJS.ErrnoException): void {
    if (this.failure !== null) return;
    this.failure = { code: err.code ?? 'EIO', since: Date.now() };
    this.opts.onStateChange?.({ event: 'failed', path: this.path ?? '', error: this.failure.code, message: err.message, willRetry: this.stdout === null });
    this.wakeIdle();
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    // stdout cannot be opened again; a file can, at its path.
    if (this.retryTimer || this.isClosed || this.stdout || !this.path) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.recover();
    }, this.opts.retryMs ?? RETRY_MS);
    this.retryTimer.unref();
  }

  /**
   * Open the path again and write what is held. The same file, ending where we stopped: go on at
   * that byte. Another file: a line cut in the old one is written whole (its start is put back).
   * Healthy again once everything held is written; otherwise the next retry is scheduled.
   */
  private async recover(): Promise<boolean> {
    const path = this.path;
    const failure = this.failure;
    if (failure === null || !path || this.stdout) return failure === null;
    let next: OpenFile;
    try {
      next = await openAppend(path);
    } catch {
      this.scheduleRetry();
      return false;
    }
    if (this.nextFile) closeFd(this.nextFile.fd, ignore);
    this.nextFile = null;
    const old = this.file;
    const isSameFile = old !== null && old.dev === next.dev && old.ino === next.ino && old.end === next.end;
    if (old) closeFd(old.fd, ignore);
    if (!isSameFile && this.headWritten > 0) {
      const head = this.queue[0] as Buffer;
      this.headWritten = head.lastIndexOf(NEWLINE, this.headWritten - 1) + 1;
    }
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
    this.opts.onStateChange?.({ event: 'recovered', path, records, failedForMs: Date.now() - failure.since });
    return true;
  }

  /** Resolve flush() waiters once nothing is being written and nothing more can be now. */
  private wakeIdle(): void {
    if (this.idleWaiters.length === 0 || this.isWriting) return;
    if (this.queue.length > 0 && this.canWrite()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * Resolve when all records written so far are in the kernel, or held because the log cannot take
   * them (never waits for a failed log to recover).
   */
  flush(): Promise<void> {
    this.sendBatch();
    if (this.stdout) {
      if (this.failure !== null) return Promise.resolve();
      const stream = this.stdout;
      return new Promise((resolve) => {
        // An empty write's callback fires after every earlier write has been flushed (or failed).
        stream.write('', () => resolve());
      });
    }
    if (!this.isWriting && (this.queue.length === 0 || !this.canWrite())) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Flush and close a file log (stdout stays open). A failed file log gets one last reopen; what
   * still cannot be written is counted as dropped and reported ('lost').
   */
  async close(): Promise<void> {
    await this.flush();
    this.isClosed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.nextFile) closeFd(this.nextFile.fd, ignore);
    this.nextFile = null;
    if (this.failure !== null && !this.stdout) await this.recover();
    if (this.failure !== null) {
      const lost = this.status().backlogRecords;
      this.dropped += lost;
      this.queue = [];
      this.queuedBytes = 0;
      if (this.dropped > 0) this.opts.onStateChange?.({ event: 'lost', path: this.path ?? '', records: this.dropped });
    }
    const file = this.file;
    this.file = null;
    if (file) await new Promise<void>((resolve) => closeFd(file.fd, () => resolve()));
    this.stdout?.removeListener('error', this.onStdoutError);
    this.stdout = null;
  }

  toString(): string {
    return `FlowLog(${this.path ?? 'none'})`;
  }
}

/** Open `path` for append and learn which file it is and how long. */
async function openAppend(path: string): Promise<OpenFile> {
  const fd = await new Promise<number>((resolve, reject) => openFd(path, 'a', 0o666, (err, n) => (err ? reject(err) : resolve(n))));
  try {
    const st = await new Promise<{ dev: number; ino: number; size: number }>((resolve, reject) => fstat(fd, (err, s) => (err ? reject(err) : resolve(s))));
    return { fd, dev: st.dev, ino: st.ino, end: st.size };
  } catch (err) {
    closeFd(fd, ignore);
    throw err;
  }
}

function countLines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(NEWLINE); i >= 0; i = b.indexOf(NEWLINE, i + 1)) n++;
  return n;
}

function ignore(): void {}
