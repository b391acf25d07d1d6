/**
 * Real Linux network namespaces for end-to-end tests of egressgate as a network chokepoint.
 *
 * A `NetnsLab` owns every namespace it creates (names carry the test process's PID, so parallel
 * runs never collide) and every process it spawns inside them; `destroy()` kills the processes
 * and deletes the namespaces (which also deletes their veth pairs), and a process `exit` hook does
 * the same if a test run dies half-way. Addresses live only inside these namespaces and are never
 * routed anywhere else. Needs root, iproute2 (`ip`), and for the tests using it nftables and curl.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

export interface NetnsSupport {
  readonly ok: boolean;
  /** Why namespaces cannot be used here (empty when ok). */
  readonly reason: string;
}

function hasCommand(cmd: string): boolean {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
  return r.status === 0;
}

/**
 * Whether this machine can run namespace tests: root, `ip`, the extra commands asked for, and a
 * probe namespace that really can be created and deleted (containers without CAP_SYS_ADMIN cannot).
 */
export function netnsSupport(extraCommands: readonly string[] = []): NetnsSupport {
  if (process.platform !== 'linux') return { ok: false, reason: `platform is ${process.platform}, not linux` };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'not running as root' };
  for (const cmd of ['ip', ...extraCommands]) {
    if (!hasCommand(cmd)) return { ok: false, reason: `command not found: ${cmd}` };
  }
  const probe = `egprobe${process.pid}`;
  const add = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8', timeout: 10_000 });
  if (add.status !== 0) return { ok: false, reason: `ip netns add failed: ${(add.stderr ?? '').trim()}` };
  spawnSync('ip', ['netns', 'del', probe], { timeout: 10_000 });
  return { ok: true, reason: '' };
}

