/**
 * The per-file set-up of the flow-log integration tests, written once: a temp dir (and a small tmpfs
 * in it, root only, when asked), an http-harness origin, and the gateway each test starts (a `serve`
 * process or an in-process TestGateway), stopped after each test. After the file the origin is
 * closed, the tmpfs unmounted and the dir removed, whether its tests passed or not: the hooks are
 * registered before anything is made. The gateway and the origin harness are imported only by a
 * file that uses them (a second or so of loading each file): a `serve`-only file loads as quickly as
 * it did with its own set-up.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import type { Config } from '../../policy/config.ts';
import type { Origin } from '../integration/http-harness.ts';
import { parseWrittenRecords } from './flow-records.ts';
import type { DeepPartial, TestGateway } from './gateway.ts';
import { killIfRunning, loopbackServeConfig, type Served, spawnServe } from './serve-process.ts';
import { skipNotice } from './skip-notice.ts';

export interface FlowLogFixtureOptions {
  /** Start an http-harness origin for the file (default true). */
  hasOrigin?: boolean;
  /** A tmpfs at `<top>/mnt` of `size` (`64k`, `2m`); `what` names the tests it is for (skipNotice). */
  tmpfs?: { size: string; what: string };
}

export interface FlowLogFixture {
  /** The file's temp dir. */
  readonly top: string;
  /** The tmpfs's mount point, `<top>/mnt` (mounted only when `hasTmpfs`). */
  readonly mnt: string;
  /** Whether the tmpfs asked for is mounted (skipNotice said why not); false when none was asked for. */
  readonly hasTmpfs: boolean;
  /** The origin's port (from beforeAll on). */
  originPort(): number;
  /** `serve` with the config at `configPath`, SIGKILLed after the test if it still runs. */
  serve(configPath: string): Promise<Served>;
  /** startTestGateway(overrides), stopped after the test; its stop() may be called first (it runs once). */
  gateway(overrides: DeepPartial<Config>): Promise<TestGateway>;
  /** GETs of /size/N for each N in `sizes`, one curl, through `via`'s HTTP proxy: their statuses, in order. */
  curlSizes(via: Served | TestGateway, sizes: readonly number[]): Promise<number[]>;
}

/** Mount a tmpfs of `size` (`64k`, `2m`) at `dir` (made here): '' once mounted, else why not (for skipNotice). */
function mountTmpfs(dir: string, size: string): string {
  if (process.getuid?.() !== 0) return 'needs root (a tmpfs mount)';
  try {
    mkdirSync(dir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' });
    return '';
  } catch (err) {
    return `mount -t tmpfs failed: ${(err as Error).message}`;
  }
}

/** Unmount `dir`; a busy mount is detached all the same (no run leaves one behind), and the failure thrown. */
function unmount(dir: string): void {
  try {
    execFileSync('umount', [dir]);
  } catch (err) {
    execFileSync('umount', ['--lazy', dir]);
    throw err;
  }
}

/** The flow-log test set-up for this file (call at its top level): see the module comment. */
export function flowLogFixture(prefix: string, opts: FlowLogFixtureOptions = {}): FlowLogFixture {
  let origin: Origin | null = null;
  let child: Served['child'] | null = null;
  let gw: TestGateway | null = null;
  let top = '';
  let hasTmpfs = false;
  if (opts.hasOrigin !== false) {
    beforeAll(async () => {
      origin = await (await import('../integration/http-harness.ts')).startOrigin();
    });
  }
  afterEach(async () => {
    await killIfRunning(child);
    child = null;
    await gw?.stop();
    gw = null;
  });
  afterAll(async () => {
    try {
      await origin?.close();
    } finally {
      try {
        if (hasTmpfs) unmount(join(top, 'mnt'));
      } finally {
        if (top !== '') rmSync(top, { recursive: true, force: true });
      }
    }
  });

  top = mkdtempSync(join(tmpdir(), prefix));
  const mnt = join(top, 'mnt');
  if (opts.tmpfs) {
    const why = mountTmpfs(mnt, opts.tmpfs.size);
    hasTmpfs = skipNotice(why === '', opts.tmpfs.what, why);
  }
  return {
    top,
    mnt,
    hasTmpfs,
    originPort: () => (origin as Origin).port,
    serve: async (configPath) => {
      const s = await spawnServe(configPath);
      child = s.child;
      return s;
    },
    gateway: async (overrides) => {
      const g = await (await import('./gateway.ts')).startTestGateway(overrides);
      let stopped: Promise<void> | null = null;
      const stop = g.stop;
      g.stop = () => {
        stopped ??= stop();
        return stopped;
      };
      gw = g;
      return g;
    },
    curlSizes: async (via, sizes) => (await import('./flow-log-cases.ts')).curlSizes('httpHost' in via ? { host: via.httpHost, port: via.httpPort } : via.http, (origin as Origin).port, sizes),
  };
}

/**
 * A flow-log serve config: loopbackServeConfig's policy with its records to `path`, `flowLog.onError:
 * admit` when asked, `flowLog.interimSec` and `limits` when given.
 */
export function flowLogServeConfig(path: string, opts: { isAdmitting?: boolean; interimSec?: number; limits?: Record<string, number> } = {}): string {
  const flowLog = [...(opts.isAdmitting ? ['onError: admit'] : []), `path: ${JSON.stringify(path)}`, ...(opts.interimSec === undefined ? [] : [`interimSec: ${opts.interimSec}`])];
  const config = loopbackServeConfig(path).replace(`flowLog: { path: ${JSON.stringify(path)} }`, `flowLog: { ${flowLog.join(', ')} }`);
  const limits = opts.limits ? Object.entries(opts.limits).map(([k, v]) => `${k}: ${v}`) : [];
  return limits.length > 0 ? `${config}limits: { ${limits.join(', ')} }\n` : config;
}

/** Write flowLogServeConfig(path, opts) to `configPath`. */
export function writeFlowLogServeConfig(configPath: string, path: string, opts: Parameters<typeof flowLogServeConfig>[1] = {}): void {
  writeFileSync(configPath, flowLogServeConfig(path, opts));
}

export interface ServedForFile {
  /** The file's `serve` (from beforeAll on). */
  served(): Served;
  /** The record of the flow whose client port is `port`, once written. */
  recordOf(port: number): Promise<FlowRecord>;
}

/**
 * One `serve` for the whole file, with loopbackServeConfig's policy, `limits`, and its flow log in a
 * temp dir: started in beforeAll, SIGKILLed and its dir removed in afterAll.
 */
export function servedForFile(prefix: string, limits: Record<string, number>): ServedForFile {
  let dir = '';
  let served: Served | null = null;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), prefix));
    const configPath = join(dir, 'serve.yaml');
    writeFlowLogServeConfig(configPath, join(dir, 'flows.jsonl'), { limits });
    served = await spawnServe(configPath);
  });
  afterAll(async () => {
    await killIfRunning(served?.child ?? null);
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });
  return {
    served: () => served as Served,
    recordOf: async (port) => {
      let found: FlowRecord | undefined;
      const { until } = await import('./gateway.ts');
      await until('the flow record', async () => {
        const text = await readFile(join(dir, 'flows.jsonl'), 'utf8').catch(() => '');
        found = parseWrittenRecords(text).find((r) => r.client.port === port);
        return found !== undefined;
      });
      return found as FlowRecord;
    },
  };
}
