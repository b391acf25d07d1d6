/**
 * egressgate load harness: `node --import tsx bench/run.ts [--quick] [--only a,b] [--runs N]
 * [--detectors on|off|both] [--detector-actions flag|default] [--flow-log on|off] [--gateway dist|tsx] [--profile TARGET]
 * [--idle 5000,9000] [--tests tput,setup,http,idle] [--spread-sources] [--time-limit-sec S] [--setup-warmup N]`;
 * `--setup-warmup N`: setups before the measured setup phase (default 3,000 within 1 s; with N, at most 8 s).
 * `--summarize FILE.jsonl` re-prints the tables of an earlier run.
 *
 * Measures on loopback, in one run, side by side: direct (no proxy), egressgate HTTP (CONNECT +
 * absolute-URI) and SOCKS5, the naive Node pipe proxy, and squid / danted when installed. Prints
 * Markdown tables (median (min–max) per target, ratio columns, the issue's targets met / missed) and
 * writes one JSON line per target and run to bench/results/<stamp>.jsonl.
 *
 * 1. start the origin (own process) and the load generator (own process, IPC);
 * 2. for every run, for every target: start the proxy fresh (clean idle-memory baseline), run the
 *    load generator against it (idle first, in run 1 only), stop the proxy by PID;
 * 3. summarise. A hard overall time limit, SIGINT/SIGTERM and errors all end in the same cleanup,
 *    which stops every process this harness started (by PID, plus their recorded descendants).
 */
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { NODE_FLAGS, THREADPOOL_SIZE } from '../gateway/node-flags.ts';
import { DETECTOR_DEFAULTS } from '../policy/detectors/defaults.ts';
import type { LoadOptions, LoadResult, ProxyKind } from './loadgen.ts';
import { processTree } from './proc-stats.ts';
import { budgetChecks, ceilingChecks, groupByTarget, metricsTable, type RatioPair, targetChecks, CPU_ROWS } from './summary.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string', default: '' },
    runs: { type: 'string', default: '' },
    detectors: { type: 'string', default: 'on' },
    'detector-actions': { type: 'string', default: 'flag' },
    'flow-log': { type: 'string', default: 'on' },
    gateway: { type: 'string', default: '' },
    profile: { type: 'string', default: '' },
    idle: { type: 'string', default: '' },
    tests: { type: 'string', default: 'tput,setup,http,idle' },
    'spread-sources': { type: 'boolean', default: false },
    'quiet-max-secs': { type: 'string', default: '' },
    'time-limit-sec': { type: 'string', default: '' },
    'setup-warmup': { type: 'string', default: '' },
    summarize: { type: 'string', default: '' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(0, 15).join('\n'));
  process.exit(0);
}
if (args.summarize) {
  const lines = readFileSync(args.summarize, 'utf8').split('\n').filter(Boolean);
  const rs = lines.map((l) => JSON.parse(l) as LoadResult & { event?: string }).filter((r) => !r.event && r.kind);
  console.log(renderSummary(rs, `summary of ${path.basename(args.summarize)}`));
  process.exit(0);
}
const QUICK = args.quick ?? false;
const RUNS = Math.max(1, Math.min(10, Number(args.runs || (QUICK ? 1 : 3))));
const DETECTORS = args.detectors === 'compare' ? 'both' : (args.detectors ?? 'on');
if (!['on', 'off', 'both'].includes(DETECTORS)) fail('--detectors must be on, off or both');
const TIME_LIMIT_SEC = Number(args['time-limit-sec'] || (QUICK ? 600 : 3600));
/**
 * Setups before the measured phase (at most SETUP_WARMUP_SECS). egressgate's first ~10,000 setups
 * after start cost more (V8 still compiling; docs/benchmarks.md has the curve), so the warm-up's own
 * rate and CPU are reported beside the measured phase. The default stays at 3,000: 20,000 did not
 * change egressgate's measured figure, and 50,000 connections per target leave so many sockets in
 * TIME_WAIT that danted started failing setups.
 */
const SETUP_WARMUP = Math.max(0, Math.min(100_000, Number(args['setup-warmup'] || 3000)));
const SETUP_WARMUP_SECS = args['setup-warmup'] ? 8 : 1;
const IDLE = (args.idle || (QUICK ? '1000' : '9000')).split(',').filter(Boolean).map(Number);

