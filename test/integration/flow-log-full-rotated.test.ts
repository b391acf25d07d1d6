/**
 * Regression: a flow log on a full disk, rotated away before the disk had room again (logrotate's
 * move, then SIGUSR2), kept the start of the line the full disk cut as its last line: a fragment of
 * a record with no newline, which a reader of the rotated file took for a broken record (and `cat`
 * of the two files glued to the next file's first). The record itself was written whole in the new
 * file, as it still is; the fragment is now taken off the rotated file's end. Through the real
 * listeners, on a small tmpfs (root only).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { curlSizes, mountTmpfs } from '../helpers/flow-log-cases.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { type Origin, startOrigin } from './http-harness.ts';

const top = mkdtempSync(join(tmpdir(), 'egw-flowlog-full-'));
const mnt = join(top, 'mnt');

const why = mountTmpfs(mnt, '256k');
const available = skipNotice(why === '', 'flow-log-full-rotated (a 256 KiB tmpfs)', why);

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

const failing = async (g: TestGateway): Promise<number> => Number(/^gw_flow_log_failing (\d)$/m.exec((await adminGet(g, '/metrics')).text)?.[1]);

describe.skipIf(!available)('flow log on a full disk, rotated away before the disk has room', () => {
  it('the rotated file ends on a whole record; every flow has one record, in one file or the other', async () => {
    const path = join(mnt, 'flows.jsonl');
    // ~56 KiB of room: ~80 records.
    writeFileSync(join(mnt, 'filler'), Buffer.alloc(200 * 1024));
    const g = await startTestGateway({ flowLog: { path, onError: 'admit' } });
    gw = g;
    const made: number[] = [];
    // Until the disk is full (bounded: 400 flows would take ~260 KiB).
    for (let n = 1000; n < 1400 && (await failing(g)) === 0; n += 20) {
      const sizes = Array.from({ length: 20 }, (_, i) => n + i);
      expect(await getSizes(g, sizes)).toEqual(sizes.map(() => 200));
      made.push(...sizes);
      await new Promise((r) => setTimeout(r, 20));
    }
    await until('the full disk', async () => (await failing(g)) === 1);
    // The write that failed left the start of a line (lines are ~650 bytes, the disk full at a page).
    expect(readFileSync(path, 'utf8').endsWith('\n')).toBe(false);

    // logrotate: move it away, then the disk has room, then SIGUSR2 (reopenLogs).
    renameSync(path, `${path}.1`);
    rmSync(join(mnt, 'filler'));
    await g.reopenLogs();
    await until('recovery', async () => (await failing(g)) === 0);
    const more = [2001, 2002, 2003];
    expect(await getSizes(g, more)).toEqual([200, 200, 200]);
    made.push(...more);
    await g.stop();
    gw = null;

    const rotated = readFileSync(`${path}.1`, 'utf8');
    expect(rotated.endsWith('\n')).toBe(true);
    const got = [...parseRecords(rotated), ...parseRecords(readFileSync(path, 'utf8'))];
    expect(new Set(got.map((r) => r.id)).size).toBe(got.length);
    expect(got.map((r) => r.bytesIn).sort((a, b) => a - b)).toEqual(made);
  }, 30_000);
});
