/**
 * A query parameter no route names is 400 naming it (`querystring.<name>`), on every route with query
 * filters, after the token check as any 400. Before, it was ignored: `GET /v1/flows?stat=active` (a
 * typo of state) answered 200 with every flow, closed ones included, as if no filter had been asked
 * for; `?detectr=` on the alerts and their stream, `?actr=` on the audit likewise. A real `serve`
 * with a token, a real CONNECT to make a closed flow.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { httpConnect } from '../helpers/detection-live.ts';
import { killIfRunning, spawnServe } from '../helpers/serve-process.ts';

const TOKEN = 'query-unknown-params-admin-0123456789';
let dir = '';
let child: ChildProcess | null = null;
afterAll(async () => {
  await killIfRunning(child);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('an unknown query parameter on the admin API', () => {
  it('is 400 naming it on flows, alerts, the alert stream and the audit; known ones still filter', async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-query-unknown-'));
    const configPath = join(dir, 'policy.yaml');
    await writeFile(configPath, 'mode: enforce\nflowLog: { path: null }\n');
    const served = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN, EGRESSGATE_CONFIG: undefined } });
    child = served.child;
    const get = (path: string, token: string | null = TOKEN): Promise<Response> =>
      fetch(`http://${served.admin}${path}`, { headers: token === null ? {} : { authorization: `Bearer ${token}` } });
    // A closed flow: a CONNECT the default policy refuses (loopback, and nothing allowed).
    const refused = await httpConnect(served.http, '127.0.0.1:9');
    refused.socket.destroy();
    expect(refused.status).toBe(403);
    expect(((await (await get('/v1/flows?state=closed')).json()) as { count: number }).count).toBe(1);
    expect(((await (await get('/v1/flows?state=active')).json()) as { count: number }).count).toBe(0);

    for (const [path, name] of [
      ['/v1/flows?stat=active', 'stat'],
      ['/v1/flows?state=active&limit=5&offse=1', 'offse'],
      ['/v1/alerts?detectr=x', 'detectr'],
      ['/v1/alerts/stream?detectr=x', 'detectr'],
      ['/v1/audit?actr=x', 'actr'],
    ] as const) {
      const res = await get(path);
      const body = (await res.json()) as { error: string; details: Array<{ path: string }> };
      expect({ path, status: res.status, error: body.error, paths: body.details.map((d) => d.path) }).toEqual({ path, status: 400, error: 'bad-request', paths: [`querystring.${name}`] });
    }
    // Without a token it is 401 as every other request: the schema is not read before the token.
    expect((await get('/v1/flows?stat=active', null)).status).toBe(401);
    // The documented parameters are taken as before.
    expect((await get('/v1/flows?state=closed&user=u&host=h&process=p&destination=d&verdict=block&limit=5&offset=0')).status).toBe(200);
    expect((await get('/v1/alerts?since=0&detector=x&limit=5')).status).toBe(200);
    expect((await get('/v1/audit?limit=5&actor=env&since=2026-01-01T00:00:00Z')).status).toBe(200);
  }, 60_000);
});
