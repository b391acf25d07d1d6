/**
 * The admin audit trail: who changed what, when, from where, with the policy version before and
 * after. Kept in memory (bounded ring, for `GET /v1/audit`) and, when a path is given, appended as
 * JSON lines to a file so the trail outlives a restart (main.ts puts it next to the flow log). The
 * file is written by AppendLog (append-log.ts): an entry it cannot write is held and written once it
 * can, and SIGHUP follows a rotated file, as for the flow log.
 */
import { AppendLog, type AppendLogOptions } from './append-log.ts';

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

export interface AuditLogOptions extends AppendLogOptions {
  keep?: number;
  /** Clock for the unauthenticated-attempt window (tests). */
  now?: () => number;
}

/**
 * Refused writes without a valid token listed one by one per minute, gateway-wide; the rest of the
 * minute's are counted and summed up in one entry. Without a cap, anyone who can reach the admin
 * listener could push every real entry out of the ring (10,500 token-less requests did it in 8.5 s)
 * and grow the file without bound.
 */
export const UNAUTHENTICATED_PER_MINUTE = 60;
const WINDOW_MS = 60_000;

export class AuditLog {
  private readonly ring: AuditEntry[] = [];
  private start = 0;
  private readonly keep: number;
  private file: AppendLog | null = null;
  private readonly now: () => number;
  /** The current minute of unauthenticated attempts: listed so far, and counted past the cap. */
  private windowStart = Number.NEGATIVE_INFINITY;
  private listedInWindow = 0;
  private suppressed = 0;
  private readonly suppressedSources = new Set<string>();

  constructor(opts: AuditLogOptions = {}) {
    this.keep = Math.max(1, opts.keep ?? 10_000);
    this.now = opts.now ?? Date.now;
  }

  /** An audit log that also appends to `path` (null = memory only). Creates the directory. */
  static async open(path: string | null, opts: AuditLogOptions = {}): Promise<AuditLog> {
    const log = new AuditLog(opts);
    if (path) log.file = await AppendLog.open(path, opts);
    return log;
  }

  record(entry: AuditEntry): void {
    this.settleWindow();
    if (entry.actor === null) {
      if (this.listedInWindow >= UNAUTHENTICATED_PER_MINUTE) {
        this.suppressed++;
        if (this.suppressedSources.size < 100_000) this.suppressedSources.add(entry.sourceIp);
        return;
      }
      this.listedInWindow++;
    }
    this.append(entry);
  }

  /** A new minute: the last one's uncounted unauthenticated attempts become one summary entry. */
  private settleWindow(): void {
    const now = this.now();
    if (now - this.windowStart < WINDOW_MS) return;
    if (this.suppressed > 0) {
      this.append({
        time: new Date(now).toISOString(),
        actor: null,
        scope: null,
        method: '*',
        route: '*',
        path: '*',
        sourceIp: this.suppressedSources.size === 1 ? ([...this.suppressedSources][0] as string) : '*',
        beforeVersion: null,
        afterVersion: null,
        status: 401,
        detail: `${this.suppressed} more writes without a valid token from ${this.suppressedSources.size} address(es) in the minute from ${new Date(this.windowStart).toISOString()}, not listed one by one`,
      });
    }
    this.windowStart = now;
    this.listedInWindow = 0;
    this.suppressed = 0;
    this.suppressedSources.clear();
  }

  private append(entry: AuditEntry): void {
    if (this.ring.length < this.keep) this.ring.push(entry);
    else {
      this.ring[this.start] = entry;
      this.start = (this.start + 1) % this.keep;
    }
    this.file?.append(Buffer.from(`${JSON.stringify(entry)}\n`, 'utf8'), 1);
  }

  /** Newest first. */
  list(query: AuditQuery = {}): AuditEntry[] {
    this.settleWindow();
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

  /** Log rotation (SIGHUP): go on writing at a new file at the path, if the old one was moved. */
  reopenFile(): Promise<void> {
    return this.file?.reopen() ?? Promise.resolve();
  }

  /** Flush and close the file (memory entries stay readable). */
  async close(): Promise<void> {
    this.settleWindow();
    const file = this.file;
    this.file = null;
    if (!file) return;
    await file.close();
  }
}
