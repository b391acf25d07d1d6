/**
 * Regression: a flow log truncated under the gateway (`: > flows.jsonl`, to make room on a disk
 * that is filling) and later cut by a full disk kept, after recovery, the start of the cut line glued
 * to the whole line written after it: one torn line, and a JSON-lines reader lost the record behind
 * it. The gateway counted its file's end by its own writes; after the truncation that count was
 * past the real end, so the recovery took the same file for another one and wrote the cut line whole
 * without taking its start off. The once-a-second removal check (one fstat) now also takes a file's
 * size as its end when no write of ours explains the difference. Through the real listeners, on a
 * small tmpfs (root only).
 *
 * The disk is full when statfs says no block is free and the log fails, not at the first failure:
 * under load a write can stall (STALL_MS) with room left, and the log then fails with whole lines in
 * its file. A tmpfs fills by pages, so the failed write leaves the file at a page boundary: a cut line,
 * unless a line happens to end there (about 1 run in 680, the lines ~680 bytes). That is no defect
 * (nothing was cut, so nothing can be torn) but no test of one either: a spare page is then freed and
 * the disk filled again at the next page, a few times at most.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { flowLogFailing as failing, fillUntilLineCut, makeSpares, SPARE_PAGES, sleep } from '../helpers/flow-log-cases.ts';
import { flowLogFixture } from '../helpers/flow-log-fixture.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';

const fx = flowLogFixture('egw-flowlog-truncated-', { tmpfs: { size: '256k', what: 'flow-log-truncated-full (a 256 KiB tmpfs)' } });
const { mnt } = fx;
const getSizes = fx.curlSizes;

describe.skipIf(!fx.hasTmpfs)('flow log truncated, then cut by a full disk', () => {
  it('after recovery every line is a whole record: the cut line is completed in place, each flow once', async () => {
    const path = join(mnt, 'flows.jsonl');
    writeFileSync(join(mnt, 'filler'), Buffer.alloc(150 * 1024 - SPARE_PAGES * 4096));
    const spares = makeSpares(mnt);
    const g = await fx.gateway({ flowLog: { path, onError: 'admit' } });
    const before = Array.from({ length: 40 }, (_, i) => 500 + i);
    expect(await getSizes(g, before)).toEqual(before.map(() => 200));
    await until('the first records', () => parseRecords(readFileSync(path, 'utf8')).length === before.length);

    // The operator empties the file; the gateway's once-a-second check sees it (3 s: a wide margin).
    writeFileSync(path, '');
    await sleep(3000);

    const made: number[] = [];
    await fillUntilLineCut(g, getSizes, mnt, path, spares, made);

    rmSync(join(mnt, 'filler'));
    await until('recovery', async () => (await failing(g)) === 0, 10_000);
    const more = [2001, 2002, 2003];
    expect(await getSizes(g, more)).toEqual([200, 200, 200]);
    made.push(...more);
    await g.stop();

    const text = readFileSync(path, 'utf8');
    const torn = text.split('\n').filter((l) => {
      if (l === '') return false;
      try {
        JSON.parse(l);
        return false;
      } catch {
        return true;
      }
    });
    expect(torn).toEqual([]);
    const got = parseRecords(text);
    expect(new Set(got.map((r) => r.id)).size).toBe(got.length);
    expect(got.map((r) => r.bytesIn).sort((a, b) => a - b)).toEqual(made);
  }, 60_000);
});
