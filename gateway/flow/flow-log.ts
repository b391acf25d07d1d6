/**
 * The flow log: one JSON line per closed flow (and interim records), to stdout ("-") or a file.
 * Writes are asynchronous and buffered by the stream; `flush()` resolves once everything written
 * so far has reached the kernel, so a draining gateway loses no record.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { FlowRecord } from './flow.ts';

export interface FlowSink {
  /** True when records go nowhere (`flowLog.path: null`): the table then skips building them. */
  readonly isDiscarding?: boolean;
  write(record: FlowRecord): void;
  flush(): Promise<void>;
}

export class FlowLog implements FlowSink {
  private stream: NodeJS.WritableStream | null = null;
  private file: WriteStream | null = null;
  private readonly path: string | null;
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
    this.written++;
    this.stream.write(`${JSON.stringify(record)}\n`);
  }

  /** Resolve when all records written so far are handed to the OS. */
  flush(): Promise<void> {
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
