/**
 * Regression: a flow log file removed while the log was failing (a full disk, then `rm` to make
 * room) lost the records a partial recovery had written to it: a retry that found room for some of
 * the held records wrote them to the file, the disk filled again, the file was removed, and the next
 * retry opened a new file at the path and wrote only what was still held. Those records were in the
 * removed file alone. The removal was only watched for while the log was healthy; now a retry that
 * finds the old file removed reads back what went to it since it was last seen named, as the watch
 * does, and writes that first. Through the real listeners, on a small tmpfs (root only).
 */
import { readFileSync, rmSync, statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { flowLogFailing as failing, fill as fillUpTo, recordsAt as recordsIn } from '../helpers/flow-log-cases.ts';
import { flowLogFixture } from '../helpers/flow-log-fixture.ts';
import { parseRecords, parseWrittenRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';

const fx = flowLogFixture('egw-flowlog-removed-failing-', { tmpfs: { size: '64k', what: 'flow-log-removed-failing (a 64 KiB tmpfs)' } });
const { mnt } = fx;
const getSizes = fx.curlSizes;

/** The whole records in the file at `path` now (none if there is no file; a full disk cuts the last line). */
const recordsAt = (path: string): FlowRecord[] => recordsIn(path, parseWrittenRecords);

/** Fill what is left of the tmpfs. */
const fill = (file: string): void => fillUpTo(file, 64 * 1024);

describe.skipIf(!fx.hasTmpfs)('flow log file removed while the log is failing', () => {
  it('what a partial recovery wrote to the removed file is written to the new one; every flow has its record, once', async () => {
    const path = join(mnt, 'flows.jsonl');
    const filler = join(mnt, 'filler');
    const g = await fx.gateway({ flowLog: { path, onError: 'admit' } });
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
