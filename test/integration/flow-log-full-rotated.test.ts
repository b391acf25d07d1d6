/**
 * Regression: a flow log on a full disk, rotated away before the disk had room again (logrotate's
 * move, then SIGUSR2), kept the start of the line the full disk cut as its last line: a fragment of
 * a record with no newline, which a reader of the rotated file took for a broken record (and `cat`
 * of the two files glued to the next file's first). The record itself was written whole in the new
 * file, as it still is; the fragment is now taken off the rotated file's end. Through the real
 * listeners, on a small tmpfs (root only).
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { flowLogFailing as failing, fillUntilLineCut, makeSpares, SPARE_PAGES } from '../helpers/flow-log-cases.ts';
import { flowLogFixture } from '../helpers/flow-log-fixture.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';

const fx = flowLogFixture('egw-flowlog-full-', { tmpfs: { size: '256k', what: 'flow-log-full-rotated (a 256 KiB tmpfs)' } });
const { mnt } = fx;
const getSizes = fx.curlSizes;

describe.skipIf(!fx.hasTmpfs)('flow log on a full disk, rotated away before the disk has room', () => {
  it('the rotated file ends on a whole record; every flow has one record, in one file or the other', async () => {
    const path = join(mnt, 'flows.jsonl');
    // ~56 KiB of room: ~80 records.
    writeFileSync(join(mnt, 'filler'), Buffer.alloc(200 * 1024 - SPARE_PAGES * 4096));
    const spares = makeSpares(mnt);
    const g = await fx.gateway({ flowLog: { path, onError: 'admit' } });
    const made: number[] = [];
    // Until the disk is full and the log's file ends in the line it cut.
    await fillUntilLineCut(g, getSizes, mnt, path, spares, made);

    // logrotate: move it away, then the disk has room, then SIGUSR2 (reopenLogs).
    renameSync(path, `${path}.1`);
    rmSync(join(mnt, 'filler'));
    await g.reopenLogs();
    await until('recovery', async () => (await failing(g)) === 0);
    const more = [2001, 2002, 2003];
    expect(await getSizes(g, more)).toEqual([200, 200, 200]);
    made.push(...more);
    await g.stop();

    const rotated = readFileSync(`${path}.1`, 'utf8');
    expect(rotated.endsWith('\n')).toBe(true);
    const got = [...parseRecords(rotated), ...parseRecords(readFileSync(path, 'utf8'))];
    expect(new Set(got.map((r) => r.id)).size).toBe(got.length);
    expect(got.map((r) => r.bytesIn).sort((a, b) => a - b)).toEqual(made);
  }, 60_000);
});
