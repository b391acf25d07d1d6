/**
 * The file under an append log (append-log.ts): opening it at its path, telling whether it still has
 * a name, taking a cut line's start off its end, reading back what was written to it: a few file
 * system calls each, made when the log opens, switches or checks its file, never per record. And
 * the line count the log's status and drops use.
 */
import { close as closeFd, constants, fstat, ftruncate, open as openFd, read as readFd, type Stats } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

export const NEWLINE = 0x0a;

/** The open file: its descriptor, which file it is, and where its end is (as far as we wrote it). */
export interface OpenFile {
  fd: number;
  dev: number;
  ino: number;
  end: number;
  /** A regular file (watched for removal); not a device or a FIFO. */
  isRegular: boolean;
  /** Bytes up to here were in the file while it still had a name (the last watch that found one). */
  named: number;
}

/**
 * Append, and never wait in the open or a write: a FIFO without a reader blocked the open, and one
 * whose reader stopped reading blocked the write, each in one of libuv's pool threads, which no one
 * can end and every exit of node joins: a SIGTERM drain waited for ever for the retry's open, and a
 * drain that was over did not exit. Without a reader the open fails (ENXIO, a failure like any
 * other); a full pipe is EAGAIN, which the writer waits out (append-log-writer.ts). Regular files
 * ignore O_NONBLOCK.
 */
const APPEND_FLAGS = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NONBLOCK;

/** Open `path` for append (its directory made again if it was removed) and learn which file it is and how long. */
export async function openAppend(path: string): Promise<OpenFile> {
  const open = (): Promise<number> => new Promise<number>((resolve, reject) => openFd(path, APPEND_FLAGS, 0o666, (err, n) => (err ? reject(err) : resolve(n))));
  let fd: number;
  try {
    fd = await open();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await mkdir(dirname(path), { recursive: true });
    fd = await open();
  }
  try {
    const st = await new Promise<Stats>((resolve, reject) => fstat(fd, (err, s) => (err ? reject(err) : resolve(s))));
    return { fd, dev: st.dev, ino: st.ino, end: st.size, isRegular: st.isFile(), named: st.size };
  } catch (err) {
    closeFd(fd, ignore);
    throw err;
  }
}

/** True when `file` has no name left (removed from its directory); false if fstat cannot say. */
export function isUnlinked(file: OpenFile): Promise<boolean> {
  return new Promise((resolve) => fstat(file.fd, (err, st) => resolve(!err && st.nlink === 0)));
}

/**
 * Take the last `bytes` off `file` (a line cut by a failed write) if it still ends where we left it:
 * nothing else has written to it, nor truncated it (copytruncate), since.
 */
export async function cutBack(file: OpenFile, bytes: number): Promise<void> {
  await new Promise<void>((resolve) => {
    fstat(file.fd, (err, st) => {
      if (err || st.size !== file.end) resolve();
      else ftruncate(file.fd, file.end - bytes, () => resolve());
    });
  });
}

/**
 * `length` bytes at `position` of the file open (write-only) as `fd`, read through its /proc link,
 * which still reaches a removed file; null if they cannot be read.
 */
export async function readBack(fd: number, position: number, length: number): Promise<Buffer | null> {
  let rfd: number;
  try {
    rfd = await new Promise<number>((resolve, reject) => openFd(`/proc/self/fd/${fd}`, 'r', (err, n) => (err ? reject(err) : resolve(n))));
  } catch {
    return null;
  }
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  try {
    while (got < length) {
      const n = await new Promise<number>((resolve, reject) => readFd(rfd, buf, got, length - got, position + got, (err, r) => (err ? reject(err) : resolve(r))));
      if (n === 0) break;
      got += n;
    }
  } catch {
    got = 0;
  }
  closeFd(rfd, ignore);
  return got === length ? buf : null;
}

export function countLines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(NEWLINE); i >= 0; i = b.indexOf(NEWLINE, i + 1)) n++;
  return n;
}

export function ignore(): void {}