const STAMP = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
const RESULTS = path.join(HERE, 'results');
const RUN_DIR = path.join(RESULTS, `${STAMP}${QUICK ? '-quick' : ''}`);
const LOG_DIR = path.join(RUN_DIR, 'logs');
mkdirSync(LOG_DIR, { recursive: true, mode: 0o1777 });
try {
  execFileSync('chmod', ['1777', RUN_DIR, LOG_DIR]); // squid drops to user proxy, danted to nobody
} catch {
  // best effort
}
const JSONL = path.join(RESULTS, `${STAMP}${QUICK ? '-quick' : ''}.jsonl`);

function fail(msg: string): never {
  console.error(`bench: ${msg}`);
  process.exit(2);
}
const say = (...x: unknown[]): void => console.error('[bench]', ...x);

// ---------- process bookkeeping: everything started here is stopped here, by PID
const started = new Set<ChildProcess>();

async function stopProcess(child: ChildProcess): Promise<void> {
  const pid = child.pid;
  if (!pid) return;
  const kids = processTree(pid).slice(1);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    // already gone
  }
  const timer = setTimeout(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, 5000);
  await Promise.race([exited, sleep(8000)]);
  clearTimeout(timer);
  for (const k of kids) {
    try {
      process.kill(k, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  started.delete(child);
}

let cleaningUp = false;
async function cleanup(code: number): Promise<never> {
  if (!cleaningUp) {
    cleaningUp = true;
    await Promise.all([...started].map((c) => stopProcess(c)));
  }
  process.exit(code);
}
process.on('SIGINT', () => void cleanup(130));
process.on('SIGTERM', () => void cleanup(143));
const hardStop = setTimeout(() => {
  say(`hard time limit (${TIME_LIMIT_SEC} s) hit: stopping everything`);
  void cleanup(3);
}, TIME_LIMIT_SEC * 1000);
hardStop.unref();

/** Waits for the first stdout line matching `test` (bounded); the rest of stdout goes to the log. */
function readyLine(child: ChildProcess, test: (line: string) => boolean, timeoutMs: number, logName: string): Promise<string> {
  const out = createWriteStream(path.join(LOG_DIR, `${logName}.stdout`), { flags: 'a' });
  const err = createWriteStream(path.join(LOG_DIR, `${logName}.stderr`), { flags: 'a' });
  child.stderr?.pipe(err);
  return new Promise((resolve, reject) => {
    let done = false;
    const timer = setTimeout(() => {
      if (!done) {
        done = true;
        reject(new Error(`${logName}: no ready line within ${timeoutMs} ms (see ${LOG_DIR})`));
      }
    }, timeoutMs);
    child.once('exit', (code) => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        reject(new Error(`${logName}: exited with ${code} before ready (see ${LOG_DIR})`));
      }
    });
    if (!child.stdout) {
      resolve('');
      return;
    }
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      out.write(`${line}\n`);
      if (!done && test(line)) {
        done = true;
        clearTimeout(timer);
        resolve(line);
      }
    });
  });
}

async function waitPort(port: number, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (let i = 0; i < 1000 && Date.now() < end; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`port ${port} not listening after ${timeoutMs} ms`);
}

/**
 * Listening ports come from below the kernel's ephemeral range (32768+ here): a run leaves tens of
 * thousands of TIME_WAIT sockets on ephemeral ports, and a listen on port 0 then fails with
 * EADDRINUSE once they fill the range. Ports FIRST_PORT..ORIGIN_BASE_PORT-1 are handed out in turn.
 */
const FIRST_PORT = 20_000;
/** The origin's listeners start here (bench/origin.ts --base-port). */
const ORIGIN_BASE_PORT = 30_000;
let nextPort = FIRST_PORT;

