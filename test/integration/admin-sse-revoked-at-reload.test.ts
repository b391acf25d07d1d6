/**
 * An idle alert stream whose token a policy change revokes (or narrows below the read scope) ends
 * when the change is applied, not at its next heartbeat (15 s) or alert: through a real `serve`
 * process, a SIGHUP reload of its config file and a PUT /v1/policy, with no alert raised. Before,
 * the token was asked again only before an alert or a heartbeat, so a revoked idle stream stayed
 * open (and counted in the stream limits) up to 15 s after the reload.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { type AlertStream, openAlertStream } from '../helpers/alert-stream.ts';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

const ENV_TOKEN = 'env-admin-token-sse-reload-0123456789';
const SOC = 'soc-read-token-sse-reload-0123';
const DASH = 'dash-read-token-sse-reload-0123';
/** The stream must end within this of the change being applied: far under the 15 s heartbeat, wide for a loaded machine. */
const ENDS_WITHIN_MS = 3000;
const dir = mkdtempSync(join(tmpdir(), 'egw-sse-reload-'));
const served: Served[] = [];
const streams: AlertStream[] = [];

afterEach(async () => {
  for (const s of streams.splice(0)) s.req.destroy();
  for (const s of served.splice(0)) await killIfRunning(s.child);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function tokens(entries: string): string {
  return `admin: { tokens: [ ${entries} ] }\n`;
}

/** An alert stream on `admin`, ended after the test. */
async function openStream(admin: string, token: string): Promise<AlertStream> {
  const stream = await openAlertStream(admin, token);
  streams.push(stream);
  return stream;
}

async function policyVersion(admin: string): Promise<number> {
  const res = await fetch(`http://${admin}/v1/policy`, { headers: { authorization: `Bearer ${ENV_TOKEN}` } });
  return ((await res.json()) as { version: number }).version;
}

describe('an idle alert stream whose token a policy change revokes', () => {
  it('ends when a SIGHUP reload or a PUT /v1/policy is applied; the others stay open', async () => {
    const path = join(dir, 'policy.yaml');
    const both = `{ name: soc, token: ${SOC}, scope: read }, { name: dash, token: ${DASH}, scope: read }`;
    writeFileSync(path, `${loopbackServeConfig('-')}${tokens(both)}`);
    const s = await spawnServe(path, { env: { EGRESSGATE_ADMIN_TOKEN: ENV_TOKEN } });
    served.push(s);
    const soc = await openStream(s.admin, SOC);
    const dash = await openStream(s.admin, DASH);
    const admin = await openStream(s.admin, ENV_TOKEN);

    // SIGHUP: the file no longer names soc.
    writeFileSync(path, `${loopbackServeConfig('-')}${tokens(`{ name: dash, token: ${DASH}, scope: read }`)}`);
    s.child.kill('SIGHUP');
    await until('the reload applied', async () => (await policyVersion(s.admin)) === 2, 10_000);
    await until('the revoked stream ending', () => soc.ended, ENDS_WITHIN_MS);
    expect(soc.text).not.toContain('heartbeat');
    expect([dash.ended, admin.ended]).toEqual([false, false]);

    // PUT /v1/policy: dash narrowed to the agent scope.
    const config = ((await (await fetch(`http://${s.admin}/v1/policy`, { headers: { authorization: `Bearer ${ENV_TOKEN}` } })).json()) as { config: Record<string, unknown> }).config;
    const res = await fetch(`http://${s.admin}/v1/policy`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${ENV_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ...config, admin: { ...(config['admin'] as object), tokens: [{ name: 'dash', token: DASH, scope: 'agent' }] } }),
    });
    expect(res.status).toBe(200);
    await until('the narrowed stream ending', () => dash.ended, ENDS_WITHIN_MS);
    expect(dash.text).not.toContain('heartbeat');
    expect(admin.ended).toBe(false);
    const metrics = await (await fetch(`http://${s.admin}/metrics`, { headers: { authorization: `Bearer ${ENV_TOKEN}` } })).text();
    expect(metrics).toMatch(/^gw_admin_streams_active 1$/m);
  }, 60_000);
});
