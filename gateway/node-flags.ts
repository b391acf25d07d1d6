/**
 * The gateway's V8 settings, in one place. Two kinds, by when V8 reads them:
 *  - NODE_FLAGS, read when V8 sizes its heap, before any of our code runs: they must be on node's
 *    command line, so every launcher carries them;
 *  - v8RuntimeFlags(), read at run time: `serve` sets them itself (applyV8Defaults), however node
 *    was started.
 */
import { setFlagsFromString } from 'node:v8';

/**
 * The node command-line flags the gateway is started with, wherever it is started: `npm start`, the
 * `egressgate` bin (egressgate.cts's `#!` line), deploy/systemd/egressgate.service, deploy/Dockerfile and
 * the benchmark (bench/run.ts). test/integration/deploy-files.test.ts checks that all of them carry
 * exactly these.
 *
 * `--max-semi-space-size=16` (MiB per young-generation semi-space): where node 20 and 22 stop on
 * 64-bit. Node 24 sizes the young generation from the machine's memory instead; on a 24 GiB machine
 * it let it grow to 128 MiB, and a burst of connections then left ~6 KiB of young generation per
 * tunnel resident (RSS per idle tunnel 15–18 KiB instead of 9–10 KiB). Setting it from inside the
 * process (`v8.setFlagsFromString`) is too late: V8 sizes the heap at start. A/B on node 24, same
 * machine and build: CONNECT setups and absolute-URI requests cost the same CPU with and without it
 * (docs/benchmarks.md, "Seventh pass").
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

/** The V8 flags given to this process, on node's command line or in NODE_OPTIONS (`_` read as `-`). */
function givenFlags(execArgv: readonly string[] = process.execArgv, nodeOptions = process.env['NODE_OPTIONS'] ?? ''): string[] {
  return [...execArgv, ...nodeOptions.split(/\s+/)].map((g) => g.replace(/_/g, '-'));
}

/** Whether `flag`'s name (without its value or `--no-`) was given, with any value or negated. */
function isGiven(flag: string, given: readonly string[]): boolean {
  const name = (flag.split('=')[0] as string).replace(/^--no-/, '--');
  const negated = name.replace(/^--/, '--no-');
  return given.some((g) => g === name || g === negated || g.startsWith(`${name}=`));
}

/**
 * The flags of NODE_FLAGS this process was started without, on node's command line or in
 * NODE_OPTIONS. A flag given with another value counts as given: that is the operator's choice.
 */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv, nodeOptions = process.env['NODE_OPTIONS'] ?? ''): string[] {
  const given = givenFlags(execArgv, nodeOptions);
  return NODE_FLAGS.filter((flag) => !isGiven(flag, given));
}

/**
 * Why `serve` should say so: on node 24 and later the young generation otherwise grows with the
 * machine's memory (node 20 and 22 stop where the flag does, so there it changes nothing).
 */
export function nodeFlagsWarning(nodeVersion: string = process.versions.node, missing: readonly string[] = missingNodeFlags()): string | null {
  if (missing.length === 0 || Number(nodeVersion.split('.')[0]) < 24) return null;
  return `node was started without ${missing.join(' ')}: node ${nodeVersion} then grows its young generation with the machine's memory (about twice the RSS per idle tunnel); start the gateway as npm start, the egressgate bin and deploy/ do (docs/deploy.md, "Node flags")`;
}

/**
 * V8 settings `serve` applies itself, before the data plane is loaded. A flag the operator gave
 * (command line or NODE_OPTIONS, with any value or negated) is left as given.
 *
 * - `--no-allocation-site-pretenuring` (docs/benchmarks.md, "Sixth pass"): under a proxy's churn V8
 *   marks the allocation sites of per-connection objects "maybe tenure"; the young-generation
 *   collector then kept every connection's objects alive through two collections and promoted them
 *   (~3 KB per CONNECT setup and 12 ms scavenge pauses on Node 24; 1.2 KB without it).
 * - `--invocation-count-for-turbofan=800` (node 22 and later; node 20's V8 tiers up by another
 *   measure and lacks the flag), a quarter of V8's 3,000 (docs/benchmarks.md, "Eighth pass"): a
 *   gateway runs the same few paths for every connection, so they may be optimised sooner. On node
 *   24 the first ~15,000 CONNECT setups after a start cost 15–80 % more CPU than later ones, most of
 *   it in Maglev code and Turbofan's compile threads; with the flag that phase ends after ~3,000.
 *   The steady state is the same either way.
 */
export function v8RuntimeFlags(nodeVersion: string = process.versions.node, given: readonly string[] = givenFlags()): string[] {
  const defaults = ['--no-allocation-site-pretenuring'];
  if (Number(nodeVersion.split('.')[0]) >= 22) defaults.push('--invocation-count-for-turbofan=800');
  return defaults.filter((flag) => !isGiven(flag, given));
}

/** Apply v8RuntimeFlags(). EGRESSGATE_V8_DEFAULTS=0 leaves V8 as it is. */
export function applyV8Defaults(): void {
  if (process.env['EGRESSGATE_V8_DEFAULTS'] === '0') return;
  for (const flag of v8RuntimeFlags()) setFlagsFromString(flag);
}

/**
 * libuv's thread pool runs the flow and audit logs' file writes and the OS resolver's lookups. It
 * has 4 threads unless UV_THREADPOOL_SIZE says otherwise, and lets DNS use only half of them: two
 * lookups at once for the whole gateway, each held for the OS resolver's full timeout when a name's
 * servers do not answer. The launchers (`npm start`, deploy/systemd/egressgate.service,
 * deploy/Dockerfile, the benchmark) set 16: 8 lookups at once, shared between clients by
 * gateway/upstream/resolve.ts; so does the `egressgate` bin (egressgate.cts), a CommonJS launcher
 * that sets it before any ES module loads. An ES module cannot: node's module loader starts the pool
 * while it reads the gateway's own files, before any of our code runs.
 */
export const THREADPOOL_SIZE = 16;
