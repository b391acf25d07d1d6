/**
 * Regression: a flow log file removed while the log was failing (a full disk, then `rm` to make
 * room) lost the records a partial recovery had written to it: a retry that found room for some of
 * the held records wrote them to the file, the disk filled again, the file was removed, and the next
 * retry opened a new file at the path and wrote only what was still held. Those records were in the
 * removed file alone. The removal was only watched for while the log was healthy; now a retry that
 * finds the old file removed reads back what went to it since it was last seen named, as the watch
 * does, and writes that first. Through the real listeners, on a small tmpfs (root only).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseRecords, parseWrittenRecords } from '../helpers/flow-records.ts';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { curlSizes, mountTmpfs } from '../helpers/flow-log-cases.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { type Origin, startOrigin } from './http-harness.ts';

const top = mkdtempSync(join(tmpdir(), 'egw-flowlog-removed-failing-'));
const mnt = join(top, 'mnt');

const why = mountTmpfs(mnt, '64k');
const available = skipNotice(why === '', 'flow-log-removed-failing (a 64 KiB tmpfs)', why);

let origin: Origin;
let gw: TestGateway | null = null;

beforeAll(async () => {
  origin = await startOrigin();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});
afterAll(async () => {
  await origin?.close();
  if (available) execFileSync('umount', [mnt]);
  rmSync(top, { recursive: true, force: true });
});

/** GETs of /size/N for each N, one curl, through the proxy: their statuses. */
function getSizes(g: TestGateway, sizes: number[]): Promise<number[]> {
  return curlSizes({ host: g.httpHost, port: g.httpPort }, origin.port, sizes);
}

/** The whole records in the file at `path` now (none if there is no file; a full disk cuts the last line). */
function recordsAt(path: string): FlowRecord[] {
  return existsSync(path) ? parseWrittenRecords(readFileSync(path, 'utf8')) : [];
}

/** Fill what is left of the tmpfs (a write that stops at ENOSPC keeps what fitted). */
function fill(file: string): void {
  try {
    writeFileSync(file, Buffer.alloc(64 * 1024));
  } catch {
    // ENOSPC: full, as wanted
  }
}

const failing = async (g: TestGateway): Promise<number> => Number(/^gw_flow_log_failing (\d)$/m.exec((await adminGet(g, '/metrics')).text)?.[1]);

describe.skipIf(!available)('flow log file removed while the log is failing', () => {
  it('what a partial recovery wrote to the removed file is written to the new one; every flow has its record, once', async () => {
    const path = join(mnt, 'flows.jsonl');
    const filler = join(mnt, 'filler');
    const g = await startTestGateway({ flowLog: { path, onError: 'admit' } });
    gw = g;
    expect(await getSizes(g, [11, 12, 13])).toEqual([200, 200, 200]);
    await until('the first records', () => recordsAt(path).length === 3);

    // The disk full: 30 flows (~20 KB of records), most of them held.
    fill(filler);
    const held = Array.from({ length: 30 }, (_, i) => 1000 + i);
    expect(await getSizes(g, held)).toEqual(held.map(() => 200));
    await until('the full disk', async () => (await failing(g)) === 1);
    const inFileAtFailure = recordsAt(path).map((r) => r.bytesIn);

    // Room for some of them: a retry writes what fits, and the disk is full again.
    const size = statSync(path).size;
    truncateSync(filler, statSync(filler).size - 8192);
    await until('a partial recovery', () => statSync(path).size > size + 4096);
    await new Promise((r) => setTimeout(r, 300));
    expect(await failing(g)).toBe(1);
    const partly = recordsAt(path).map((r) => r.bytesIn).filter((n) => held.includes(n) && !inFileAtFailure.includes(n));
    expect(partly.length).toBeGreaterThan(3);

    // The file removed to make room (and the filler): the next retry opens a new file.
    rmSync(path);
    rmSync(filler);
    await until('recovery', async () => (await failing(g)) === 0, 5000);
    expect(await getSizes(g, [31, 32])).toEqual([200, 200]);
    await g.stop();
    gw = null;

    expect(readFileSync(path, 'utf8').endsWith('\n')).toBe(true);
    const got = parseRecords(readFileSync(path, 'utf8'));
    expect(new Set(got.map((r) => r.id)).size).toBe(got.length);
    const sizes = got.map((r) => r.bytesIn);
    expect(new Set(sizes).size).toBe(sizes.length);
    // Every flow not in the file when the log failed (those were there while it was named: removing
    // the file removed them) is in the new one, those the partial recovery wrote among them.
    const wanted = [...held.filter((n) => !inFileAtFailure.includes(n)), 31, 32];
    expect(wanted.filter((n) => !sizes.includes(n))).toEqual([]);
    expect(g.logs).toContainEqual(expect.objectContaining({ level: 'warn', path, msg: expect.stringMatching(/^flow log file was removed/) }));
  }, 30_000);
});
