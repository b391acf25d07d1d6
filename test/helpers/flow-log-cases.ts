/**
 * What the flow-log integration tests share: flows made with one curl through the proxy, each a GET
 * of /size/N from the http-harness origin (so each flow's record is told apart by its bytesIn, N),
 * and what the tests read back (records, counts, the metric). The per-file set-up (temp dir, a tmpfs
 * to fill, origin, hooks) is flow-log-fixture.ts.
 */
import { existsSync, readFileSync, rmSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { run } from '../integration/http-harness.ts';
import { parseRecords } from './flow-records.ts';
import { adminGet, type TestGateway, until } from './gateway.ts';
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

/** One-page files set aside on a tmpfs by fillUntilLineCut's caller, each freed when a retry is needed. */
export const SPARE_PAGES = 3;

/**
 * Flows (GETs of /size/N, N from `made`'s next, 20 a round) until the tmpfs at `mnt` is full and the
 * flow log at `path` fails on it, its file ending inside a line the full disk cut: the state the
 * full-disk tests start from. Full means statfs has no free block and the log fails, not its first
 * failure: under load a write can stall (STALL_MS) with room left, failing the log with whole lines
 * in its file. A tmpfs fills by pages, so the failed write leaves the file at a page boundary: a cut
 * line, unless a line happens to end there (about 1 run in 680, lines ~680 bytes). That is no defect
 * (nothing was cut) but no test of one either: one of the `spares` (one-page files) is then freed,
 * the retry writes what is held into it, and the disk is filled again, a few times at most.
 * `made` gets every size asked for; N starts at `start`. Bounded: 400 flows a fill (~270 KiB).
 */
export async function fillUntilLineCut(
  g: TestGateway,
  getSizes: (via: TestGateway, sizes: readonly number[]) => Promise<number[]>,
  mnt: string,
  path: string,
  spares: readonly string[],
  made: number[],
  start = 1000,
): Promise<void> {
  let n = start;
  const isFull = async (): Promise<boolean> => statfsSync(mnt).bfree === 0 && (await flowLogFailing(g)) === 1;
  const fillUp = async (): Promise<void> => {
    for (const end = n + 400; n < end && !(await isFull()); n += 20) {
      const sizes = Array.from({ length: 20 }, (_, i) => n + i);
      expect(await getSizes(g, sizes)).toEqual(sizes.map(() => 200));
      made.push(...sizes);
      await sleep(20);
    }
    expect(await isFull()).toBe(true);
  };
  await fillUp();
  for (const spare of spares) {
    if (!readFileSync(path, 'utf8').endsWith('\n')) break;
    const size = statSync(path).size;
    rmSync(spare);
    // The retry writes what is held into the page: all of it (healthy again), or the page full.
    await until('the freed page taken', async () => statSync(path).size === size + 4096 || (await flowLogFailing(g)) === 0, 10_000);
    await fillUp();
  }
  expect(readFileSync(path, 'utf8').endsWith('\n')).toBe(false);
}

/** `SPARE_PAGES` one-page files in `mnt` (spare-0…), for fillUntilLineCut. */
export function makeSpares(mnt: string): string[] {
  const spares = Array.from({ length: SPARE_PAGES }, (_, i) => join(mnt, `spare-${i}`));
  for (const spare of spares) writeFileSync(spare, Buffer.alloc(4096));
  return spares;
}
