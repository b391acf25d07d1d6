/**
 * `serve` without an admin token generates one for the run and prints it on stderr: it is accepted
 * with admin scope, and the audit names it `generated` (not `env`, which is EGRESSGATE_ADMIN_TOKEN).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

let dir: string;
let served: Served | null = null;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'egw-generated-token-'));
  writeFileSync(join(dir, 'policy.yaml'), loopbackServeConfig(join(dir, 'flows.jsonl')));
});

afterEach(async () => {
  await killIfRunning(served?.child ?? null);
  served = null;
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

async function auditActors(admin: string, token: string): Promise<Array<{ actor: string | null; scope: string | null; status: number }>> {
  const put = await fetch(`http://${admin}/v1/mode`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"mode":"monitor"}' });
  await put.arrayBuffer();
  expect(put.status).toBe(200);
  const res = await fetch(`http://${admin}/v1/audit`, { headers: { authorization: `Bearer ${token}` } });
  expect(res.status).toBe(200);
  return ((await res.json()) as { entries: Array<{ actor: string | null; scope: string | null; status: number }> }).entries;
}

describe('serve: the admin token it generates', () => {
  // EGRESSGATE_ADMIN_TOKEN set but empty: a token was generated and printed, but the empty one
  // was handed over in its place, and the printed one got 401 'invalid token'.
  for (const envToken of [undefined, '']) {
    it(`is accepted and audited as generated (EGRESSGATE_ADMIN_TOKEN ${envToken === undefined ? 'unset' : 'empty'})`, async () => {
      served = await spawnServe(join(dir, 'policy.yaml'), { env: { EGRESSGATE_ADMIN_TOKEN: envToken } });
      const s = served;
      await until('the generated token on stderr', () => /generated one for this run: (\S+)/.test(s.stderr()));
      const token = /generated one for this run: (\S+)/.exec(s.stderr())?.[1] as string;
      const entries = await auditActors(s.admin, token);
      expect(entries.map((e) => [e.actor, e.scope, e.status])).toEqual([['generated', 'admin', 200]]);
    });
  }

  it('EGRESSGATE_ADMIN_TOKEN is still audited as env', async () => {
    served = await spawnServe(join(dir, 'policy.yaml'), { env: { EGRESSGATE_ADMIN_TOKEN: 'env-admin-token-0123456789' } });
    expect(served.stderr()).not.toContain('generated one for this run');
    const entries = await auditActors(served.admin, 'env-admin-token-0123456789');
    expect(entries.map((e) => [e.actor, e.scope, e.status])).toEqual([['env', 'admin', 200]]);
  });
});
