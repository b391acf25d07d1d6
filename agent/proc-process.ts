/**
 * From socket inodes to processes: which PID holds `socket:[inode]` (scan of /proc/PID/fd, as
 * OpenSnitch's `lookupPidInProc` does), and what that process is (exe, name, cmdline, uid → user,
 * loginuid, parent). Everything is async (fs/promises) and tolerant: processes exit and fds close
 * while we read them, and without root other users' fds answer EACCES. Such entries are skipped.
 */

import { readFile, readdir, readlink, stat } from 'node:fs/promises';
import type { ProcessInfo } from '../policy/types.ts';

/** A process as the agent reports it: `ProcessInfo` plus its start time (SPEC §7 `startedAt`). */
export type ProcessDetails = ProcessInfo & { readonly startedAt: string | null };

/** One holder of a socket: the PID and the fd number (kept so a cached entry is re-checked with one readlink). */
export interface SocketHolder {
  readonly pid: number;
  readonly fd: number;
}

export interface ScanOptions {
  readonly procRoot?: string;
  /** Max PIDs read in parallel; keeps a scan from flooding the thread pool on a busy host. */
  readonly concurrency?: number;
  /** Stop as soon as every inode in this set has a holder (the rest of /proc is not read). */
  readonly wanted?: ReadonlySet<number>;
  /** PIDs never read (the gateway skips itself: it holds thousands of sockets and is never its own client). */
  readonly skipPids?: ReadonlySet<number>;
  /** PIDs read first (e.g. those that recently held wanted sockets): a long-lived client's next socket is found at once. */
  readonly priorityPids?: readonly number[];
  /**
   * The owners (uid, /proc/net's `uid` column) of the wanted sockets: processes running as one of
   * them are read before the others' (see `scanSocketInodes`). Absent or empty: every uid is.
   */
  readonly ownerUids?: ReadonlySet<number>;
}

/**
 * A descriptor table up to this size is read as soon as its process is reached; larger ones wait
 * until every process has been looked at, then go smallest first.
 */
export const SMALL_FD_TABLE = 256;

const SOCKET_LINK = /^socket:\[(\d+)\]$/;

/** Numeric entries of /proc, i.e. the PIDs visible to us. */
export async function listPids(procRoot = '/proc'): Promise<number[]> {
  const names = await readdir(procRoot);
  const pids: number[] = [];
  for (const n of names) {
    const c = n.charCodeAt(0);
    if (c >= 48 && c <= 57) {
      const pid = Number(n);
      if (Number.isInteger(pid)) pids.push(pid);
    }
  }
  return pids;
}

/** readlinks issued at once within one PID: a process with thousands of fds must not take thousands of round trips. */
const FD_CHUNK = 64;

async function scanPidFds(procRoot: string, pid: number, into: Map<number, SocketHolder[]>, wanted: Set<number> | null): Promise<void> {
  let fds: string[];
  try {
    fds = await readdir(`${procRoot}/${pid}/fd`);
  } catch {
    return; // vanished, or EACCES (another user's process without root)
  }
  // Highest fd first: a socket opened just now usually got one of the highest numbers in use.
  fds.sort((a, b) => Number(b) - Number(a));
  for (let i = 0; i < fds.length; i += FD_CHUNK) {
    if (wanted !== null && wanted.size === 0) return;
    const chunk = fds.slice(i, i + FD_CHUNK);
    const targets = await Promise.all(chunk.map((fd) => readlink(`${procRoot}/${pid}/fd/${fd}`).catch(() => '')));
    // Not one link read: when the process has exited, its other thousands of links would fail too.
    if (targets.every((t) => t === '') && !(await stat(`${procRoot}/${pid}`).then(() => true, () => false))) return;
    targets.forEach((target, j) => {
      const m = SOCKET_LINK.exec(target);
      if (!m) return;
      const inode = Number(m[1]);
      const holder = { pid, fd: Number(chunk[j]) };
      const list = into.get(inode);
      if (list) {
        if (!list.some((h) => h.pid === pid)) list.push(holder);
      } else into.set(inode, [holder]);
      wanted?.delete(inode);
    });
  }
}

/**
 * Map socket inodes to the PIDs holding them by reading every /proc/PID/fd link, at most
 * `concurrency` PIDs at a time. A socket inherited across fork has several holders.
 *
 * Order, so that descriptors held open elsewhere do not delay finding a wanted socket's holder:
 * each PID (priority PIDs first, then newest first) is first looked at with one stat of
 * /proc/PID/fd, which gives the process's uid (the directory's owner) and, on Linux >= 6.2, its
 * number of open descriptors (st_size; 0 on older kernels, where every table counts as small).
 * A process running as one of `ownerUids` (or as root: a process that is not dumpable shows as
 * root's) with a small table is read at once; the others are read after that pass, all those of
 * the owners before any other's, each group priority PIDs first, then smallest table first. So
 * thousands of descriptors held by other users' processes, or by large tables of the same user's,
 * are read only when the small tables of the sockets' owners did not hold them.
 */
