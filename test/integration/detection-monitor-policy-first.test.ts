/**
 * Monitor mode shows what enforce mode would do, in enforce mode's order: policy first, then
 * quarantine and the connect-time detectors, which enforce mode never reaches for a flow policy
 * refuses. A client's CONNECT to a proxyware provider's name (an0081.proxyware, by destination) that
 * no allow entry admits, then a CONNECT to an allowed name. Enforce mode: 403 not-allowlisted, no
 * an0081.proxyware alert, no quarantine, the allowed name 200 `allow`. Monitor mode must predict
 * exactly that: the first flow would-block not-allowlisted with no detector alert, the second
 * `allow` (not would-block `quarantine`, which enforce mode would never have opened). Real HTTP
 * listener, raw CONNECTs, names answered by `resolver.hosts` to a loopback origin; `egressgate
 * replay` over monitor mode's flow log must raise nothing either.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import type { Mode } from '../../policy/types.ts';
import { httpConnect, type TcpOrigin, tcpOrigin } from '../helpers/detection-live.ts';
import { type DeepPartial, startTestGateway, type TestGateway, testConfig } from '../helpers/gateway.ts';
import { CLI } from '../helpers/serve-process.ts';

/** A proxyware provider's name (policy/lists.ts). */
const PROVIDER = 'edge.honeygain.com';
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'egw-policy-first-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let gw: TestGateway | null = null;
let origin: TcpOrigin | null = null;
afterEach(async () => {
  await gw?.stop();
  gw = null;
  await origin?.close();
  origin = null;
});

const overrides = (mode: Mode): DeepPartial<Config> => ({
  mode,
  roles: { any: { allow: [{ host: 'allowed.test' }] } },
  resolver: { hosts: { [PROVIDER]: '127.0.0.1', 'allowed.test': '127.0.0.1' } },
});

/** CONNECT to the provider, then to the allowed name: each answer, each record's verdict and reason, and every alert. */
async function providerThenAllowed(mode: Mode, log?: string): Promise<{ answers: number[]; records: string[]; alerts: string[] }> {
  origin = await tcpOrigin('127.0.0.1');
  gw = await startTestGateway({ ...overrides(mode), ...(log ? { flowLog: { path: log } } : {}) });
  const answers: number[] = [];
  const records: string[] = [];
  for (const host of [PROVIDER, 'allowed.test']) {
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `${host}:${origin.port}`);
    answers.push(a.status);
    a.socket.destroy();
    const r = await gw.waitForClosed((x) => x.destination.host === host);
    records.push(`${r.verdict} ${r.reason}`);
  }
  return { answers, records, alerts: gw.alerts.list({}).map((a) => `${a.detector} ${a.action}`) };
}

/** `egressgate replay --config config log`: its alert lines. */
function replayAlerts(config: string, log: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, 'replay', '--config', config, log], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`replay failed: ${err.message}\n${stderr}`));
      else resolve(stdout.split('\n').filter((l) => l.trim() !== ''));
    });
  });
}

describe('monitor mode judges in enforce mode\'s order: policy first', () => {
  it('enforce: the provider refused by the allowlist (403, no proxyware alert), the allowed name let through', async () => {
    const got = await providerThenAllowed('enforce');
    expect(got.answers).toEqual([403, 200]);
    expect(got.records).toEqual(['block not-allowlisted', 'allow allowed']);
    expect(got.alerts).toEqual([]);
  });

  it('monitor: the provider would-block not-allowlisted with no proxyware alert; the allowed name allow, not would-block quarantine; replayed alike', async () => {
    const log = join(dir, 'monitor.jsonl');
    const got = await providerThenAllowed('monitor', log);
    expect(got.answers).toEqual([200, 200]);
    expect(got.records).toEqual(['would-block not-allowlisted', 'allow allowed']);
    expect(got.alerts).toEqual([]);
    await gw?.stop();
    gw = null;
    const config = join(dir, 'monitor.json');
    writeFileSync(config, JSON.stringify({ ...testConfig(overrides('monitor')), listen: undefined, flowLog: undefined }));
    expect(await replayAlerts(config, log)).toEqual([]);
  });

  it('control: the provider allowlisted is an0081.proxyware in both modes, and quarantines (would-quarantine) the client', async () => {
    for (const mode of ['enforce', 'monitor'] as const) {
      origin = await tcpOrigin('127.0.0.1');
      gw = await startTestGateway({ ...overrides(mode), roles: { any: { allow: [{ host: 'allowed.test' }, { host: PROVIDER }] } } });
      const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `${PROVIDER}:${origin.port}`);
      a.socket.destroy();
      const b = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `allowed.test:${origin.port}`);
      b.socket.destroy();
      const second = await gw.waitForClosed((x) => x.destination.host === 'allowed.test');
      expect([a.status, b.status]).toEqual(mode === 'enforce' ? [403, 403] : [200, 200]);
      expect(`${second.verdict} ${second.reason}`).toBe(mode === 'enforce' ? 'block quarantine' : 'would-block quarantine');
      expect(gw.alerts.list({}).map((x) => `${x.detector} ${x.action}`)).toEqual([`an0081.proxyware ${mode === 'enforce' ? 'block' : 'would-block'}`]);
      await gw.stop();
      gw = null;
      await origin.close();
      origin = null;
    }
  });
});
