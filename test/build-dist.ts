/**
 * vitest globalSetup: builds dist/ (`tsc -p tsconfig.build.json`, as `npm run build` does) once per
 * run, before any test. Tests spawn the CLI from dist/cli.js (CLI in test/helpers/serve-process.ts),
 * what `npm start` and the egressgate bin run: a `serve` reaches its listening line on about half the
 * CPU a start through tsx took (0.5 s against 1.1 s, measured), and the suite starts ~200 of them.
 *
 * Incremental: tsconfig.build.json keeps its tsbuildinfo inside dist/, so deleting dist/ rebuilds
 * everything, and with nothing changed a repeat build only checks the sources (3.5 s against 23 s
 * cold, on a loaded machine).
 * tsc trusts its tsbuildinfo and does not look at the outputs: an entry point deleted on its own
 * would stay missing, so then the tsbuildinfo goes too and everything is emitted again.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const ROOT = join(import.meta.dirname, '..');
const DIST = join(ROOT, 'dist');
/** The entry points tests spawn. */
const ENTRIES = ['cli.js', 'agent/main.js'];

function tsc(): void {
  const bin = join(dirname(createRequire(import.meta.url).resolve('typescript/package.json')), 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [bin, '-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    // tsc writes its diagnostics to stdout.
    throw new Error(`building dist/ for the tests failed (tsc -p tsconfig.build.json): ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

export default function buildDist(): void {
  tsc();
  if (ENTRIES.every((f) => existsSync(join(DIST, f)))) return;
  rmSync(join(DIST, 'tsconfig.build.tsbuildinfo'), { force: true });
  tsc();
  const missing = ENTRIES.filter((f) => !existsSync(join(DIST, f)));
  if (missing.length > 0) throw new Error(`building dist/ for the tests emitted no ${missing.join(', ')}`);
}
