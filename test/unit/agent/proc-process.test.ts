/** The /proc readers on a synthetic proc tree (a temp dir laid out like /proc) plus the pure parsers. */
import { chown, mkdir, mkdtemp, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProcessResolver } from '../../../agent/attribution.ts';
import {
  UserDirectory,
  describeProcess,
  parseCmdline,
  parseStatStartTicks,
  parseStatus,
  scanSocketInodes,
} from '../../../agent/proc-process.ts';
import { skipNotice } from '../../helpers/skip-notice.ts';

let root = '';
let passwd = '';

const stat = (pid: number, comm: string, ppid: number, start: number): string =>
  `${pid} (${comm}) S ${ppid} ${pid} ${ppid} 34816 ${pid} 4194304 0 0 0 0 0 0 0 0 20 0 1 0 ${start} 1000 50\n`;

async function proc(pid: number, o: { name: string; ppid: number; uid: number; exe: string; argv: string[]; loginuid: string; fds?: Record<string, string> }): Promise<void> {
  const d = join(root, String(pid));
  await mkdir(d);
  await writeFile(join(d, 'status'), `Name:\t${o.name}\nUmask:\t0022\nState:\tS (sleeping)\nPPid:\t${o.ppid}\nUid:\t${o.uid}\t${o.uid}\t${o.uid}\t${o.uid}\n`);
  await writeFile(join(d, 'cmdline'), `${o.argv.join('\0')}\0`);
  await writeFile(join(d, 'loginuid'), o.loginuid);
  await writeFile(join(d, 'stat'), stat(pid, `${o.name} x)`, o.ppid, 250));
  await symlink(o.exe, join(d, 'exe'));
  if (o.fds) {
    await mkdir(join(d, 'fd'));
    for (const [fd, target] of Object.entries(o.fds)) await symlink(target, join(d, 'fd', fd));
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'egw-proc-'));
  passwd = join(root, 'passwd');
  await writeFile(passwd, 'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n');
  await writeFile(join(root, 'stat'), 'cpu  1 2 3\nbtime 1700000000\nprocesses 5\n');
  await proc(100, { name: 'bash', ppid: 1, uid: 1000, exe: '/usr/bin/bash', argv: ['-bash'], loginuid: '1000', fds: { '0': '/dev/pts/0', '3': 'socket:[777]' } });
  await proc(200, {
    name: 'curl',
    ppid: 100,
    uid: 1000,
    exe: '/usr/bin/curl (deleted)',
    argv: ['curl', '-x', 'http://gw:3128', 'https://example.com'],
    loginuid: '1000',
    fds: { '5': 'socket:[888]', '6': 'socket:[777]', '7': 'pipe:[9]' },
  });
  // A process whose fds we may not read (no fd dir stands in for EACCES) and a daemon.
  await proc(300, { name: 'sshd', ppid: 1, uid: 0, exe: '/usr/sbin/sshd', argv: ['sshd'], loginuid: '4294967295' });
  await writeFile(join(root, 'not-a-pid'), '');
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('parsers', () => {
  it('parseStatus reads Name, PPid and the real Uid', () => {
    expect(parseStatus('Name:\tcurl\nPPid:\t42\nUid:\t1000\t0\t0\t0\n')).toEqual({ name: 'curl', ppid: 42, uid: 1000 });
    expect(parseStatus('garbage')).toEqual({ name: null, ppid: null, uid: null });
  });
  it('parseCmdline turns NULs into spaces; empty is null', () => {
    expect(parseCmdline('curl\0-s\0http://x/\0')).toBe('curl -s http://x/');
    expect(parseCmdline('')).toBeNull();
  });
  it('parseStatStartTicks survives spaces and parentheses in comm', () => {
    expect(parseStatStartTicks(stat(9, 'we ird) (name', 1, 98765))).toBe(98765);
    expect(parseStatStartTicks('nonsense')).toBeNull();
  });
});

