/**
 * What the flow-log integration tests share: flows made with one curl through the proxy, each a GET
 * of /size/N from the http-harness origin (so each flow's record is told apart by its bytesIn, N),
 * and what the tests read back (records, counts, the metric). The per-file set-up (temp dir, a tmpfs
 * to fill, origin, hooks) is flow-log-fixture.ts.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { expect } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { run } from '../integration/http-harness.ts';
import { parseRecords } from './flow-records.ts';
import { adminGet, type TestGateway } from './gateway.ts';
import type { Served } from './serve-process.ts';

/** GETs of /size/N for each N in `sizes`, one curl, through the HTTP proxy at host:port: their statuses, in order. */
export async function curlSizes(proxy: { host: string; port: number }, originPort: number, sizes: readonly number[]): Promise<number[]> {
  const args = ['-s', '-w', '%{http_code}\n', '-x', `http://${proxy.host}:${proxy.port}`];
  for (const n of sizes) args.push('-o', '/dev/null', `http://127.0.0.1:${originPort}/size/${n}`);
  const r = await run('curl', args);
  return r.stdout.toString('utf8').trim().split('\n').map(Number);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Fill what is left of a tmpfs with up to `bytes` at `file` (a write that stops at ENOSPC keeps what fitted). */
export function fill(file: string, bytes: number): void {
  try {
    writeFileSync(file, Buffer.alloc(bytes));
  } catch {
    // ENOSPC: full, as wanted
  }
}

/** The records in the file at `path` now (none if there is no file), read with `parse`. */
export function recordsAt(path: string, parse: (text: string) => FlowRecord[] = parseRecords): FlowRecord[] {
  return existsSync(path) ? parse(readFileSync(path, 'utf8')) : [];
}

/**
 * The records in the flow log at `path` once the gateway has stopped, checked whole (the file ends on
 * a newline) and each once (no id, no bytesIn twice): their sizes (bytesIn), in file order.
 */
export function sizesOnce(path: string): number[] {
  const got = recordsAt(path);
  expect(readFileSync(path, 'utf8').endsWith('\n')).toBe(true);
  expect(new Set(got.map((r) => r.id)).size).toBe(got.length);
  const sizes = got.map((r) => r.bytesIn);
  expect(new Set(sizes).size).toBe(sizes.length);
  return sizes;
}

/** How many times `msg` is in a `serve` process's stderr so far. */
export const logCount = (s: Served, msg: string): number => s.stderr().split(msg).length - 1;

/** The gateway's gw_flow_log_failing (1 while the flow log fails, else 0). */
export async function flowLogFailing(g: TestGateway): Promise<number> {
  return Number(/^gw_flow_log_failing (\d)$/m.exec((await adminGet(g, '/metrics')).text)?.[1]);
}