export async function scanSocketInodes(opts: ScanOptions = {}): Promise<Map<number, SocketHolder[]>> {
  const procRoot = opts.procRoot ?? '/proc';
  const concurrency = Math.max(1, opts.concurrency ?? 16);
  const wanted = opts.wanted ? new Set(opts.wanted) : null;
  const owners = opts.ownerUids && opts.ownerUids.size > 0 ? opts.ownerUids : null;
  const out = new Map<number, SocketHolder[]>();
  let pids: number[];
  try {
    pids = await listPids(procRoot);
  } catch {
    return out;
  }
  // Newest PIDs first: the process that just connected is most likely recent, so an early stop
  // on `wanted` usually happens after a few PIDs instead of the whole table.
  pids.sort((a, b) => b - a);
  if (opts.skipPids) pids = pids.filter((p) => !opts.skipPids?.has(p));
  let prioritized = 0;
  if (opts.priorityPids && opts.priorityPids.length > 0) {
    const live = new Set(pids);
    const first = [...new Set(opts.priorityPids)].filter((p) => live.has(p));
    const firstSet = new Set(first);
    pids = [...first, ...pids.filter((p) => !firstSet.has(p))];
    prioritized = first.length;
  }
  const isDone = (): boolean => wanted !== null && wanted.size === 0;
  // Deferred PIDs: [pid, fds, order reached]; the owners' and the others' apart.
  const later: Array<[number, number, number]>[] = [[], []];
  let next = 0;
  const firstPass = async (): Promise<void> => {
    while (next < pids.length && !isDone()) {
      const at = next++;
      const pid = pids[at] as number;
      let fds: number;
      let uid: number;
      try {
        ({ size: fds, uid } = await stat(`${procRoot}/${pid}/fd`));
      } catch {
        continue; // vanished: its links could not be read either
      }
      const isOwners = owners === null || uid === 0 || owners.has(uid);
      if (isOwners && fds <= SMALL_FD_TABLE) await scanPidFds(procRoot, pid, out, wanted);
      else later[isOwners ? 0 : 1]?.push([pid, fds, at]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, pids.length) }, firstPass));
  // The owners' large tables, then the others': one group at a time, so the others' descriptors
  // do not take the thread pool from the owners'.
  for (const group of later) {
    // Priority PIDs first still (a recent holder with a large table), then smallest first.
    group.sort((a, b) => Number(b[2] < prioritized) - Number(a[2] < prioritized) || a[1] - b[1] || a[2] - b[2]);
    next = 0;
    const laterPass = async (): Promise<void> => {
      while (next < group.length && !isDone()) await scanPidFds(procRoot, group[next++]?.[0] as number, out, wanted);
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, group.length) }, laterPass));
  }
  return out;
}

/** True when `pid` still has `socket:[inode]` at fd `fd` (one readlink; validates a cached mapping). */
export async function holderStillValid(holder: SocketHolder, inode: number, procRoot = '/proc'): Promise<boolean> {
  try {
    return (await readlink(`${procRoot}/${holder.pid}/fd/${holder.fd}`)) === `socket:[${inode}]`;
  } catch {
    return false;
  }
}

/** Raw facts about one process, before the parent and the user name are joined in. */
export interface RawProcess {
  readonly pid: number;
  readonly name: string;
  readonly ppid: number | null;
  readonly uid: number | null;
  readonly exe: string | null;
  readonly cmdline: string | null;
  readonly loginuid: number | null;
  /** Start time in clock ticks since boot (/proc/PID/stat field 22). */
  readonly startTicks: number | null;
}

/** Parse /proc/PID/status: `Name`, `PPid`, real `Uid`. */
export function parseStatus(text: string): { name: string | null; ppid: number | null; uid: number | null } {
  let name: string | null = null;
  let ppid: number | null = null;
  let uid: number | null = null;
  for (const line of text.split('\n')) {
    if (line.startsWith('Name:')) name = line.slice(5).trim().replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
    else if (line.startsWith('PPid:')) ppid = Number.parseInt(line.slice(5).trim(), 10);
    else if (line.startsWith('Uid:')) uid = Number.parseInt(line.slice(4).trim().split(/\s+/)[0] ?? '', 10);
  }
  return { name, ppid: Number.isNaN(ppid) ? null : ppid, uid: Number.isNaN(uid) ? null : uid };
}

/** `cmdline` has NUL-separated arguments (and a trailing NUL); an empty one is a kernel thread or zombie. */
export function parseCmdline(raw: string): string | null {
  const s = raw.replace(/\0+$/, '').replace(/\0/g, ' ');
  return s.length > 0 ? s : null;
}

/** Field 22 (starttime) of /proc/PID/stat; the comm field may hold spaces and ')' so split after the last ')'. */
export function parseStatStartTicks(text: string): number | null {
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  // After ") " come fields 3.. ; starttime is field 22, i.e. index 19 of the rest.
  const rest = text.slice(close + 2).split(' ');
  const v = Number.parseInt(rest[19] ?? '', 10);
  return Number.isNaN(v) ? null : v;
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return null;
  }
}

