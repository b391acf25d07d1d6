/**
 * A real squid as a parent proxy on a loopback port, for the chaining tests that must see what squid
 * itself answers: CONNECT allowed to every port from loopback, no cache, no logs kept, run in the
 * foreground (-N) from a temporary directory and killed at close. As root squid drops to its
 * cache_effective_user, so the directory is left writable to it.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closedPort } from './closed-port.ts';

export interface SquidParent {
  port: number;
  url: string;
  close(): Promise<void>;
}

/** Whether a squid binary is installed (squid -v runs). */
export function squidAvailable(): boolean {
  try {
    execFileSync('squid', ['-v'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Start squid; resolves once it accepts connections (at most 15 s). */
export async function startSquidParent(): Promise<SquidParent> {
  const dir = await mkdtemp(join(tmpdir(), 'egw-squid-'));
  await chmod(dir, 0o777);
  const port = await closedPort();
  const conf = join(dir, 'squid.conf');
  await writeFile(
    conf,
    [
      `http_port 127.0.0.1:${port}`,
      'pid_filename none',
      'cache deny all',
      'cache_mem 8 MB',
      'access_log none',
      'cache_log /dev/null',
      `coredump_dir ${dir}`,
      'acl loopback src 127.0.0.0/8',
      'http_access allow loopback',
      'http_access deny all',
      'shutdown_lifetime 0 seconds',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn('squid', ['-f', conf, '-N'], { cwd: dir, stdio: 'ignore' });
  const exited = once(child, 'exit');
  const deadline = Date.now() + 15_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
      throw new Error(`squid did not start on 127.0.0.1:${port}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
