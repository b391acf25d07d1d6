import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Flow, FlowRecord } from '../../../gateway/flow/flow.ts';
import { FlowLog } from '../../../gateway/flow/flow-log.ts';
import { FlowTable } from '../../../gateway/flow/flow-table.ts';
import { parseRecords, sampleRecord } from '../../helpers/flow-records.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-flowlog-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const record = (i: number): FlowRecord => sampleRecord(i, ['x'.repeat(i % 50)]);

const lines = (path: string): FlowRecord[] => parseRecords(readFileSync(path, 'utf8'));

describe('FlowLog', () => {
  it('writes every record once, in order, across batches and event-loop turns; flush waits for all', async () => {
    const path = join(dir, 'many.jsonl');
    const log = await FlowLog.open(path);
    // More than one 256 KiB batch within a single turn, then a few more turns.
    for (let i = 0; i < 2000; i++) log.write(record(i));
    for (let turn = 0; turn < 5; turn++) {
      await new Promise((r) => setImmediate(r));
      for (let i = 0; i < 100; i++) log.write(record(2000 + turn * 100 + i));
    }
    await log.flush();
    const got = lines(path);
    expect(got).toHaveLength(2500);
    expect(got.map((r) => r.id)).toEqual(Array.from({ length: 2500 }, (_, i) => `f${i}`));
    expect(got[1234]?.bytesIn).toBe(2468);
    await log.close();
  });

  it('a record written just before close is on disk once close resolves', async () => {
    const path = join(dir, 'close.jsonl');
    const log = await FlowLog.open(path);
    log.write(record(7));
    await log.close();
    expect(lines(path).map((r) => r.id)).toEqual(['f7']);
  });

  it('writes closed flows and interim records of live ones in the order they happened, each as it was then', async () => {
    const path = join(dir, 'table.jsonl');
    const log = await FlowLog.open(path);
    const clock = { t: 1_764_000_000_000 };
    const flows = new FlowTable({ sink: log, now: () => clock.t, interimSec: 1 });
    const open = (port: number): Flow => {
      const f = flows.open({ protocol: 'connect', listener: 'http', client: { ip: '127.0.0.1', port }, identity: { user: 'u', host: null, roles: ['any'], process: null }, destination: { host: 'example.test', ip: null, port: 443 } });
      flows.setDestinationIp(f, '127.0.0.9');
      return f;
    };
    const expected: string[] = [];
    const long = open(50000);
    for (let i = 0; i < 300; i++) {
      const f = open(40000 + i);
      f.bytesOut = i;
      clock.t += 7;
      flows.close(f, 'closed');
      expected.push(f.toJsonLine(clock.t));
      if (i % 100 === 99) {
        long.bytesIn += 1000;
        clock.t += 1000;
        flows.sweep();
        // The interim record is of the flow as it is now; it goes on changing afterwards.
        expected.push(long.toJsonLine(clock.t, true));
      }
    }
    long.bytesIn += 5;
    flows.close(long, 'closed');
    expected.push(long.toJsonLine(clock.t));
    await log.close();
    expect(readFileSync(path, 'utf8')).toBe(`${expected.join('\n')}\n`);
  });
});
