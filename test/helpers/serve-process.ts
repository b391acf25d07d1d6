/**
 * `egressgate serve` as its own process (dist/cli.js, built by test/build-dist.ts before any test),
 * for tests of what only a real process shows: signals, exit codes, its own stdout, its own
 * resolver. Resolves at the listening line with the listeners' addresses.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';

export const ROOT = join(import.meta.dirname, '..', '..');
/**
 * The built CLI, what `npm start` and the egressgate bin run: tests start it as
 * `process.execPath, CLI, ...args` (vitest's globalSetup builds dist/ first: test/build-dist.ts).
 */
export const CLI = join(ROOT, 'dist', 'cli.js');

export interface Served {
  child: ChildProcess;
  http: { host: string; port: number };
  socks: string;
  admin: string;
  /** The TLS listener's address when the config has one (listen.https), else null. */
  https: string | null;
  stderr: () => string;
}

/** The JSON log lines `served` wrote to stderr with message `msg` (after its first `from` characters). */
export function loggedLines(served: Served, msg: string, from = 0): Array<Record<string, unknown>> {
  return served
    .stderr()
    .slice(from)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l['msg'] === msg);
}

export interface ServeOptions {
  /** Added to this process's environment; a variable given as undefined is left out. */
  env?: NodeJS.ProcessEnv;
  /** Run it under another command (e.g. `unshare`): gets node's argv, returns the command line. */
  wrap?: (argv: string[]) => string[];
}

export async function spawnServe(configPath: string, opts: ServeOptions = {}): Promise<Served> {
  const argv = [process.execPath, CLI, 'serve', '--config', configPath, '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0'];
  const [cmd, ...args] = opts.wrap ? opts.wrap(argv) : argv;
  const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
  // A variable given as undefined is removed, not passed on empty.
  for (const [k, v] of Object.entries(opts.env ?? {})) if (v === undefined) delete env[k];
  const c = spawn(cmd as string, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  c.stderr?.on('data', (b: Buffer) => {
    stderr += b.toString('utf8');
  });
  const listening = await new Promise<{ http: string; socks: string; admin: string; https?: string }>((resolve, reject) => {
    let buf = '';
    const onData = (b: Buffer): void => {
      buf += b.toString('utf8');
      const line = buf.split('\n').find((l) => l.includes('"listening"'));
      if (!line) return;
      c.stdout?.off('data', onData);
      resolve(JSON.parse(line) as { http: string; socks: string; admin: string; https?: string });
    };
    c.stdout?.on('data', onData);
    c.once('exit', (code) => reject(new Error(`serve exited (${code}) before listening: ${stderr}`)));
  });
  const i = listening.http.lastIndexOf(':');
  return { child: c, http: { host: listening.http.slice(0, i), port: Number(listening.http.slice(i + 1)) }, socks: listening.socks, admin: listening.admin, https: listening.https ?? null, stderr: () => stderr };
}

/** Whether `serve` can run in a mount namespace of its own (root and `unshare -m`): see withResolvConf. */
export function canUnshareMounts(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('unshare', ['-m', 'true'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * ServeOptions.wrap that runs `serve` in a mount namespace with `resolvConf` bind-mounted over
 * /etc/resolv.conf: its OS resolver then asks a DNS server the test runs. Needs canUnshareMounts().
 */
export function withResolvConf(resolvConf: string): (argv: string[]) => string[] {
  return (argv) => ['unshare', '-m', 'sh', '-c', `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolvConf, ...argv];
}

/**
 * Send `signal` (SIGKILL unless given) to `child` if it still runs and wait for its exit (afterEach
 * of tests that spawn serve or another process; SIGTERM where the test wants serve's drain).
 */
export async function killIfRunning(child: ChildProcess | null, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

/**
 * A serve policy for the serve tests: enforce, loopback allowed, no attribution, records to `flowLog`
 * ("-" for stdout), and the drain's grace when given.
 */
export function loopbackServeConfig(flowLog: string, drainGraceMs?: number): string {
  return `
mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(flowLog)} }
${drainGraceMs === undefined ? '' : `limits: { drainGraceMs: ${drainGraceMs} }\n`}`;
}
