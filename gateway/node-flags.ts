/**
 * The gateway's V8 settings, in one place. Two kinds, by when V8 reads them:
 *  - NODE_FLAGS, read when V8 sizes its heap, before any of our code runs: they must be on node's
 *    command line, so every launcher carries them;
 *  - applyV8Defaults(), read at run time: `serve` sets them itself, however node was started.
 */
import { setFlagsFromString } from 'node:v8';

/**
 * The node command-line flags the gateway is started with, wherever it is started: `npm start`, the
 * `egressgate` bin (cli.ts's `#!` line), deploy/systemd/egressgate.service, deploy/Dockerfile and
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

/**
 * The flags of NODE_FLAGS this process was started without, on node's command line or in
 * NODE_OPTIONS. A flag given with another value counts as given: that is the operator's choice.
 */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv, nodeOptions = process.env['NODE_OPTIONS'] ?? ''): string[] {
  // V8 takes `_` for `-` in flag names.
  const given = [...execArgv, ...nodeOptions.split(/\s+/)].map((g) => g.replace(/_/g, '-'));
  return NODE_FLAGS.filter((flag) => {
    const name = flag.split('=')[0] as string;
    return !given.some((g) => g === name || g.startsWith(`${name}=`));
  });
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
 * V8 settings `serve` applies itself, before the data plane is loaded (docs/benchmarks.md, "Sixth
 * pass"): no allocation-site pretenuring. Under a proxy's churn V8 marks the allocation sites of
 * per-connection objects "maybe tenure"; the young-generation collector then kept every connection's
 * objects alive through two collections and promoted them (~3 KB per CONNECT setup and 12 ms
 * scavenge pauses on Node 24; 1.2 KB without it). EGRESSGATE_V8_DEFAULTS=0 leaves V8 as it is.
 */
export function applyV8Defaults(): void {
  if (process.env['EGRESSGATE_V8_DEFAULTS'] === '0') return;
  setFlagsFromString('--no-allocation-site-pretenuring');
}
