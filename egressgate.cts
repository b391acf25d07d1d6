#!/usr/bin/env -S node --max-semi-space-size=16
/**
 * The `egressgate` bin (package.json "bin"): sizes libuv's thread pool, then runs cli.ts.
 *
 * CommonJS on purpose. libuv reads UV_THREADPOOL_SIZE once, when the pool starts, and node's ESM
 * loader starts it while it reads the first ES module's files: an ES module entry point cannot set
 * it for its own process. CommonJS reads this file synchronously, so the variable is in the
 * environment before any ES module is loaded (gateway/node-flags.ts, THREADPOOL_SIZE, says why 16).
 * A value already in the environment is the operator's choice and is left as given.
 */
process.env['UV_THREADPOOL_SIZE'] ??= '16';
import('./cli.ts').catch((err: unknown) => {
  process.stderr.write(`egressgate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
