/**
 * What the gateway keeps of agent reports that wait for their flow, and how much of it.
 *
 * A report about a socket whose flow has not opened yet is kept by the flow table for 30 s (agent
 * reports race the connection). An agent may send 1,000 reports a request, each with ~52,000
 * characters of text (agent/report.ts limits), so without bounds one agent token took the gateway
 * from 122 to 448 MB and, under a 600 MB heap limit, down. Two bounds here:
 *
 * 1. `keptProcessInfo` clips the text kept to what the detectors read: names (process, parent, user)
 *    to 256 characters — the names matched against the proxyware / scanner / exfil lists are short;
 *    paths to 4,096 (PATH_MAX), keeping their end, where the base name the detectors match is;
 *    the command line to 8,192, keeping its head and its tail (upload flags and proxyware images
 *    are matched anywhere in it, and a padded command line most often ends with them).
 * 2. `PendingReportBudget` counts the reports each agent has left waiting, by number and by
 *    (UTF-16) bytes, per agent and in all, for the flow table's 30 s; a report that does not fit
 *    is shed (not kept, not attributed), counted and logged. Expired entries are purged on every
 *    use, oldest first, so what is counted is what the last 30 s left: one queue for all agents
 *    (one TTL for all, so expiry is in order), so a purge costs what expired, not one look at
 *    every agent that ever left a report waiting.
 */
import { clipHeadTail } from '../agent/report.ts';
import type { ProcessInfo } from '../policy/types.ts';

export const KEPT_NAME_CHARS = 256;
export const KEPT_PATH_CHARS = 4096;
export const KEPT_CMDLINE_CHARS = 8192;

function clipName(s: string | null): string | null {
  return s !== null && s.length > KEPT_NAME_CHARS ? s.slice(0, KEPT_NAME_CHARS) : s;
}

/** A path keeps its end: the base name is what the detectors match. */
function clipPath(s: string | null): string | null {
  return s !== null && s.length > KEPT_PATH_CHARS ? s.slice(s.length - KEPT_PATH_CHARS) : s;
}

function clipCmdline(s: string | null): string | null {
  return clipHeadTail(s, KEPT_CMDLINE_CHARS);
}

/** The process of an agent report as the gateway keeps it: text fields clipped (see above). */
export function keptProcessInfo(p: ProcessInfo): ProcessInfo {
  return {
    ...p,
    name: clipName(p.name) ?? '',
    exe: clipPath(p.exe),
    cmdline: clipCmdline(p.cmdline),
    user: clipName(p.user),
    parentName: clipName(p.parentName),
    parentExe: clipPath(p.parentExe),
  };
}

/** Bytes a kept process holds, about: UTF-16 text plus a fixed overhead for the object and key. */
export function processBytes(p: ProcessInfo): number {
  const text = p.name.length + (p.exe?.length ?? 0) + (p.cmdline?.length ?? 0) + (p.user?.length ?? 0) + (p.parentName?.length ?? 0) + (p.parentExe?.length ?? 0);
  return 2 * text + 256;
}

export interface PendingReportLimits {
  /** How long the flow table keeps a waiting report (ms). */
  ttlMs: number;
  perAgentReports: number;
  perAgentBytes: number;
  totalReports: number;
  totalBytes: number;
}

export const DEFAULT_PENDING_REPORT_LIMITS: PendingReportLimits = Object.freeze({
  ttlMs: 30_000,
  perAgentReports: 5_000,
  perAgentBytes: 8 * 1024 * 1024,
  totalReports: 50_000,
  totalBytes: 64 * 1024 * 1024,
});

interface AgentLedger {
  reports: number;
  bytes: number;
  shed: number;
}

/** One report left waiting: whose, when it was kept, its bytes. */
interface Waiting {
  readonly ledger: AgentLedger;
  readonly at: number;
  readonly bytes: number;
}

export interface PendingReportStats {
  reports: number;
  bytes: number;
  shedTotal: number;
}

/** Per-agent and total budgets for reports waiting for their flow. */
export class PendingReportBudget {
  readonly limits: PendingReportLimits;
  private readonly agents = new Map<string, AgentLedger>();
  /** Every report still counted, oldest first, from `head` (the ones before it are expired). */
  private readonly waiting: Waiting[] = [];
  private head = 0;
  private reports = 0;
  private bytes = 0;
  private shedTotal = 0;

  constructor(limits: Partial<PendingReportLimits> = {}) {
    this.limits = { ...DEFAULT_PENDING_REPORT_LIMITS, ...limits };
  }

  /** True when `agent` may leave one more report of `bytes` waiting now (expired ones purged first). */
  hasRoom(agent: string, bytes: number, now: number): boolean {
    this.purge(now);
    const a = this.agents.get(agent);
    const l = this.limits;
    if (this.reports + 1 > l.totalReports || this.bytes + bytes > l.totalBytes) return false;
    return a === undefined || (a.reports + 1 <= l.perAgentReports && a.bytes + bytes <= l.perAgentBytes);
  }

  /** Count one report of `agent` left waiting. */
  add(agent: string, bytes: number, now: number): void {
    const a = this.ledger(agent);
    // Kept in order: a clock stepped back stamps a report as the newest before it (it expires
    // that much later), so the queue's head is always the first to expire.
    const last = this.waiting.length > this.head ? (this.waiting[this.waiting.length - 1] as Waiting).at : now;
    this.waiting.push({ ledger: a, at: Math.max(now, last), bytes });
    a.reports++;
    a.bytes += bytes;
    this.reports++;
    this.bytes += bytes;
  }

  /** Count one report of `agent` shed. */
  shed(agent: string): void {
    this.ledger(agent).shed++;
    this.shedTotal++;
  }

  /** Waiting reports and bytes of `agent`, and how many of its reports were shed (monotonic). */
  agentStats(agent: string, now: number): PendingReportStats {
    this.purge(now);
    const a = this.agents.get(agent);
    return { reports: a?.reports ?? 0, bytes: a?.bytes ?? 0, shedTotal: a?.shed ?? 0 };
  }

  stats(now: number): PendingReportStats {
    this.purge(now);
    return { reports: this.reports, bytes: this.bytes, shedTotal: this.shedTotal };
  }

  private ledger(agent: string): AgentLedger {
    let a = this.agents.get(agent);
    if (a === undefined) {
      a = { reports: 0, bytes: 0, shed: 0 };
      this.agents.set(agent, a);
    }
    return a;
  }

  /** Drop what the flow table has let expire; O(expired). */
  private purge(now: number): void {
    const cutoff = now - this.limits.ttlMs;
    const q = this.waiting;
    while (this.head < q.length && (q[this.head] as Waiting).at <= cutoff) {
      const { ledger, bytes } = q[this.head] as Waiting;
      this.head++;
      ledger.reports--;
      ledger.bytes -= bytes;
      this.reports--;
      this.bytes -= bytes;
    }
    // Compact once the dead head is most of the array, so it never grows without end.
    if (this.head === q.length) {
      q.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > q.length) {
      q.splice(0, this.head);
      this.head = 0;
    }
  }
}