export interface ExecResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a command to completion (bounded by `timeoutMs`); never throws on a non-zero exit. */
export function run(cmd: string, args: readonly string[], timeoutMs = 15_000, input?: string): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, [...args], { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Like `run` but rejects with the command's stderr when it exits non-zero. */
export async function runOk(cmd: string, args: readonly string[], timeoutMs = 15_000, input?: string): Promise<string> {
  const r = await run(cmd, args, timeoutMs, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** A process spawned inside a namespace with its stdout split into lines as they arrive. */
export interface NsProcess {
  readonly child: ChildProcess;
  readonly lines: string[];
  readonly stderr: () => string;
  /** Resolves with the first line (past or future) for which `match` is true; rejects on timeout or exit. */
  waitForLine(match: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  /** SIGTERM, then SIGKILL if it is still alive after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/** One end of a veth pair: the namespace, the interface name there, and its addresses. */
export interface LinkEnd {
  readonly ns: string;
  readonly ifname: string;
  readonly addr: string;
  readonly addr6?: string;
}

export class NetnsLab {
  readonly namespaces: string[] = [];
  private readonly processes = new Set<ChildProcess>();
  private readonly prefix: string;
  private readonly onExit = (): void => this.destroySync();

  constructor(tag = 'eg') {
    this.prefix = `${tag}${process.pid}`;
    process.once('exit', this.onExit);
  }

  /** Create a namespace named `<tag><pid><suffix>` with loopback up; returns the full name. */
  async addNamespace(suffix: string): Promise<string> {
    const name = `${this.prefix}${suffix}`;
    // A leftover from a crashed run with the same PID would make `add` fail: remove it first.
    await run('ip', ['netns', 'del', name]);
    await runOk('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    await runOk('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return name;
  }

  /**
   * Connect two namespaces with a veth pair created directly inside them (the interface names
   * never exist in the root namespace, so they cannot collide with the host's or another run's).
   * Addresses are CIDR strings such as `10.200.1.1/24`; `addr6` (optional) an IPv6 one, added
   * without duplicate address detection so it is usable at once.
   */
  async link(a: LinkEnd, b: LinkEnd): Promise<void> {
    await runOk('ip', ['link', 'add', a.ifname, 'netns', a.ns, 'type', 'veth', 'peer', 'name', b.ifname, 'netns', b.ns]);
    for (const end of [a, b]) {
      await runOk('ip', ['-n', end.ns, 'addr', 'add', end.addr, 'dev', end.ifname]);
      if (end.addr6 !== undefined) await runOk('ip', ['-n', end.ns, '-6', 'addr', 'add', end.addr6, 'dev', end.ifname, 'nodad']);
      await runOk('ip', ['-n', end.ns, 'link', 'set', end.ifname, 'up']);
    }
  }

  /** Run a command inside a namespace to completion (bounded). */
  exec(ns: string, cmd: string, args: readonly string[], timeoutMs = 15_000, input?: string): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', ns, cmd, ...args], timeoutMs, input);
  }

  /** Like `exec`, rejecting on a non-zero exit. */
  execOk(ns: string, cmd: string, args: readonly string[], timeoutMs = 15_000, input?: string): Promise<string> {
    return runOk('ip', ['netns', 'exec', ns, cmd, ...args], timeoutMs, input);
  }

  /**
   * Start a long-running process inside a namespace. `ip netns exec` execs the command, so the
   * child's pid is the command's own and signals reach it directly.
   */
  spawn(ns: string, cmd: string, args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): NsProcess {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.processes.add(child);
    child.once('exit', () => this.processes.delete(child));
    const lines: string[] = [];
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      // Keep the tail only: enough for a failure message, bounded for chatty processes.
      stderr = (stderr + chunk).slice(-16_384);
    });
    const waiters = new Set<() => void>();
    if (child.stdout) {
      createInterface({ input: child.stdout }).on('line', (line) => {
        lines.push(line);
        for (const w of [...waiters]) w();
      });
    }
    const waitForLine = (match: (line: string) => boolean, timeoutMs = 20_000): Promise<string> =>
      new Promise((resolve, reject) => {
        let seen = 0;
        const cleanup = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
          child.off('exit', onExit);
        };
        const check = (): void => {
          for (; seen < lines.length; seen++) {
            const line = lines[seen]!;
            if (match(line)) {
              cleanup();
              resolve(line);
              return;
            }
          }
        };
        const onExit = (code: number | null): void => {
          cleanup();
          reject(new Error(`${cmd} exited (${code}) before the expected line; stderr: ${stderr.slice(-2000)}`));
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out after ${timeoutMs} ms waiting for a line from ${cmd}; stderr: ${stderr.slice(-2000)}`));
        }, timeoutMs);
        waiters.add(check);
        child.once('exit', onExit);
        check();
      });
    const stop = async (graceMs = 5_000): Promise<number | null> => {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const [code] = (await exited) as [number | null];
      clearTimeout(timer);
      return code;
    };
    return { child, lines, stderr: () => stderr, waitForLine, stop };
  }

  /** Kill every process this lab started and delete every namespace it created. Idempotent. */
  async destroy(): Promise<void> {
    const exits = [...this.processes].map((child) => {
      if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      const exited = once(child, 'exit').then(() => undefined);
      child.kill('SIGKILL');
      return exited;
    });
    await Promise.all(exits);
    this.processes.clear();
    for (const ns of this.namespaces.splice(0)) await run('ip', ['netns', 'del', ns]);
    process.off('exit', this.onExit);
  }

  /** Last-resort cleanup from a process `exit` hook, where only synchronous calls run. */
  private destroySync(): void {
    for (const child of this.processes) child.kill('SIGKILL');
    for (const ns of this.namespaces.splice(0)) spawnSync('ip', ['netns', 'del', ns], { timeout: 5_000 });
  }
}

/** Addresses of the three-namespace chokepoint topology (private test range, namespace-local). */
export const CHOKEPOINT = {
  clientIp: '10.200.1.2',
  gatewayLanIp: '10.200.1.1',
  gatewayWanIp: '10.200.2.1',
  originIp: '10.200.2.2',
  clientIp6: 'fd00:200:1::2',
  gatewayLanIp6: 'fd00:200:1::1',
  gatewayWanIp6: 'fd00:200:2::1',
  originIp6: 'fd00:200:2::2',
  /** The gateway's interface towards the client (a LAN side). */
  gatewayLanIf: 'gw-lan',
  /** The gateway's interface towards the "internet" namespace (the WAN side). */
  gatewayWanIf: 'gw-wan',
  testRange: '10.200.0.0/16',
} as const;

export interface Chokepoint {
  readonly client: string;
  readonly gateway: string;
  readonly internet: string;
}

/**
 * client (10.200.1.2) ── gateway (10.200.1.1 | 10.200.2.1, forwarding on) ── internet (10.200.2.2)
 * and the same in IPv6 (fd00:200:1::/64, fd00:200:2::/64). The client's default routes and the
 * internet's routes back to the client all go through the gateway namespace, so without lock-down
 * rules the client reaches the origin directly and the origin reaches the client (no NAT).
 */
export async function buildChokepoint(lab: NetnsLab): Promise<Chokepoint> {
  const client = await lab.addNamespace('c');
  const gateway = await lab.addNamespace('g');
  const internet = await lab.addNamespace('i');
  await lab.link(
    { ns: client, ifname: 'cl0', addr: `${CHOKEPOINT.clientIp}/24`, addr6: `${CHOKEPOINT.clientIp6}/64` },
    { ns: gateway, ifname: CHOKEPOINT.gatewayLanIf, addr: `${CHOKEPOINT.gatewayLanIp}/24`, addr6: `${CHOKEPOINT.gatewayLanIp6}/64` },
  );
  await lab.link(
    { ns: gateway, ifname: CHOKEPOINT.gatewayWanIf, addr: `${CHOKEPOINT.gatewayWanIp}/24`, addr6: `${CHOKEPOINT.gatewayWanIp6}/64` },
    { ns: internet, ifname: 'in0', addr: `${CHOKEPOINT.originIp}/24`, addr6: `${CHOKEPOINT.originIp6}/64` },
  );
  await runOk('ip', ['-n', client, 'route', 'add', 'default', 'via', CHOKEPOINT.gatewayLanIp]);
  await runOk('ip', ['-n', client, '-6', 'route', 'add', 'default', 'via', CHOKEPOINT.gatewayLanIp6]);
  await runOk('ip', ['-n', internet, 'route', 'add', '10.200.1.0/24', 'via', CHOKEPOINT.gatewayWanIp]);
  await runOk('ip', ['-n', internet, '-6', 'route', 'add', 'fd00:200:1::/64', 'via', CHOKEPOINT.gatewayWanIp6]);
  // Written through /proc rather than `sysctl`, which is not installed everywhere (procps).
  await lab.execOk(gateway, 'sh', ['-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding']);
  return { client, gateway, internet };
}
