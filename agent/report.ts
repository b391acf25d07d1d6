/**
 * The agent report wire format (SPEC §7, `POST /v1/agents/reports`) and its pure validator.
 * Shared by the Linux agent, the Windows parsers and the admin route that receives reports.
 *
 * Validation is strict on types and bounds and lenient on unknown keys (ignored and dropped from the
 * validated value), so a newer agent that adds a field still talks to an older gateway.
 */

import { isIP } from 'node:net';

export interface AgentReport {
  readonly proto: 'tcp' | 'udp';
  /** The reporting host's end of the connection: the gateway sees it as the flow's client address. */
  readonly localIp: string;
  readonly localPort: number;
  readonly remoteIp: string;
  readonly remotePort: number;
  readonly pid: number;
  readonly ppid: number | null;
  readonly name: string;
  readonly exe: string | null;
  readonly cmdline: string | null;
  readonly user: string | null;
  /** Numeric uid on Linux; null on Windows (users are SIDs / DOMAIN\name there). */
  readonly uid: number | null;
  /** Audit login uid; 4294967295 = not part of a login session. */
  readonly loginuid: number | null;
  readonly parentName: string | null;
  readonly parentExe: string | null;
  /** Process start time, ISO 8601. */
  readonly startedAt: string | null;
}

export interface AgentReportBatch {
  readonly host: string;
  readonly reports: readonly AgentReport[];
}

export interface ReportError {
  /** Path of the bad value, e.g. `reports[3].localPort`. */
  readonly path: string;
  readonly message: string;
}

export type ValidationResult = { readonly ok: true; readonly value: AgentReportBatch } | { readonly ok: false; readonly errors: readonly ReportError[] };

/** Most reports a single POST may carry; the agent batches below it. */
export const MAX_REPORTS_PER_BATCH = 1000;
/**
 * The admin route's budget of JSON values for one POST (admin/json-value-budget.ts counts `{`, `[`
 * and `,`): 64 per report, where a report has 17 (its object and 16 fields), so fields a newer agent
 * adds still fit, and 64 for the envelope. Past it the body is refused before it is parsed.
 */
export const MAX_JSON_VALUES_PER_BATCH = MAX_REPORTS_PER_BATCH * 64 + 64;
const MAX_TEXT = 8192;
const MAX_NAME = 1024;
const UINT32_MAX = 4294967295;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class Checker {
  readonly errors: ReportError[] = [];
  constructor(private readonly obj: Record<string, unknown>, private readonly base: string) {}

  private fail(key: string, message: string): void {
    if (this.errors.length < 50) this.errors.push({ path: `${this.base}.${key}`, message });
  }

  ip(key: string): string {
    const v = this.obj[key];
    if (typeof v !== 'string' || isIP(v.replace(/%.*$/, '')) === 0) {
      this.fail(key, 'must be an IPv4 or IPv6 address');
      return '';
    }
    return v;
  }

  int(key: string, min: number, max: number, nullable: boolean): number | null {
    const v = this.obj[key];
    if (nullable && (v === null || v === undefined)) return null;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      this.fail(key, `must be an integer in ${min}..${max}${nullable ? ' or null' : ''}`);
      return null;
    }
    return v;
  }

  text(key: string, maxLen: number, nullable: boolean): string | null {
    const v = this.obj[key];
    if (nullable && (v === null || v === undefined)) return null;
    if (typeof v !== 'string' || v.length > maxLen || (!nullable && v.length === 0)) {
      this.fail(key, `must be a ${nullable ? '' : 'non-empty '}string of at most ${maxLen} characters${nullable ? ' or null' : ''}`);
      return null;
    }
    return v;
  }

  time(key: string): string | null {
    const v = this.obj[key];
    if (v === null || v === undefined) return null;
    if (typeof v !== 'string' || !/^\d{4}-\d\d-\d\dT/.test(v) || Number.isNaN(Date.parse(v))) {
      this.fail(key, 'must be an ISO 8601 date-time or null');
      return null;
    }
    return v;
  }
}