async function readLinkOrNull(path: string): Promise<string | null> {
  try {
    return (await readlink(path)).replace(/ \(deleted\)$/, '');
  } catch {
    return null;
  }
}

/** Read one process's facts; null when it has gone (status unreadable). */
export async function readProcess(pid: number, procRoot = '/proc'): Promise<RawProcess | null> {
  const base = `${procRoot}/${pid}`;
  const [status, exe, cmdline, loginuid, stat] = await Promise.all([
    readText(`${base}/status`),
    readLinkOrNull(`${base}/exe`),
    readText(`${base}/cmdline`),
    readText(`${base}/loginuid`),
    readText(`${base}/stat`),
  ]);
  if (status === null) return null;
  const st = parseStatus(status);
  const lu = loginuid === null ? Number.NaN : Number.parseInt(loginuid.trim(), 10);
  return {
    pid,
    name: st.name ?? '',
    ppid: st.ppid,
    uid: st.uid,
    exe,
    cmdline: cmdline === null ? null : parseCmdline(cmdline),
    loginuid: Number.isNaN(lu) ? null : lu,
    startTicks: stat === null ? null : parseStatStartTicks(stat),
  };
}

/** Just what a report says about the parent: its name and exe (two reads, not five). */
async function readParent(pid: number, procRoot: string): Promise<{ name: string; exe: string | null } | null> {
  const [status, exe] = await Promise.all([readText(`${procRoot}/${pid}/status`), readLinkOrNull(`${procRoot}/${pid}/exe`)]);
  if (status === null) return null;
  return { name: parseStatus(status).name ?? '', exe };
}

/** uid → user name from /etc/passwd, cached; re-read on a miss at most every `refreshMs`. */
export class UserDirectory {
  private names = new Map<number, string>();
  private loadedAt = Number.NEGATIVE_INFINITY;
  private loading: Promise<void> | null = null;

  constructor(
    private readonly passwdPath = '/etc/passwd',
    private readonly refreshMs = 30_000,
  ) {}

  /** The user name of `uid`, or null when /etc/passwd does not know it (e.g. LDAP users, containers). */
  async nameOf(uid: number): Promise<string | null> {
    const hit = this.names.get(uid);
    if (hit !== undefined) return hit;
    if (Date.now() - this.loadedAt >= this.refreshMs) await this.reload();
    return this.names.get(uid) ?? null;
  }

  private reload(): Promise<void> {
    this.loading ??= (async () => {
      const text = await readText(this.passwdPath);
      const names = new Map<number, string>();
      for (const line of (text ?? '').split('\n')) {
        const f = line.split(':');
        const uid = Number.parseInt(f[2] ?? '', 10);
        if (f[0] && !Number.isNaN(uid) && !names.has(uid)) names.set(uid, f[0]);
      }
      this.names = names;
      this.loadedAt = Date.now();
    })().finally(() => {
      this.loading = null;
    });
    return this.loading;
  }
}

/** Linux USER_HZ: 100 on every mainstream architecture; /proc/PID/stat times are in these ticks. */
const CLOCK_TICKS_PER_SEC = 100;
const bootTimeCache = new Map<string, Promise<number | null>>();

/** Boot time in ms since epoch from /proc/stat `btime`, cached per proc root. */
export function bootTimeMs(procRoot = '/proc'): Promise<number | null> {
  let p = bootTimeCache.get(procRoot);
  if (!p) {
    p = readText(`${procRoot}/stat`).then((t) => {
      const m = t === null ? null : /^btime (\d+)$/m.exec(t);
      return m ? Number(m[1]) * 1000 : null;
    });
    bootTimeCache.set(procRoot, p);
  }
  return p;
}

/**
 * The whole `ProcessDetails` for one PID: its own facts, user name, and its parent's name and exe.
 * Null when the process has exited.
 */
export async function describeProcess(pid: number, users: UserDirectory, procRoot = '/proc'): Promise<ProcessDetails | null> {
  const self = await readProcess(pid, procRoot);
  if (!self) return null;
  const [parent, user, boot] = await Promise.all([
    self.ppid !== null && self.ppid > 0 ? readParent(self.ppid, procRoot) : Promise.resolve(null),
    self.uid !== null ? users.nameOf(self.uid) : Promise.resolve(null),
    bootTimeMs(procRoot),
  ]);
  const startedAt =
    boot !== null && self.startTicks !== null
      ? new Date(boot + (self.startTicks * 1000) / CLOCK_TICKS_PER_SEC).toISOString()
      : null;
  return {
    pid: self.pid,
    name: self.name,
    exe: self.exe,
    cmdline: self.cmdline,
    user,
    uid: self.uid,
    loginuid: self.loginuid,
    ppid: self.ppid,
    parentName: parent?.name ?? null,
    parentExe: parent?.exe ?? null,
    startedAt,
  };
}
