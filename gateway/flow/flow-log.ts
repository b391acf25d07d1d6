/**
 * The flow log: one JSON line per closed flow (and interim records), to stdout ("-") or a file.
 * Lines are batched: the records of up to BATCH_MS (or 256 KiB of them, whichever comes first) go to
 * the stream as one write. Each write costs stream bookkeeping, a string-to-Buffer copy and a trip
 * through libuv's thread pool (on a stdout pipe, which node writes synchronously on Linux, a system
 * call); per record that was ~6 µs of CPU per flow more than with 10 ms batches at a few thousand
 * flows/s. Lines are built by Flow.toJsonLine, without a record object. `flush()` sends the batch
 * and resolves once everything written so far has reached the kernel, so a draining gateway loses
 * no record; a killed one loses at most the last BATCH_MS of them.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
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

export class FlowLog implements FlowSink {
  private stream: NodeJS.WritableStream | null = null;
  private file: WriteStream | null = null;
  private readonly path: string | null;
  /**
   * Records not yet handed to the stream, in order: a line, or a closed flow whose line is built
   * when the batch is sent (a closed flow no longer changes; building a batch's lines in one loop
   * measured a few µs per request cheaper than building each amid its connection's close).
   * `batchChars` counts lines exactly and closed flows at an estimate.
   */
  private batch: Array<string | Flow> = [];
  private batchChars = 0;
  private isBatchScheduled = false;
  written = 0;

  get isDiscarding(): boolean {
    return this.stream === null;
  }

  private constructor(path: string | null) {
    this.path = path;
  }

  /** Open a flow log: "-" = stdout, null = discard, anything else = a file opened for append. */
  static async open(path: string | null): Promise<FlowLog> {
    const log = new FlowLog(path);
    if (path === '-') log.stream = process.stdout;
    else if (path) {
      await mkdir(dirname(path), { recursive: true });
      log.file = createWriteStream(path, { flags: 'a' });
      log.stream = log.file;
      await new Promise<void>((resolve, reject) => {
        log.file?.once('open', () => resolve());
        log.file?.once('error', reject);
      });
    }
    return log;
  }

  write(record: FlowRecord): void {
    if (!this.stream) return;
    this.add(`${JSON.stringify(record)}\n`);
  }

  writeFlow(flow: Flow, now: number, intermediate: boolean): void {
    if (!this.stream) return;
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

  /** Hand the batched lines to the stream as one write. */
  private sendBatch(): void {
    if (this.batch.length === 0 || !this.stream) return;
    const batch = this.batch;
    for (let i = 0; i < batch.length; i++) {
      const entry = batch[i] as string | Flow;
      // A closed flow's record does not depend on `now` (it ends at endedAt).
      if (typeof entry !== 'string') batch[i] = `${entry.toJsonLine(0)}\n`;
    }
    const chunk = batch.length === 1 ? (batch[0] as string) : batch.join('');
    this.batch = [];
    this.batchChars = 0;
    this.stream.write(chunk);
  }

  /** Resolve when all records written so far are handed to the OS. */
  flush(): Promise<void> {
    this.sendBatch();
    const stream = this.stream;
    if (!stream) return Promise.resolve();
    return new Promise((resolve) => {
      // An empty write's callback fires after every earlier write has been flushed.
      stream.write('', () => resolve());
    });
  }

  /** Flush and close a file log (stdout stays open). */
  async close(): Promise<void> {
    await this.flush();
    const file = this.file;
    if (file) await new Promise<void>((resolve) => file.end(() => resolve()));
    this.stream = null;
  }

  toString(): string {
    return `FlowLog(${this.path ?? 'none'})`;
  }
}
