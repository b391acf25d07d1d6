/**
 * The gateway when its flow log cannot be written, through the real listeners: the flow log's path
 * is a symlink to /dev/full (every write fails with ENOSPC), later replaced by a regular file.
 *  - `flowLog.onError: refuse` (the default): new flows get 503 `flow-log-unavailable` (SOCKS5:
 *    general failure), /readyz says not ready, the metrics say so; a tunnel already open carries on;
 *    once the file is writable every record is in it, the refusals' included, each once;
 *  - `flowLog.onError: admit`: flows go on being admitted, and their records reach the file too.
 */
import { once } from 'node:events';
import { readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REFUSAL_RECORDS_HELD } from '../../gateway/admission.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { flowLogFixture } from '../helpers/flow-log-fixture.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { adminGet, type TestGateway, until } from '../helpers/gateway.ts';
import { rawConnect, readUntil, run } from './http-harness.ts';
import { startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const fx = flowLogFixture('egw-flowlog-it-');
let echo: TcpOrigin;

beforeAll(async () => {
  echo = await startTcpOrigin();
});
afterAll(async () => {
  await echo.close();
});

/** A flow log path that fails every write until `repair()` puts a regular file in its place. */
function failingLogPath(name: string): { path: string; repair: () => void } {
  const path = join(fx.top, name);
  symlinkSync('/dev/full', path);
  return {
    path,
    repair: () => {
      writeFileSync(`${path}.new`, '');
      renameSync(`${path}.new`, path);
    },
  };
}

async function curlGet(g: TestGateway, path: string): Promise<{ status: number; body: string }> {
  const r = await run('curl', ['-s', '-o', '-', '-w', '\n%{http_code}', '-x', `http://${g.httpHost}:${g.httpPort}`, `http://127.0.0.1:${fx.originPort()}${path}`]);
  const text = r.stdout.toString('utf8');
  const i = text.lastIndexOf('\n');
  return { status: Number(text.slice(i + 1)), body: text.slice(0, i) };
}

const admin = adminGet;

/** Whether the gateway's metrics say the flow log is failing (1) or not (0). */
async function flowLogFailing(g: TestGateway, value: 0 | 1): Promise<boolean> {
  return new RegExp(`^gw_flow_log_failing ${value}$`, 'm').test((await admin(g, '/metrics')).text);
}

const records = (path: string): FlowRecord[] => parseRecords(readFileSync(path, 'utf8'));

describe('flow log that cannot be written', () => {
  it('onError refuse: new flows get 503 flow-log-unavailable, not ready, a live tunnel carries on; every record written once it recovers', async () => {
    const log = failingLogPath('refuse.jsonl');
    const g = await fx.gateway({ flowLog: { path: log.path } });
    // A tunnel opened while the log is still healthy (no record written yet).
    const tunnel = await rawConnect(g.httpPort);
    tunnel.on('error', () => {});
    tunnel.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${echo.port}\r\n\r\n`);
    expect((await readUntil(tunnel, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    tunnel.write('a'.repeat(100));
    await readUntil(tunnel, 'a'.repeat(100));

    // The first record written fails: from then on the gateway refuses new flows.
    expect(await curlGet(g, '/size/10')).toEqual({ status: 200, body: 'abcdefghij' });
    await until('the failure', () => flowLogFailing(g, 1));
    expect(g.logs).toContainEqual(expect.objectContaining({ level: 'error', code: 'ENOSPC', path: log.path, onError: 'refuse' }));
    const refused = await curlGet(g, '/size/10');
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.body)).toMatchObject({ error: 'flow log unavailable', reason: 'flow-log-unavailable' });
    const socks = await SocksClient.createConnection({
      proxy: { host: g.socksHost, port: g.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: echo.port },
      timeout: 5000,
    }).then(
      () => 'connected',
      (e: unknown) => String(e),
    );
    // SOCKS5 reply 0x01, general SOCKS server failure (the socks client names it "Failure").
    expect(socks).toMatch(/rejected connection - Failure$/);
    expect((await admin(g, '/readyz')).status).toBe(503);
    const metrics = (await admin(g, '/metrics')).text;
    expect(metrics).toMatch(/^gw_flow_log_failing 1$/m);
    expect(metrics).toMatch(/^gw_flow_records_held [1-9]/m);

    // The tunnel admitted before goes on.
    tunnel.write('b'.repeat(50));
    await readUntil(tunnel, 'b'.repeat(50));

    // The path becomes writable: within a retry or two the gateway is ready and admits again.
    log.repair();
    await until('recovery', async () => (await admin(g, '/readyz')).status === 200);
    expect((await admin(g, '/metrics')).text).toMatch(/^gw_flow_log_failing 0$/m);
    expect(await curlGet(g, '/size/3')).toEqual({ status: 200, body: 'abc' });
    tunnel.end();
    await once(tunnel, 'close');
    await g.waitForClosed((r) => r.protocol === 'connect');
    await g.stop();

    const got = records(log.path);
    expect(new Set(got.map((r) => r.id)).size).toBe(got.length);
    expect(got.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn])).toEqual([
      ['http', 'closed', 0, 10],
      ['http', 'flow-log-unavailable', 0, 0],
      ['socks5', 'flow-log-unavailable', 0, 0],
      ['http', 'closed', 0, 3],
      ['connect', 'closed', 150, 150],
    ]);
  }, 30_000);

  it('onError admit: flows are still admitted while the log fails, and their records are written once it recovers', async () => {
    const log = failingLogPath('admit.jsonl');
    const g = await fx.gateway({ flowLog: { path: log.path, onError: 'admit' } });
    expect((await curlGet(g, '/size/4')).status).toBe(200);
    await until('the failure', () => flowLogFailing(g, 1));
    expect(await curlGet(g, '/size/5')).toEqual({ status: 200, body: 'abcde' });
    expect((await admin(g, '/readyz')).status).toBe(200);
    log.repair();
    await until('recovery', () => flowLogFailing(g, 0));
    await g.stop();
    expect(records(log.path).map((r) => [r.closeReason, r.bytesIn])).toEqual([
      ['closed', 4],
      ['closed', 5],
    ]);
  }, 30_000);

  // Regression: every refused attempt's record went into the backlog, so a flood of them filled it
  // and the records of flows that carried traffic were dropped (a tunnel's lost behind 487,000).
  it(`onError refuse: past ${REFUSAL_RECORDS_HELD} held records refusals are counted, not kept; a live tunnel's record is written`, async () => {
    const log = failingLogPath('flood.jsonl');
    const g = await fx.gateway({ flowLog: { path: log.path }, limits: { maxNewFlowsPerSecPerIdentity: 1_000_000 } });
    const tunnel = await rawConnect(g.httpPort);
    tunnel.on('error', () => {});
    tunnel.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${echo.port}\r\n\r\n`);
    expect((await readUntil(tunnel, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(await curlGet(g, '/size/10')).toEqual({ status: 200, body: 'abcdefghij' });
    await until('the failure', () => flowLogFailing(g, 1));
    // Pipelined refusals from a few connections, more than the backlog keeps for refusals.
    const perConnection = 1100;
    const total = perConnection * 10;
    const get = `GET http://127.0.0.1:${fx.originPort()}/size/1 HTTP/1.1\r\nHost: 127.0.0.1:${fx.originPort()}\r\n\r\n`;
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const s = await rawConnect(g.httpPort);
        s.on('error', () => {});
        let seen = 0;
        const done = new Promise<void>((resolve) => {
          s.on('data', (c: Buffer) => {
            seen += c.toString('latin1').split('HTTP/1.1 503 ').length - 1;
            if (seen >= perConnection) resolve();
          });
          s.on('close', () => resolve());
        });
        s.write(get.repeat(perConnection));
        await done;
        s.destroy();
      }),
    );
    const metrics = (await admin(g, '/metrics')).text;
    const skipped = Number(/^gw_flow_refusals_unrecorded_total (\d+)$/m.exec(metrics)?.[1] ?? 'NaN');
    expect(skipped).toBeGreaterThan(0);
    tunnel.write('z'.repeat(30));
    await readUntil(tunnel, 'z'.repeat(30));
    tunnel.end();
    await once(tunnel, 'close');
    log.repair();
    await until('recovery', () => flowLogFailing(g, 0));
    await g.waitForClosed((r) => r.protocol === 'connect');
    await g.stop();
    const got = records(log.path);
    const refusals = got.filter((r) => r.closeReason === 'flow-log-unavailable').length;
    // The cap reads the backlog, which takes the records of the batch being formed (10 ms) a little later.
    expect(refusals).toBeLessThanOrEqual(REFUSAL_RECORDS_HELD + 1000);
    expect(refusals + skipped).toBe(total);
    expect(got.filter((r) => r.protocol === 'connect').map((r) => [r.closeReason, r.bytesOut, r.bytesIn])).toEqual([['closed', 30, 30]]);
  }, 60_000);
});