async function freePort(): Promise<number> {
  for (let tries = 0; tries < ORIGIN_BASE_PORT - FIRST_PORT; tries++) {
    const port = nextPort;
    nextPort = nextPort + 1 >= ORIGIN_BASE_PORT ? FIRST_PORT : nextPort + 1;
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error(`no free port in ${FIRST_PORT}-${ORIGIN_BASE_PORT - 1}`);
}

/** TIME_WAIT sockets on this machine now (recorded per target: they make connect() dearer). */
function timeWaitCount(): number | null {
  try {
    const m = /TCP:.* tw (\d+)/.exec(readFileSync('/proc/net/sockstat', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

const hostPort = (hp: string): [string, number] => {
  const i = hp.lastIndexOf(':');
  return [hp.slice(0, i), Number(hp.slice(i + 1))];
};

// ---------- targets
interface Running {
  child: ChildProcess | null;
  host: string;
  port: number;
}
interface Target {
  name: string;
  kind: ProxyKind;
  /** Shown in the docs: how the proxy is started. */
  start: () => Promise<Running>;
  available: () => boolean;
  /** The only tests worth running against it (default: every test asked for). */
  tests?: readonly string[];
}

const has = (cmd: string): boolean => {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

// Gateway build: the built dist/cli.js by default (what users run), tsx as a fallback.
const DIST = path.join(ROOT, 'dist', 'cli.js');
const GATEWAY_MODE = args.gateway || (existsSync(DIST) ? 'dist' : 'tsx');
/**
 * When dist/ was last built: the build is incremental (tsconfig.build.json), so tsc rewrites only the
 * outputs whose text changed and dist/cli.js keeps an old time after a build that changed other
 * files; its build-info file is written by every build that emitted anything.
 */
function distBuiltAt(): number {
  const info = path.join(ROOT, 'dist', 'tsconfig.build.tsbuildinfo');
  return Math.max(statSync(DIST).mtimeMs, existsSync(info) ? statSync(info).mtimeMs : 0);
}

function newestSourceMtime(): number {
  let newest = 0;
  const walk = (dir: string, depth: number): void => {
    if (depth > 6) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p, depth + 1);
      else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const d of ['gateway', 'policy']) walk(path.join(ROOT, d), 0);
  return newest;
}

/** --detector-actions default: keep block/kill actions (shows what a real policy does to bulk transfers). */
const KEEP_DEFAULT_ACTIONS = args['detector-actions'] === 'default';

// The detectors that take settings (policy.deny, policy.deny-range and quarantine have none: the
// config refuses them under detection.detectors, where they used to be listed and ignored).
const ALL_DETECTORS = Object.keys(DETECTOR_DEFAULTS);

/**
 * --flow-log on (default): every flow record goes to a file, as squid's access log and danted's
 * connect/disconnect log do in their bench configs; off reproduces the earlier runs (no records).
 */
const FLOW_LOG = args['flow-log'] !== 'off';

/** Bench config: everything allowed incl. loopback, no attribution, flow log to a file, high limits. */
function gatewayConfig(name: string, detectorsOn: boolean, attribution: boolean): string {
  const lines = [
    '# generated by bench/run.ts',
    'mode: enforce',
    `identity: { localAttribution: ${attribution} }`,
    'roles: { any: { allow: [ { cidr: 0.0.0.0/0 } ] } }',
    'defaultRoles: [any]',
    'allowRanges: [127.0.0.0/8]',
    FLOW_LOG ? `flowLog: { path: ${JSON.stringify(path.join(LOG_DIR, `${name}-flows.jsonl`))} }` : 'flowLog: { path: null }',
    // One load generator is one source address holding up to 9,000 tunnels: no per-source cap here.
    'limits: { maxFlowsPerIdentity: 20000, maxNewFlowsPerSecPerIdentity: 100000, maxConnectionsPerSource: 0 }',
  ];
  // Detectors on: every detector enabled and evaluated, but an0081/an0080 only flag. With the default
  // actions the 1 GiB single-flow upload of the throughput test is (rightly) killed by
  // an0080.bulk-upload and the identity quarantined, which would zero every later phase.
  const det: string[] = [];
  for (const d of ALL_DETECTORS) {
    if (!detectorsOn) det.push(`    ${d}: { enabled: false }`);
    else if (d.startsWith('an008') && !KEEP_DEFAULT_ACTIONS) det.push(`    ${d}: { enabled: true, action: flag }`);
  }
  if (det.length) lines.push('detection:', '  detectors:', ...det);
  return `${lines.join('\n')}\n`;
}

/** `processes` > 1: the experiment in bench/two-process.ts (node:cluster, state per process; not a product mode). */
function gatewayTarget(name: string, kind: 'http' | 'socks5', detectorsOn: boolean, attribution = false, processes = 1): Target {
  return {
    name,
    kind,
    available: () => GATEWAY_MODE === 'tsx' || existsSync(DIST),
    start: async () => {
      const cfg = path.join(RUN_DIR, `${name}.yaml`);
      writeFileSync(cfg, gatewayConfig(name, detectorsOn, attribution));
      // As users start it (gateway/node-flags.ts).
      const nodeArgs: string[] = [...NODE_FLAGS];
      if (args.profile === name) nodeArgs.push('--cpu-prof', '--cpu-prof-dir', path.join(RUN_DIR, 'profiles'));
      if (processes > 1) nodeArgs.push('--import', 'tsx', path.join(HERE, 'two-process.ts'), '--workers', String(processes), '--');
      else if (GATEWAY_MODE === 'tsx') nodeArgs.push('--import', 'tsx', path.join(ROOT, 'cli.ts'));
      else nodeArgs.push(DIST);
      const [httpPort, socksPort, adminPort] = [await freePort(), await freePort(), await freePort()];
      nodeArgs.push('serve', '--http', `127.0.0.1:${httpPort}`, '--socks', `127.0.0.1:${socksPort}`, '--admin', `127.0.0.1:${adminPort}`, '--config', cfg);
      const child = spawn(process.execPath, nodeArgs, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, UV_THREADPOOL_SIZE: String(THREADPOOL_SIZE) } });
      started.add(child);
      // Every process prints its own listening line.
      let listening = 0;
      const line = await readyLine(child, (l) => l.includes('"event":"listening"') && ++listening >= processes, 90_000, name);
      const ready = JSON.parse(line) as { http: string; socks: string };
      const [host, port] = hostPort(kind === 'http' ? ready.http : ready.socks);
      return { child, host, port };
    },
  };
}

function naiveTarget(name: string, kind: 'http' | 'socks5', extra: string[] = []): Target {
  return {
    name,
    kind,
    available: () => true,
    start: async () => {
      const ports = ['--http-port', String(await freePort()), '--socks-port', String(await freePort())];
      const child = spawn(process.execPath, ['--import', 'tsx', path.join(HERE, 'naive-proxy.ts'), ...ports, ...extra], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      started.add(child);
      const line = await readyLine(child, (l) => l.includes('"event":"listening"'), 60_000, name);
      const ready = JSON.parse(line) as { http: string; socks: string };
      const [host, port] = hostPort(kind === 'http' ? ready.http : ready.socks);
      return { child, host, port };
    },
  };
}

function peerTarget(name: string, kind: 'http' | 'socks5', cmd: string, conf: string, argv: (file: string) => string[]): Target {
  return {
    name,
    kind,
    available: () => has(cmd),
    start: async () => {
      const port = await freePort();
      const text = readFileSync(path.join(HERE, 'configs', conf), 'utf8').replaceAll('@PORT@', String(port)).replaceAll('@LOGDIR@', LOG_DIR);
      const file = path.join(RUN_DIR, conf);
      writeFileSync(file, text);
      const child = spawn(cmd, argv(file), { stdio: ['ignore', 'pipe', 'pipe'] });
      started.add(child);
      void readyLine(child, () => false, 3_600_000, name).catch(() => {});
      await waitPort(port, 30_000);
      await sleep(1000);
      return { child, host: '127.0.0.1', port };
    },
  };
}

const direct: Target = {
  name: 'direct',
  kind: 'direct',
  available: () => true,
  start: async () => ({ child: null, host: '', port: 0 }),
};

const egwDetectorsOn = DETECTORS !== 'off';
const TARGETS: Target[] = [
  direct,
  naiveTarget('naive-http', 'http'),
  naiveTarget('naive-socks', 'socks5'),
  // node:http in, undici out, nothing else: how far egressgate's absolute-URI design can go here.
  // Its CONNECT is naive-http's, so only the absolute-URI test is run.
  { ...naiveTarget('naive-undici', 'http', ['--client', 'undici']), tests: ['http'] },
  // CONNECT on a plain net server, no node:http: the least a Node relay does per setup.
  { ...naiveTarget('naive-relay', 'http', ['--connect', 'raw']), tests: ['setup'] },
  peerTarget('squid', 'http', 'squid', 'squid.conf', (f) => ['-N', '-f', f]),
  peerTarget('danted', 'socks5', 'danted', 'danted.conf', (f) => ['-f', f]),
  gatewayTarget('egw-http', 'http', egwDetectorsOn),
  gatewayTarget('egw-socks', 'socks5', egwDetectorsOn),
];
if (DETECTORS === 'both') {
  TARGETS.push(gatewayTarget('egw-http-nodet', 'http', false), gatewayTarget('egw-socks-nodet', 'socks5', false));
}
// Opt-in only (--only egw-http-attr): per-connection /proc attribution switched on.
// Opt-in only (--only egw-http-2p): two gateway processes (bench/two-process.ts), an experiment for
// the absolute-URI test, which is the one a second core could help (see docs/benchmarks.md).
const OPT_IN = [
  gatewayTarget('egw-http-attr', 'http', egwDetectorsOn, true),
  gatewayTarget('egw-socks-attr', 'socks5', egwDetectorsOn, true),
  { ...gatewayTarget('egw-http-2p', 'http', egwDetectorsOn, false, 2), tests: ['http'] },
];
const only = (args.only ?? '').split(',').filter(Boolean);
const selected = [...TARGETS, ...OPT_IN].filter((t) => (only.length ? only.includes(t.name) : TARGETS.includes(t)));
for (const n of only) if (![...TARGETS, ...OPT_IN].some((t) => t.name === n)) fail(`unknown target ${n}`);

// ---------- main
async function main(): Promise<void> {
  const meta = {
    event: 'meta',
    stamp: STAMP,
    quick: QUICK,
    runs: RUNS,
    detectors: DETECTORS,
    flowLog: FLOW_LOG,
    gateway: GATEWAY_MODE,
    distStale: GATEWAY_MODE === 'dist' && existsSync(DIST) ? distBuiltAt() < newestSourceMtime() : null,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    node: process.version,
    loadavgStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
    nofile: (() => {
      try {
        return execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim();
      } catch {
        return null;
      }
    })(),
  };
  writeFileSync(JSONL, `${JSON.stringify(meta)}\n`, { flag: 'a' });
  say(JSON.stringify(meta));
  if (meta.distStale) say('WARNING: dist/cli.js is older than gateway/ or policy/ sources (npm run build)');
  for (const t of selected) if (!t.available()) say(`skipping ${t.name}: not installed`);
  const targets = selected.filter((t) => t.available());

  // 1. origin and load generator, each its own process
  const origin = fork(path.join(HERE, 'origin.ts'), ['--base-port', String(ORIGIN_BASE_PORT)], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  started.add(origin);
  const originPorts = await new Promise<{ echo: number; echoPorts: number[]; data: number; http: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('origin did not start in 60 s')), 60_000);
    origin.once('message', (m) => {
      clearTimeout(timer);
      resolve(m as { echo: number; echoPorts: number[]; data: number; http: number });
    });
    origin.once('exit', (c) => reject(new Error(`origin exited ${c}`)));
  });
  origin.stdout?.resume();
  origin.stderr?.pipe(createWriteStream(path.join(LOG_DIR, 'origin.stderr')));
  const gen = fork(path.join(HERE, 'loadgen.ts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
  started.add(gen);
  gen.stderr?.pipe(createWriteStream(path.join(LOG_DIR, 'loadgen.stderr')));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('loadgen did not start in 60 s')), 60_000);
    gen.once('message', () => {
      clearTimeout(timer);
      resolve();
    });
    gen.once('exit', (c) => reject(new Error(`loadgen exited ${c}`)));
  });
  const runLoad = (o: LoadOptions): Promise<LoadResult> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`loadgen: ${o.name} took over 15 min`)), 15 * 60_000);
      const onMsg = (m: { type: string; result: LoadResult }): void => {
        if (m?.type !== 'result') return;
        clearTimeout(timer);
        gen.off('message', onMsg);
        resolve(m.result);
      };
      gen.on('message', onMsg);
      gen.send({ type: 'run', options: o });
    });

  // 2. runs × targets, a fresh proxy each time
  const results: LoadResult[] = [];
  let targetRuns = 0;
  for (let run = 1; run <= RUNS; run++) {
    for (const t of targets) {
      const wanted = (args.tests ?? '').split(',').filter(Boolean);
      const tests = wanted.filter((x) => (x !== 'idle' || (run === 1 && t.kind !== 'direct')) && (!t.tests || t.tests.includes(x)));
      if (!tests.length) continue;
      let running: Running | null = null;
      try {
        running = await t.start();
        const timeWait = timeWaitCount();
        say(`run ${run}/${RUNS} ${t.name} pid=${running.child?.pid ?? '-'} port=${running.port} load=${os.loadavg()[0]?.toFixed(1)} time_wait=${timeWait ?? '?'}`);
        const r = await runLoad({
          name: t.name,
          kind: t.kind,
          proxyHost: running.host || '127.0.0.1',
          proxyPort: running.port,
          proxyPid: running.child?.pid ?? 0,
          originPid: origin.pid ?? 0,
          originHost: '127.0.0.1',
          // A fresh echo port per target run: TIME_WAIT left by earlier targets must not slow this one.
          echoPort: originPorts.echoPorts[targetRuns++ % originPorts.echoPorts.length] ?? originPorts.echo,
          dataPort: originPorts.data,
          httpPort: originPorts.http,
          tests,
          tputBytes: QUICK ? 256 * 2 ** 20 : 1024 * 2 ** 20,
          tputPar: 8,
          tputMaxSecs: QUICK ? 10 : 30,
          setupConc: 50,
          setupMax: QUICK ? 10_000 : 30_000,
          setupSecs: QUICK ? 3 : 6,
          setupWarmMax: SETUP_WARMUP,
          setupWarmSecs: SETUP_WARMUP_SECS,
          httpConc: 50,
          httpSecs: QUICK ? 3 : 6,
          idle: IDLE,
          idleHoldSecs: QUICK ? 1 : 3,
          idleConc: 200,
          spreadSources: args['spread-sources'] ?? false,
          quietPct: 25,
          quietMaxSecs: Number(args['quiet-max-secs'] || (QUICK ? 0 : 2)),
        });
        const line = { ...r, run, time_wait_start: timeWait };
        results.push(line);
        writeFileSync(JSONL, `${JSON.stringify(line)}\n`, { flag: 'a' });
        if (r.error) say(`${t.name}: ${r.error}`);
      } catch (e) {
        say(`${t.name} run ${run} failed: ${(e as Error).message}`);
        writeFileSync(JSONL, `${JSON.stringify({ name: t.name, run, error: (e as Error).message })}\n`, { flag: 'a' });
      } finally {
        if (running?.child) await stopProcess(running.child);
        await sleep(1000);
      }
    }
  }

  // 3. summary
  const md = renderSummary(
    results,
    `egressgate benchmark ${STAMP}${QUICK ? ' (quick)' : ''}`,
    `runs: ${RUNS}; gateway: ${GATEWAY_MODE}${meta.distStale ? ' (STALE dist)' : ''}; detectors: ${DETECTORS}; flow log: ${FLOW_LOG ? 'on' : 'off'}; ${meta.cpus} CPUs; load average at start ${meta.loadavgStart.join(' ')}, at end ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
    `JSON lines: ${path.relative(ROOT, JSONL)}`,
  );
  writeFileSync(path.join(RUN_DIR, 'SUMMARY.md'), `${md}\n`);
  console.log(md);
}

/** Markdown: metrics with ratio columns, proxy CPU, the issue's targets. */
function renderSummary(results: LoadResult[], title: string, info = '', footer = ''): string {
  const by = groupByTarget(results);
  const order = ['direct', 'naive-http', 'naive-socks', 'naive-undici', 'naive-relay', 'squid', 'danted', 'egw-http', 'egw-socks', 'egw-http-nodet', 'egw-socks-nodet', 'egw-http-attr', 'egw-socks-attr', 'egw-http-2p'];
  const ratios: RatioPair[] = [
    ['egw-http', 'naive-http'],
    ['egw-socks', 'naive-socks'],
    ['egw-http', 'naive-undici'],
    ['egw-http', 'naive-relay'],
    ['egw-http', 'squid'],
    ['egw-socks', 'danted'],
    ['egw-http-2p', 'squid'],
    ['egw-http', 'egw-http-nodet'],
    ['egw-socks', 'egw-socks-nodet'],
    ['egw-http-attr', 'egw-http'],
    ['egw-socks-attr', 'egw-socks'],
  ];
  return [
    `## ${title}`,
    '',
    info,
    '',
    'median (min–max) over runs; ratios are of medians (for ms, KiB and CPU-cost rows, < 1× is better).',
    'Tunnel rows: CONNECT for *-http/squid, SOCKS5 for *-socks/danted. HTTP rows for *-socks/danted are origin-form GETs inside SOCKS5 tunnels.',
    '',
    metricsTable(by, order, ratios),
    '',
    '### Proxy CPU, % of one core, and CPU cost per unit of work',
    '',
    metricsTable(by, order, ratios, CPU_ROWS),
    '',
    '### Targets',
    '',
    targetChecks(by),
    '',
    '### Ceilings of the bare designs (reference, not targets)',
    '',
    ceilingChecks(by),
    '',
    '### What the rate targets leave the proxy on this machine (CPU per setup or request)',
    '',
    budgetChecks(by, os.cpus().length),
    '',
    footer,
  ].join('\n');
}

try {
  await main();
  await cleanup(0);
} catch (e) {
  say(`error: ${(e as Error).stack ?? e}`);
  await cleanup(1);
}