/** Validate one report; errors are pushed with paths under `base` (e.g. `reports[0]`). */
export function validateReport(input: unknown, base = 'report'): { value: AgentReport | null; errors: ReportError[] } {
  if (!isObject(input)) return { value: null, errors: [{ path: base, message: 'must be an object' }] };
  const c = new Checker(input, base);
  const proto = input['proto'];
  if (proto !== 'tcp' && proto !== 'udp') c.errors.push({ path: `${base}.proto`, message: 'must be "tcp" or "udp"' });
  const value: AgentReport = {
    proto: proto === 'udp' ? 'udp' : 'tcp',
    localIp: c.ip('localIp'),
    localPort: c.int('localPort', 1, 65535, false) ?? 0,
    remoteIp: c.ip('remoteIp'),
    remotePort: c.int('remotePort', 1, 65535, false) ?? 0,
    // pid 0 is never a user process (Linux: the scheduler; Windows: the Idle process, which owns
    // only TIME_WAIT sockets): a report naming it names nobody.
    pid: c.int('pid', 1, UINT32_MAX, false) ?? 0,
    ppid: c.int('ppid', 0, UINT32_MAX, true),
    name: c.text('name', MAX_NAME, false) ?? '',
    exe: c.text('exe', MAX_TEXT, true),
    cmdline: c.text('cmdline', MAX_TEXT * 4, true),
    user: c.text('user', MAX_NAME, true),
    uid: c.int('uid', 0, UINT32_MAX, true),
    loginuid: c.int('loginuid', 0, UINT32_MAX, true),
    parentName: c.text('parentName', MAX_NAME, true),
    parentExe: c.text('parentExe', MAX_TEXT, true),
    startedAt: c.time('startedAt'),
  };
  return c.errors.length > 0 ? { value: null, errors: c.errors } : { value, errors: [] };
}

/**
 * Validate a whole `POST /v1/agents/reports` body. Pure: no I/O, no clock. The returned value holds
 * only the known fields. It does not check the agent's `sources` (the route does: it knows the token).
 */
export function validateReportBatch(input: unknown): ValidationResult {
  if (!isObject(input)) return { ok: false, errors: [{ path: '', message: 'body must be a JSON object' }] };
  const errors: ReportError[] = [];
  const host = input['host'];
  if (typeof host !== 'string' || host.length === 0 || host.length > 253) {
    errors.push({ path: 'host', message: 'must be a non-empty string of at most 253 characters' });
  }
  const reports = input['reports'];
  const values: AgentReport[] = [];
  if (!Array.isArray(reports)) errors.push({ path: 'reports', message: 'must be an array' });
  else if (reports.length > MAX_REPORTS_PER_BATCH) {
    errors.push({ path: 'reports', message: `at most ${MAX_REPORTS_PER_BATCH} reports per request` });
  } else {
    reports.forEach((r, i) => {
      const res = validateReport(r, `reports[${i}]`);
      if (res.value) values.push(res.value);
      else errors.push(...res.errors);
    });
  }
  if (errors.length > 0) return { ok: false, errors: errors.slice(0, 100) };
  return { ok: true, value: { host: host as string, reports: values } };
}

/** The report for one socket and the process holding it (Linux agent and Windows parsers alike). */
export function makeReport(
  conn: { proto: 'tcp' | 'udp'; localIp: string; localPort: number; remoteIp: string; remotePort: number },
  p: {
    pid: number;
    ppid: number | null;
    name: string;
    exe: string | null;
    cmdline: string | null;
    user: string | null;
    uid: number | null;
    loginuid: number | null;
    parentName: string | null;
    parentExe: string | null;
    startedAt: string | null;
  },
): AgentReport {
  return {
    proto: conn.proto,
    localIp: conn.localIp,
    localPort: conn.localPort,
    remoteIp: conn.remoteIp,
    remotePort: conn.remotePort,
    pid: p.pid,
    ppid: p.ppid,
    name: clip(p.name, MAX_NAME) || '?',
    exe: clip(p.exe, MAX_TEXT),
    // A long argv would make the gateway refuse the whole batch. Its head names the program, its
    // tail is where a padded command line puts what the detectors look for (curl -T, wget --post-file).
    cmdline: clipHeadTail(p.cmdline, MAX_TEXT * 4),
    user: p.user,
    uid: p.uid,
    loginuid: p.loginuid,
    parentName: clip(p.parentName, MAX_NAME),
    parentExe: clip(p.parentExe, MAX_TEXT),
    startedAt: p.startedAt,
  };
}

function clip(s: string | null, max: number): string | null {
  return s !== null && s.length > max ? s.slice(0, max) : s;
}

const ELLIPSIS = ' … ';

/**
 * `s` cut to at most `max` characters by taking out its middle: its head and its tail stay, joined
 * by " … ". The agent sends command lines so, and the gateway keeps them so (pending-reports.ts).
 */
export function clipHeadTail(s: string | null, max: number): string | null {
  if (s === null || s.length <= max) return s;
  const half = (max - ELLIPSIS.length) / 2;
  return `${s.slice(0, Math.ceil(half))}${ELLIPSIS}${s.slice(s.length - Math.floor(half))}`;
}
