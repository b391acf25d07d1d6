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
 * The writing itself, and what happens when it fails (records held in memory and written once the
 * log can take them; `isFailing` meanwhile, which admission and readiness read), is AppendLog's
 * (append-log.ts).
 */
import { AppendLog, type AppendLogOptions, type AppendLogStatus } from '../append-log.ts';
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

const HEALTHY: AppendLogStatus = Object.freeze({ failing: false, error: null, since: null, backlogRecords: 0, droppedRecords: 0 });

export class FlowLog implements FlowSink {
  /** Where the lines go; null = discard (`flowLog.path: null`). */
  private readonly out: AppendLog | null;
  /**
   * Records not yet handed out, in order: a line, or a closed flow whose line is built when the
   * batch is sent (a closed flow no longer changes; building a batch's lines in one loop measured a
   * few µs per request cheaper than building each amid its connection's close). `batchChars`
   * counts lines exactly and closed flows at an estimate.
   */
  private batch: Array<string | Flow> = [];
  private batchChars = 0;
  private isBatchScheduled = false;
  written = 0;

  get isDiscarding(): boolean {
    return this.out === null || !this.out.isOpen;
  }

  /** True from a failed write until the log takes records again. */
  get isFailing(): boolean {
    return this.out?.isFailing ?? false;
  }

  private constructor(out: AppendLog | null) {
    this.out = out;
  }

  /** Open a flow log: "-" = stdout, null = discard, anything else = a file opened for append. */
  static async open(path: string | null, opts: AppendLogOptions = {}): Promise<FlowLog> {
    return new FlowLog(path === null ? null : await AppendLog.open(path, opts));
  }

  status(): AppendLogStatus {
    return this.out?.status() ?? HEALTHY;
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
    const out = this.out;
    if (this.batch.length === 0 || out === null || !out.isOpen) return;
    const batch = this.batch;
    for (let i = 0; i < batch.length; i++) {
      const entry = batch[i] as string | Flow;
      // A closed flow's record does not depend on `now` (it ends at endedAt).
      if (typeof entry !== 'string') batch[i] = `${entry.toJsonLine(0)}\n`;
    }
    const chunk = Buffer.from(batch.length === 1 ? (batch[0] as string) : batch.join(''), 'utf8');
    this.batch = [];
    this.batchChars = 0;
    out.append(chunk, batch.length);
  }

  /**
   * Resolve when all records written so far are in the kernel, or held because the log cannot take
   * them (never waits for a failed log to recover).
   */
  flush(): Promise<void> {
    this.sendBatch();
    return this.out?.flush() ?? Promise.resolve();
  }

  /** The drain's grace is over: a write waiting for room in a pipe is given up (AppendLogWriter). */
  giveUpWaitForRoom(): boolean {
    return this.out?.giveUpWaitForRoom() ?? false;
  }

  /** Log rotation (SIGHUP): go on writing at a new file at the path, if the old one was moved. */
  reopenFile(): Promise<void> {
    return this.out?.reopen() ?? Promise.resolve();
  }

  /**
   * Flush and close a file log (stdout stays open). A failed file log gets one last reopen; what
   * still cannot be written is counted as dropped and reported ('lost').
   */
  async close(): Promise<void> {
    this.sendBatch();
    await this.out?.close();
  }

  toString(): string {
    return `FlowLog(${this.out?.path ?? 'none'})`;
  }
}
