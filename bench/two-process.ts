/**
 * An experiment, not a product mode: `egressgate serve` in N processes (default 2) sharing its
 * listeners through node:cluster (round-robin: the primary accepts and hands each connection to a
 * worker). Each process has its own flow table, limits, detector state and flow log (a file each), so
 * per-identity limits and detection would each see only part of an identity's traffic. It exists to
 * measure what a multi-process gateway would reach on this machine (bench target egw-http-2p,
 * opt-in), which is the planners' decision to make.
 *
 *   node --import tsx bench/two-process.ts [--workers N] -- serve --http … --config …
 */
import cluster from 'node:cluster';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const argv = process.argv.slice(2);
const sep = argv.indexOf('--');
const own = sep >= 0 ? argv.slice(0, sep) : [];
const serveArgs = sep >= 0 ? argv.slice(sep + 1) : argv;
const w = own.indexOf('--workers');
const workers = w >= 0 ? Math.max(1, Number(own[w + 1]) || 2) : 2;

cluster.schedulingPolicy = cluster.SCHED_RR;
const exec = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli.js');
const c = serveArgs.indexOf('--config');
for (let i = 0; i < workers; i++) {
  // A flow log belongs to one gateway (its lock refuses a second): each worker writes its own,
  // `NAME-flows.jsonl` of bench/run.ts's config becoming `NAME-flows-wI.jsonl`.
  const args = [...serveArgs];
  if (c >= 0 && args[c + 1] !== undefined) {
    const own = args[c + 1]!.replace(/(\.[a-z]+)$/i, `-w${i}$1`);
    writeFileSync(own, readFileSync(args[c + 1]!, 'utf8').replace(/-flows\.jsonl/g, `-flows-w${i}.jsonl`));
    args[c + 1] = own;
  }
  cluster.setupPrimary({ exec, args });
  cluster.fork();
}
// Workers exit on their own when the primary's IPC channel closes; SIGTERM/SIGINT stop them first.
const stop = (): void => {
  for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGTERM');
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
