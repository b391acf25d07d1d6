/**
 * `flowLog.interimSec` follows a reload (SPEC §3, §5): a tunnel open before a SIGHUP that turns
 * interim records on gets them, with its counts so far and `"intermediate": true`, and still exactly
 * one final record with every byte. The interval used to be read once at start. flowLog.path is read
 * at start only: a reload that changes it says so, and records stay where the log was opened.
 */
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import { spawnServe } from '../helpers/serve-process.ts';
import { rawConnect, readUntil } from './http-harness.ts';

const TOKEN = 'flow-interim-reload-token-0123456789';

const fx = serveEchoFixture('egw-interim-reload-');

const policy = (flowLog: string, interimSec: number): string => `
mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
detection: { sampleIntervalMs: 100 }
flowLog: { path: ${JSON.stringify(flowLog)}, interimSec: ${interimSec} }
`;

/** The flow log's records once `pred` holds for one of them (bounded: 200 reads, 50 ms apart). */
async function recordsWhen(flowLog: string, pred: (r: FlowRecord) => boolean): Promise<FlowRecord[]> {
  for (let i = 0; i < 200; i++) {
    const records = parseWrittenRecords(await readFile(flowLog, 'utf8').catch(() => ''));
    if (records.some(pred)) return records;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('no such record in the flow log');
}

describe('egressgate serve: a reload that changes flowLog.interimSec', () => {
  it('SIGHUP turning interim records on: a tunnel opened before it gets them with its counts so far, then one final record', async () => {
    const flowLog = join(fx.dir, 'flows.jsonl');
    const configPath = join(fx.dir, 'policy.yaml');
    await writeFile(configPath, policy(flowLog, 0));
    const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    fx.killAfterTest(s);
    const tunnel = await rawConnect(s.http.port);
    tunnel.on('error', () => {});
    tunnel.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
    expect((await readUntil(tunnel, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    tunnel.write('a'.repeat(100));
    await readUntil(tunnel, 'a'.repeat(100));

    await writeFile(configPath, policy(flowLog, 1));
    s.child.kill('SIGHUP');
    const port = tunnel.localPort;
    const withInterim = await recordsWhen(flowLog, (r) => r.intermediate === true && r.client.port === port);
    const interim = withInterim.find((r) => r.intermediate === true) as FlowRecord;
    expect(interim).toMatchObject({ protocol: 'connect', state: 'active', bytesOut: 100, bytesIn: 100, intermediate: true });

    tunnel.write('b'.repeat(50));
    await readUntil(tunnel, 'b'.repeat(50));
    tunnel.end();
    const all = await recordsWhen(flowLog, (r) => r.intermediate !== true && r.client.port === port);
    const finals = all.filter((r) => r.intermediate !== true);
    expect(finals.map((r) => [r.id, r.state, r.closeReason, r.bytesOut, r.bytesIn])).toEqual([[interim.id, 'closed', 'closed', 150, 150]]);
    expect(all.filter((r) => r.intermediate === true).every((r) => r.id === interim.id && r.state === 'active')).toBe(true);
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    expect(((await exited) as [number | null])[0]).toBe(0);
  }, 60_000);
});

describe('egressgate serve: a reload that changes flowLog.path', () => {
  it('says the path applies at the next restart; the live tunnel and later flows are recorded, once, where the log was opened', async () => {
    const opened = join(fx.dir, 'opened.jsonl');
    const moved = join(fx.dir, 'moved.jsonl');
    const configPath = join(fx.dir, 'path.yaml');
    await writeFile(configPath, policy(opened, 0));
    const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    fx.killAfterTest(s);
    const tunnel = await rawConnect(s.http.port);
    tunnel.on('error', () => {});
    tunnel.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
    expect((await readUntil(tunnel, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    const warned = new Promise<Record<string, unknown>>((resolve) => {
      let buf = '';
      const onData = (b: Buffer): void => {
        buf += b.toString('utf8');
        const line = buf.split('\n').find((l) => l.includes('apply at the next restart'));
        if (line === undefined) return;
        s.child.stderr?.off('data', onData);
        resolve(JSON.parse(line) as Record<string, unknown>);
      };
      s.child.stderr?.on('data', onData);
    });
    await writeFile(configPath, policy(moved, 0));
    s.child.kill('SIGHUP');
    expect(await warned).toMatchObject({ level: 'warn', settings: ['flowLog.path'], flowLog: opened });
    tunnel.write('m'.repeat(70));
    await readUntil(tunnel, 'm'.repeat(70));
    tunnel.end();
    const port = tunnel.localPort;
    const records = await recordsWhen(opened, (r) => r.client.port === port);
    expect(records.filter((r) => r.client.port === port).map((r) => [r.closeReason, r.bytesOut, r.bytesIn])).toEqual([['closed', 70, 70]]);
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    expect(((await exited) as [number | null])[0]).toBe(0);
    await expect(readFile(moved, 'utf8')).rejects.toThrow(/ENOENT/);
  }, 60_000);
});
