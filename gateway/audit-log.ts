/**
 * The admin audit trail: who changed what, when, from where, with the policy version before and
 * after. Kept in memory (bounded ring, for `GET /v1/audit`) and, when a path is given, appended as
 * JSON lines to a file so the trail outlives a restart (main.ts puts it next to the flow log).
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

export interface AuditEntry {
  /** ISO 8601. */
  time: string;
  /** Token name, or null when the request carried no valid token. */
  actor: string | null;
  scope: string | null;
  method: string;
  /** The route pattern (`/v1/flows/:id`): stable, groupable. */
  route: string;
  /** The concrete path (`/v1/flows/ab12`). */
  path: string;
  sourceIp: string;
  beforeVersion: number | null;
  afterVersion: number | null;
  status: number;
  /** Short context: the flow killed, the mode set, why a report was refused. */
  detail?: string | null;
}

export interface AuditQuery {
  limit?: number;
  actor?: string;
  /** ISO time: only entries after it. */
  since?: string;
}

export interface AuditLogOptions {
  keep?: number;
}

export class AuditLog {
  private readonly ring: AuditEntry[] = [];
  private start = 0;
  private readonly keep: number;
  private file: WriteStream | null = null;
  /** A write error is remembered (and the file dropped) rather than crashing the gateway. */
  lastError: Error | null = null;

  constructor(opts: AuditLogOptions = {}) {
    this.keep = Math.max(1, opts.keep ?? 10_000);
  }

  /** An audit log that also appends to `path` (null = memory only). Creates the directory. */
  static async open(path: string | null, opts: AuditLogOptions = {}): Promise<AuditLog> {
    const log = new AuditLog(opts);
    if (path) {
      await mkdir(dirname(path), { recursive: true });
      const file = createWriteStream(path, { flags: 'a' });
      await new Promise<void>((resolve, reject) => {
        file.once('open', () => resolve());
        file.once('error', reject);
      });
      file.on('error', (err) => {
        log.lastError = err;
        log.file = null;
      });
      log.file = file;
    }
    return log;
  }

  record(entry: AuditEntry): void {
    if (this.ring.length < this.keep) this.ring.push(entry);
    else {
      this.ring[this.start] = entry;
      this.start = (this.start + 1) % this.keep;
    }
    this.file?.write(`${JSON.stringify(entry)}\n`);
  }

  /** Newest first. */
  list(query: AuditQuery = {}): AuditEntry[] {
    const limit = Math.max(0, query.limit ?? 100);
    const since = query.since ? Date.parse(query.since) : Number.NEGATIVE_INFINITY;
    const out: AuditEntry[] = [];
    const n = this.ring.length;
    for (let i = n - 1; i >= 0 && out.length < limit; i--) {
      const e = this.ring[(this.start + i) % n] as AuditEntry;
      if (query.actor && e.actor !== query.actor) continue;
      if (!(Date.parse(e.time) > since)) continue;
      out.push(e);
    }
    return out;
  }

  /** Flush and close the file (memory entries stay readable). */
  async close(): Promise<void> {
    const file = this.file;
    this.file = null;
    if (!file) return;
    await new Promise<void>((resolve) => file.end(() => resolve()));
  }
}
