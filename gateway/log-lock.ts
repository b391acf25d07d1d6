/**
 * A log file belongs to one gateway: `<path>.lock` says which (its pid and, on Linux, the start time
 * of that pid's process). Two gateways appending to one file each count only their own bytes, so a
 * removed file's read-back (append-log.ts) took the other's lines too: 1,780 lines, 4 torn, 452
 * duplicated. node has no flock, so the lock is a file made whole and atomically (written under a
 * name of its own, then link(2)ed to `<path>.lock`, which fails if one is there); it is removed at
 * close. One left by a gateway that did not close (SIGKILL, a crash) is stale once its pid is gone or
 * is another process (the start time differs: a container's pid 1 restarted); a stale lock is
 * removed and taken. A gateway in another pid namespace or host cannot be told apart from a dead
 * one: docs/deploy.md says a log file belongs to one gateway.
 *
 * A few file system calls at open and close, none per record.
 */
import { link, readFile, unlink, writeFile } from 'node:fs/promises';

/** Paths this process holds (a second log on one of them in the same process is refused too). */
const held = new Set<string>();

interface Holder {
  pid: number;
  start: string | null;
}

/** Our pid's process start time (field 22 of /proc/<pid>/stat), or null where there is no /proc. */
async function startTimeOf(pid: number): Promise<string | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

async function isAlive(h: Holder, lockPath: string): Promise<boolean> {
  if (h.pid === process.pid) return held.has(lockPath);
  try {
    process.kill(h.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const start = h.start === null ? null : await startTimeOf(h.pid);
  return start === null || start === h.start;
}

function parseHolder(text: string): Holder | null {
  try {
    const v = JSON.parse(text) as { pid?: unknown; start?: unknown };
    if (typeof v.pid !== 'number' || !Number.isInteger(v.pid) || v.pid <= 0) return null;
    return { pid: v.pid, start: typeof v.start === 'string' ? v.start : null };
  } catch {
    return null;
  }
}

/** Another live gateway holds the log: refused at start (serve exits 1 with this message). */
export class LogLockedError extends Error {
  readonly code = 'ELOCKED';
}

/**
 * Take `<path>.lock` for this process. Throws LogLockedError when a live process holds it, and the
 * file system's error when it cannot be made (a read-only directory): the caller decides.
 */
export async function lockLog(path: string): Promise<() => Promise<void>> {
  const lockPath = `${path}.lock`;
  const text = `${JSON.stringify({ pid: process.pid, start: await startTimeOf(process.pid) })}\n`;
  const temp = `${lockPath}.${process.pid}.${Date.now()}`;
  await writeFile(temp, text, { flag: 'wx', mode: 0o644 });
  try {
    // Bounded: a stale lock is removed once, and a second one can only be another starter's.
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await link(temp, lockPath);
        held.add(lockPath);
        return async () => {
          held.delete(lockPath);
          // Ours still (a directory removed and made again may hold another's by now).
          if ((await readFile(lockPath, 'utf8').catch(() => null)) === text) await unlink(lockPath).catch(() => undefined);
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const found = await readFile(lockPath, 'utf8').catch(() => null);
      if (found === null) continue;
      const holder = parseHolder(found);
      if (holder !== null && (await isAlive(holder, lockPath))) {
        throw new LogLockedError(`${path} is written by another gateway (pid ${holder.pid}, ${lockPath}): a log file belongs to one gateway; give each its own flowLog.path`);
      }
      // Stale (or not a lock we wrote): removed only if it is still the one judged.
      if ((await readFile(lockPath, 'utf8').catch(() => null)) === found) await unlink(lockPath).catch(() => undefined);
    }
    throw new LogLockedError(`${path}: ${lockPath} could not be taken (another gateway starting at the same time?)`);
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}
