/**
 * Regression: a flow log file removed from under the gateway (its directory deleted, `rm -rf
 * /var/log/egressgate`) went on taking every write, into an inode nobody could read: each record
 * after the removal was lost, with no error, `gw_flow_log_failing 0`, and no file at the path until a
 * SIGUSR2. Now the gateway sees the file has no name left (within a second), makes the directory
 * again, writes to a new file at the path, and writes there first what went to the removed file
 * since it last saw it named: every flow after the removal has its record, once.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { recordsAt, sizesOnce } from '../helpers/flow-log-cases.ts';
import { flowLogFixture } from '../helpers/flow-log-fixture.ts';
import { adminGet, type TestGateway, until } from '../helpers/gateway.ts';

const fx = flowLogFixture('egw-flowlog-removed-');

/** A GET of `size` bytes through the proxy (one curl); its record is the one with bytesIn `size`. */
async function get(g: TestGateway, size: number): Promise<number | undefined> {
  return (await fx.curlSizes(g, [size]))[0];
}

describe('flow log file removed while the gateway writes it', () => {
  it('every record after the removal reaches a new file at the path, once; the removal is logged', async () => {
    const dir = join(fx.top, 'logs');
    const path = join(dir, 'flows.jsonl');
    const g = await fx.gateway({ flowLog: { path } });
    for (const size of [11, 12, 13]) expect(await get(g, size)).toBe(200);
    await until('the first records', () => recordsAt(path).length === 3);

    rmSync(dir, { recursive: true });
    const after = [21, 22, 23, 24, 25];
    for (const size of after) expect(await get(g, size)).toBe(200);
    await until('a new file with the records made after the removal', () => recordsAt(path).filter((r) => after.includes(r.bytesIn)).length === after.length, 5000);
    expect(g.logs).toContainEqual(expect.objectContaining({ level: 'warn', path, msg: expect.stringMatching(/^flow log file was removed/) }));
    expect((await adminGet(g, '/metrics')).text).toMatch(/^gw_flow_log_failing 0$/m);

    // And it goes on there.
    expect(await get(g, 31)).toBe(200);
    await g.stop();
    // Each flow at most once; those after the removal all there (those before it went with the file,
    // unless they came after the last time the gateway saw it named: then they are written again).
    const sizes = sizesOnce(path);
    expect(sizes.filter((s) => s > 20)).toEqual([...after, 31]);
    expect(sizes.every((s) => [11, 12, 13, ...after, 31].includes(s))).toBe(true);
  }, 20_000);
});
