/**
 * A sweep of addresses policy refuses must raise the same an0081.scan in monitor mode as in enforce
 * mode. `deny-range` is refused in every mode (docs/spec-notes.md), so the address policy refuses
 * that monitor mode relays is an IP literal no allow entry admits (`not-allowlisted`): enforce mode
 * refuses each CONNECT before any dial (403), each a failed attempt at that address (`denied`).
 * Monitor mode relays them as would-block, and there the destinations answer: the flows connect.
 * They are still what enforce mode refused, and count as enforce mode counts them. 18 loopback
 * origins listening on 18 ports (past failedPortsOnOneHost, 15; loopback in `allowRanges`, only
 * `allowed.test` allowlisted), through the real HTTP listener with raw CONNECTs to 127.0.0.1:port;
 * each tunnel is closed by the client once answered. `egressgate replay` over monitor mode's flow
 * log must agree.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import type { Mode } from '../../policy/types.ts';
import { httpConnect, type TcpOrigin, tcpOrigin, waitForSweeps } from '../helpers/detection-live.ts';
import { type DeepPartial, startTestGateway, type TestGateway, testConfig } from '../helpers/gateway.ts';
import { CLI } from '../helpers/serve-process.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ATTEMPTS = 18;
const dir = mkdtempSync(join(tmpdir(), 'egw-monitor-ip-literal-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let gw: TestGateway | null = null;
const origins: TcpOrigin[] = [];
afterEach(async () => {
  await gw?.stop();
  gw = null;
  for (const o of origins.splice(0)) await o.close();
});

const overrides = (mode: Mode): DeepPartial<Config> => ({ mode, roles: { any: { allow: [{ host: 'allowed.test' }] } }, detection: { sampleIntervalMs: 50 } });

/** ATTEMPTS CONNECTs to listening loopback ports (an IP literal no allow entry admits), then a few sweeps: the answers and the an0081.scan alerts. */
async function sweepOfRefusedAddress(mode: Mode, log: string): Promise<{ answers: string[]; scan: string[] }> {
  gw = await startTestGateway({ ...overrides(mode), flowLog: { path: log } });
  for (let i = 0; i < ATTEMPTS; i++) origins.push(await tcpOrigin('127.0.0.1'));
  const answers: string[] = [];
  for (const o of origins) {
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${o.port}`);
    answers.push(`${a.status} ${(/"reason":"([^"]+)"/.exec(a.body) ?? [])[1] ?? ''}`);
    a.socket.destroy();
    await gw.waitForClosed((r) => r.destination.port === o.port);
  }
  await waitForSweeps(gw.flows, 5);
  return { answers, scan: gw.alerts.list({}).filter((a) => a.detector === 'an0081.scan').map((a) => a.action) };
}

/** `egressgate replay --config config log`: its an0081.scan alert lines. */
function replayScanAlerts(config: string, log: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, 'replay', '--config', config, log], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`replay failed: ${err.message}\n${stderr}`));
      else resolve(stdout.split('\n').filter((l) => l.includes(' an0081.scan ')));
    });
  });
}

describe('a sweep of addresses policy refuses is the same an0081.scan in monitor and enforce mode', () => {
  it(`enforce: ${ATTEMPTS} CONNECTs to an IP literal's ports, 403 not-allowlisted each, an0081.scan block`, async () => {
    const { answers, scan } = await sweepOfRefusedAddress('enforce', join(dir, 'enforce.jsonl'));
    expect(answers.slice(0, 15)).toEqual(answers.slice(0, 15).map(() => '403 not-allowlisted'));
    expect(scan).toEqual(['block']);
  });

  it(`monitor: the same ${ATTEMPTS} CONNECTs connect (200, would-block not-allowlisted) and raise an0081.scan would-block, live and replayed`, async () => {
    const log = join(dir, 'monitor.jsonl');
    const { answers, scan } = await sweepOfRefusedAddress('monitor', log);
    expect(answers).toEqual(answers.map(() => '200 '));
    expect(new Set(gw!.closed.map((r) => `${r.verdict} ${r.reason}`))).toEqual(new Set(['would-block not-allowlisted']));
    expect(scan).toEqual(['would-block']);
    await gw!.stop();
    gw = null;
    const config = join(dir, 'monitor.json');
    writeFileSync(config, JSON.stringify({ ...testConfig(overrides('monitor')), listen: undefined, flowLog: undefined }));
    const replayed = await replayScanAlerts(config, log);
    expect(replayed.length).toBe(1);
    expect(replayed[0]).toContain(' would-block ');
  });
});
