/**
 * `listen.https` without `tls`: the HTTPS listener needs its certificate and key, so the config is
 * refused at `listen.https` by `serve` (exit 1, nothing listens), by `check` and by a push.
 *
 * Regression: such a config was accepted everywhere. Through a real `serve` with
 * `listen: { https: "127.0.0.1:0" }` and no `tls`, the listening line named http, socks and admin
 * only, nothing was logged, and clients sent to the HTTPS address met a closed port; `check` said
 * `ok`.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CLI, killIfRunning, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';

const TOKEN = 'https-needs-tls-token-0123456789';
const BODY = `mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: "-" }
`;
const MESSAGE = 'listen.https: needs tls (cert and key)';

describe('listen.https without tls', () => {
  let dir: string;
  let served: Served | null = null;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-https-needs-tls-'));
  });

  afterEach(async () => {
    await killIfRunning(served?.child ?? null);
    served = null;
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** `cli.ts <args>` run to its exit: exit code (-1: killed at the timeout), stdout and stderr. */
  function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 20_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
      );
    });
  }

  it('serve refuses it at listen.https (exit 1, nothing listens); check refuses it too', async () => {
    const config = join(dir, 'no-tls.yaml');
    await writeFile(config, `listen: { https: "127.0.0.1:0" }\n${BODY}`);
    const served = await cli(['serve', '--config', config, '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
    expect({ code: served.code, listening: served.stdout.includes('"listening"') }, served.stderr).toEqual({ code: 1, listening: false });
    expect(served.stderr).toContain(MESSAGE);
    const checked = await cli(['check', '--config', config]);
    expect(checked.code, checked.stdout + checked.stderr).toBe(1);
    expect(checked.stderr).toContain(MESSAGE);
  }, 45_000);

  it('a push that adds listen.https without tls is 400 at listen.https; the running policy stays', async () => {
    const config = join(dir, 'plain.yaml');
    await writeFile(config, BODY);
    served = await spawnServe(config, { env: { EGRESSGATE_CONFIG: undefined, EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    const put = await fetch(`http://${served.admin}/v1/policy`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'text/yaml' },
      body: `listen: { https: "127.0.0.1:0" }\n${BODY}`,
    });
    const refusal = (await put.json()) as { error: string; details: Array<{ path: string; message: string }> };
    expect({ status: put.status, error: refusal.error, paths: refusal.details.map((d) => d.path) }).toEqual({ status: 400, error: 'invalid-policy', paths: ['listen.https'] });
    const running = await fetch(`http://${served.admin}/v1/policy`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(((await running.json()) as { version: number }).version).toBe(1);
  }, 45_000);
});
