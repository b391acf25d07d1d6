/**
 * `egressgate evaluate` without `--source` and `POST /v1/policy/evaluate` without `source` judge the
 * same client: one with no address (0.0.0.0), which no `identity.hosts` entry, `exceptions` host or
 * `expectedScanSources` host names. Before, the CLI judged it as 127.0.0.1 and the API as 0.0.0.0:
 * with an exception for host 127.0.0.1, the CLI said `allow` where the API said `block` by the
 * scanner-tool detector, for the same policy and query.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import { type DeepPartial, type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { CLI, ROOT } from '../helpers/serve-process.ts';

interface Evaluated {
  verdict: string;
  reason: string;
  detector: string | null;
}

const DEST = 'ok.example.test:443';
const POLICY: DeepPartial<Config> = {
  mode: 'enforce',
  roles: { any: { allow: [{ host: 'ok.example.test', ports: [443] }] } },
  defaultRoles: ['any'],
  identity: { localAttribution: false },
  exceptions: [{ host: ['127.0.0.1'], detectors: ['an0081.scanner-tool'] }],
};

let gw: TestGateway;
let dir: string;
let policyFile: string;
beforeAll(async () => {
  gw = await startTestGateway(POLICY);
  dir = mkdtempSync(join(tmpdir(), 'egw-evaluate-source-'));
  policyFile = join(dir, 'policy.json');
  writeFileSync(policyFile, JSON.stringify(POLICY));
});
afterAll(async () => {
  await gw?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function evaluateApi(body: Record<string, string>): Promise<Evaluated> {
  const res = await fetch(`${gw.adminUrl}/v1/policy/evaluate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as Evaluated;
}

function evaluateCli(...args: string[]): Promise<Evaluated> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [CLI, 'evaluate', '--config', policyFile, '--dest', DEST, ...args],
      { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } },
      (err, stdout, stderr) => (err ? reject(new Error(`evaluate failed: ${err.message} ${stderr}`)) : resolve(JSON.parse(stdout) as Evaluated)),
    );
  });
}

describe('evaluate without a source: the CLI and the API judge the same client', () => {
  it('no source: an exception for host 127.0.0.1 applies to neither; with source 127.0.0.1 to both', async () => {
    const [cli, api, cliLocal, apiLocal] = await Promise.all([
      evaluateCli('--process', 'nmap'),
      evaluateApi({ dest: DEST, process: 'nmap' }),
      evaluateCli('--process', 'nmap', '--source', '127.0.0.1'),
      evaluateApi({ dest: DEST, process: 'nmap', source: '127.0.0.1' }),
    ]);
    expect(api).toMatchObject({ verdict: 'block', detector: 'an0081.scanner-tool' });
    expect(cli).toMatchObject({ verdict: 'block', detector: 'an0081.scanner-tool' });
    expect(apiLocal).toMatchObject({ verdict: 'allow', reason: 'allowed' });
    expect(cliLocal).toMatchObject({ verdict: 'allow', reason: 'allowed' });
  }, 60_000);
});