describe('scanSocketInodes', () => {
  it('maps every socket inode to all its holders and skips unreadable PIDs', async () => {
    const map = await scanSocketInodes({ procRoot: root, concurrency: 2 });
    expect(map.get(888)).toEqual([{ pid: 200, fd: 5 }]);
    expect(map.get(777)?.map((h) => h.pid).sort()).toEqual([100, 200]);
    expect(map.has(9)).toBe(false);
  });
  it('stops early once the wanted inodes are found (newest PID first)', async () => {
    const map = await scanSocketInodes({ procRoot: root, concurrency: 1, wanted: new Set([888]) });
    expect(map.get(888)).toEqual([{ pid: 200, fd: 5 }]);
    // PID 100 was never read: its only-own fd 3 (777) has just PID 200 as holder.
    expect(map.get(777)).toEqual([{ pid: 200, fd: 6 }]);
  });
  it('reads priority PIDs first (a recent holder), before the newest', async () => {
    const map = await scanSocketInodes({ procRoot: root, concurrency: 1, wanted: new Set([777]), priorityPids: [100, 4242] });
    // Found in PID 100 first, so PID 200 (newer, also a holder) was never read.
    expect(map.get(777)).toEqual([{ pid: 100, fd: 3 }]);
  });
  it('never reads skipped PIDs (the gateway skips itself)', async () => {
    const map = await scanSocketInodes({ procRoot: root, skipPids: new Set([200]) });
    expect(map.has(888)).toBe(false);
    expect(map.get(777)).toEqual([{ pid: 100, fd: 3 }]);
  });
  it.skipIf(!skipNotice(process.getuid?.() === 0, "proc-process: the sockets' owners first", 'needs root (chown to other uids)'))("reads the sockets' owners' processes before another user's (newer) ones", async () => {
    const other = await mkdtemp(join(tmpdir(), 'egw-proc-uid-'));
    try {
      // /proc/PID/fd is owned by the process's uid: PID 20 runs as 1000, PID 30 (newer) as nobody; both hold 999.
      for (const [pid, uid] of [[20, 1000], [30, 65534]] as const) {
        await mkdir(join(other, String(pid), 'fd'), { recursive: true });
        await symlink('socket:[999]', join(other, String(pid), 'fd', '4'));
        await chown(join(other, String(pid), 'fd'), uid, uid);
      }
      const wanted = new Set([999]);
      expect((await scanSocketInodes({ procRoot: other, concurrency: 1, wanted, ownerUids: new Set([1000]) })).get(999)).toEqual([{ pid: 20, fd: 4 }]);
      expect((await scanSocketInodes({ procRoot: other, concurrency: 1, wanted, ownerUids: new Set([65534]) })).get(999)).toEqual([{ pid: 30, fd: 4 }]);
      // No owners known: newest first.
      expect((await scanSocketInodes({ procRoot: other, concurrency: 1, wanted })).get(999)).toEqual([{ pid: 30, fd: 4 }]);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });
  it('an unreadable proc root yields an empty map', async () => {
    expect((await scanSocketInodes({ procRoot: join(root, 'missing') })).size).toBe(0);
  });
});

describe('describeProcess', () => {
  it('joins user, loginuid, parent name and exe, and the start time', async () => {
    const p = await describeProcess(200, new UserDirectory(passwd), root);
    expect(p).toEqual({
      pid: 200,
      name: 'curl',
      exe: '/usr/bin/curl',
      cmdline: 'curl -x http://gw:3128 https://example.com',
      user: 'alice',
      uid: 1000,
      loginuid: 1000,
      ppid: 100,
      parentName: 'bash',
      parentExe: '/usr/bin/bash',
      startedAt: new Date(1700000000 * 1000 + 2500).toISOString(),
    });
  });
  it('a daemon: loginuid 4294967295, parent gone → null parent fields', async () => {
    const p = await describeProcess(300, new UserDirectory(passwd), root);
    expect(p).toMatchObject({ name: 'sshd', user: 'root', loginuid: 4294967295, ppid: 1, parentName: null, parentExe: null });
  });
  it('a vanished process is null', async () => {
    expect(await describeProcess(999, new UserDirectory(passwd), root)).toBeNull();
  });
});

describe('ProcessResolver', () => {
  it('prefers the descendant of a shared socket, caches, and rescans when a cached holder closed it', async () => {
    const r = new ProcessResolver({ procRoot: root, users: new UserDirectory(passwd) });
    const first = await r.resolveInodes([777, 888, 4242]);
    expect(first.get(777)?.pid).toBe(200);
    expect(first.get(888)?.pid).toBe(200);
    expect(first.has(4242)).toBe(false);
    const scans = r.scans;
    await r.resolveInodes([888]);
    expect(r.scans).toBe(scans);
    // curl closes fd 6: that cached holder no longer validates; bash's still does (no scan).
    await unlink(join(root, '200', 'fd', '6'));
    expect((await r.resolveInodes([777])).get(777)?.pid).toBe(100);
    expect(r.scans).toBe(scans);
    // bash closes it too: the cache entry is dropped, one rescan, nobody holds it.
    await unlink(join(root, '100', 'fd', '3'));
    expect((await r.resolveInodes([777])).has(777)).toBe(false);
    expect(r.scans).toBe(scans + 1);
  });
});
