/**
 * A JSON body that writes a key twice is refused on every admin route, not only the policy writes:
 * 400 `bad-request` naming the key's path, the write not made. Before, JSON.parse kept the last
 * value: `PUT /v1/mode` with `{"mode":"enforce","mode":"monitor"}` answered 200 and switched to
 * monitor (a front reading the first value saw enforce), an evaluate answered for the second `dest`,
 * an agent report was taken with its last `pid`. A real `serve` with a token.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { killIfRunning, spawnServe } from '../helpers/serve-process.ts';

const TOKEN = 'json-repeated-keys-admin-0123456789';
let dir = '';
let child: ChildProcess | null = null;
afterAll(async () => {
  await killIfRunning(child);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('admin routes with a JSON body that writes a key twice', () => {
  it('PUT /v1/mode, evaluate and agent reports: 400 naming the key; the mode stays enforce', async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-json-repeated-keys-'));
    const configPath = join(dir, 'policy.yaml');
    await writeFile(configPath, 'mode: enforce\nallowRanges: ["127.0.0.0/8"]\nflowLog: { path: null }\n');
    const served = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN, EGRESSGATE_CONFIG: undefined } });
    child = served.child;
    const send = (method: string, path: string, body?: string): Promise<Response> =>
      fetch(`http://${served.admin}${path}`, {
        method,
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body }),
      });
    const refused = async (res: Response): Promise<{ status: number; error: string; paths: string[] }> => {
      const body = (await res.json()) as { error: string; details?: Array<{ path: string; message: string }> };
      return { status: res.status, error: body.error, paths: (body.details ?? []).map((d) => d.path) };
    };

    expect(await refused(await send('PUT', '/v1/mode', '{"mode":"enforce","mode":"monitor"}'))).toEqual({ status: 400, error: 'bad-request', paths: ['body.mode'] });
    expect(((await (await send('GET', '/v1/mode')).json()) as { mode: string; override: string | null })).toMatchObject({ mode: 'enforce', override: null });
    // A key spelled with an escape is the same key.
    expect(await refused(await send('PUT', '/v1/mode', '{"mode":"enforce","m\\u006fde":"monitor"}'))).toMatchObject({ status: 400, paths: ['body.mode'] });

    expect(await refused(await send('POST', '/v1/policy/evaluate', '{"dest":"127.0.0.1:80","dest":"127.0.0.1:81"}'))).toEqual({ status: 400, error: 'bad-request', paths: ['body.dest'] });
    const report = '{"host":"ws-1","reports":[{"proto":"tcp","localIp":"127.0.0.1","localPort":40000,"remoteIp":"127.0.0.1","remotePort":80,"pid":1,"pid":2,"name":"curl"}]}';
    expect(await refused(await send('POST', '/v1/agents/reports', report))).toEqual({ status: 400, error: 'bad-request', paths: ['body.reports[0].pid'] });

    // The policy writes keep their own answer (invalid-policy at the policy's path).
    expect(await refused(await send('PUT', '/v1/policy', '{"mode":"enforce","mode":"monitor"}'))).toEqual({ status: 400, error: 'invalid-policy', paths: ['mode'] });
    // Each key once is taken as before.
    expect((await send('PUT', '/v1/mode', '{"mode":"monitor"}')).status).toBe(200);
    expect((await send('POST', '/v1/policy/evaluate', '{"dest":"127.0.0.1:80"}')).status).toBe(200);
  }, 60_000);
});
