/**
 * A JSON policy that writes a key twice is refused, naming the key's path, as the same document in
 * YAML always was; the running policy keeps serving. Before, JSON kept the last value and dropped the
 * first without a word: `PUT /v1/policy` (application/json) with `roles.dev` written twice, the second
 * `{allow: [{host: "*"}]}`, answered 200 (version 2) and a CONNECT to a name the first definition did
 * not allow went from 403 to 200; `POST /v1/policy/validate` said valid, and `serve --config
 * policy.json` (and `check`) started on the second definition. A SIGHUP reload read the .json file
 * as YAML: refused, but at `(root)` (`invalid YAML at line 6, column 5`), not at its path.
 * Real admin listener, real HTTP proxy listener, a real `serve` process for the file.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpConnect } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { killIfRunning, spawnServe } from '../helpers/serve-process.ts';

const TOKEN = 'json-duplicate-keys-admin-0123456789';
let origin: Server;
let originPort = 0;

beforeAll(async () => {
  origin = createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
});
afterAll(() => {
  origin?.close();
});

/**
 * The policy as JSON text with `roles.dev` written twice: the first allows `allowed.test` only, the
 * second every name. A JSON reader that keeps the last value admits `other.test`.
 */
function policyText(extra: string): string {
  return `{
  "mode": "enforce",
  "allowRanges": ["127.0.0.0/8"],
  "roles": {
    "dev": { "allow": [ { "host": "allowed.test" } ] },
    "dev": { "allow": [ { "host": "*" } ] }
  },
  "defaultRoles": ["dev"],
  "resolver": { "hosts": { "allowed.test": "127.0.0.1", "other.test": "127.0.0.1" } }${extra}
}`;
}

/** The status a CONNECT to `host` on the origin's port gets (the tunnel, if any, closed). */
async function connectStatus(proxy: { host: string; port: number }, host: string): Promise<number> {
  const answer = await httpConnect(proxy, `${host}:${originPort}`);
  answer.socket.destroy();
  return answer.status;
}

describe('a JSON policy with a key written twice', () => {
  let gw: TestGateway;
  afterAll(async () => {
    await gw?.stop();
  });

  it('PUT /v1/policy and validate: 400 naming roles.dev; the running policy still refuses other.test', async () => {
    gw = await startTestGateway({
      mode: 'enforce',
      roles: { dev: { allow: [{ host: 'allowed.test' }] } },
      defaultRoles: ['dev'],
      resolver: { hosts: { 'allowed.test': '127.0.0.1', 'other.test': '127.0.0.1' } },
    });
    const proxy = { host: gw.httpHost, port: gw.httpPort };
    const send = (method: string, path: string, body?: string): Promise<Response> =>
      fetch(`${gw.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body }) });
    const version = async (): Promise<number> => ((await (await send('GET', '/v1/policy')).json()) as { version: number }).version;
    expect(await connectStatus(proxy, 'allowed.test')).toBe(200);
    expect(await connectStatus(proxy, 'other.test')).toBe(403);
    // The test token is the gateway's own (as EGRESSGATE_ADMIN_TOKEN): the policy needs none of its own.
    const admin = ',\n  "flowLog": { "path": null }';

    const validate = (await (await send('POST', '/v1/policy/validate', policyText(admin))).json()) as { valid: boolean; errors: Array<{ path: string }> };
    expect(validate.valid).toBe(false);
    expect(validate.errors.map((e) => e.path)).toEqual(['roles.dev']);

    const put = await send('PUT', '/v1/policy', policyText(admin));
    expect(put.status).toBe(400);
    const body = (await put.json()) as { error: string; details: Array<{ path: string; message: string }> };
    expect(body.error).toBe('invalid-policy');
    expect(body.details).toEqual([{ path: 'roles.dev', message: expect.stringMatching(/^duplicate key "dev"/) }]);
    // A key spelled with an escape is the same key; a repeated `mode` is named at the top level.
    const escaped = policyText(`${admin},\n  "mode": "monitor"`).replace('"dev": { "allow": [ { "host": "*" } ] }', '"d\\u0065v": { "allow": [ { "host": "*" } ] }');
    const put2 = await send('PUT', '/v1/policy', escaped);
    expect(put2.status).toBe(400);
    expect(((await put2.json()) as { details: Array<{ path: string }> }).details.map((d) => d.path)).toEqual(['roles.dev', 'mode']);

    expect(await version()).toBe(1);
    expect(await connectStatus(proxy, 'other.test')).toBe(403);
    // The same policy written once per key is taken: the API itself still takes JSON bodies.
    const single = policyText(admin).replace(',\n    "dev": { "allow": [ { "host": "*" } ] }', '');
    expect((await send('PUT', '/v1/policy', single)).status).toBe(200);
    expect(await version()).toBe(2);
  });
});

describe('a JSON config file with a key written twice', () => {
  let dir = '';
  let child: ChildProcess | null = null;
  afterAll(async () => {
    await killIfRunning(child);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('serve --config policy.json: refused at start and on SIGHUP, naming roles.dev; other.test still 403', async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-json-duplicate-keys-'));
    const configPath = join(dir, 'policy.json');
    const env = { EGRESSGATE_ADMIN_TOKEN: TOKEN, EGRESSGATE_CONFIG: undefined };
    await writeFile(configPath, policyText(',\n  "flowLog": { "path": null }'));
    const started = spawnServe(configPath, { env }).then(
      (served) => {
        served.child.kill('SIGKILL');
        return 'started';
      },
      (err: Error) => err.message,
    );
    expect(await started).toMatch(/roles\.dev: duplicate key "dev"/);

    const single = policyText(',\n  "flowLog": { "path": null }').replace(',\n    "dev": { "allow": [ { "host": "*" } ] }', '');
    await writeFile(configPath, single);
    const s = await spawnServe(configPath, { env });
    child = s.child;
    expect(await connectStatus(s.http, 'allowed.test')).toBe(200);
    expect(await connectStatus(s.http, 'other.test')).toBe(403);

    await writeFile(configPath, policyText(',\n  "flowLog": { "path": null }'));
    const logged = new Promise<Record<string, unknown>>((resolve, reject) => {
      let buf = '';
      const onData = (b: Buffer): void => {
        buf += b.toString('utf8');
        for (const line of buf.split('\n')) {
          if (!line.startsWith('{')) continue;
          const rec = JSON.parse(line) as Record<string, unknown>;
          if (typeof rec['msg'] === 'string' && rec['msg'].startsWith('policy reload')) {
            s.child.stderr?.off('data', onData);
            resolve(rec);
            return;
          }
        }
      };
      s.child.stderr?.on('data', onData);
      s.child.once('exit', reject);
    });
    s.child.kill('SIGHUP');
    const rec = await logged;
    expect(rec['msg']).toBe('policy reload failed; the running policy is unchanged');
    expect((rec['errors'] as Array<{ path: string }>).map((e) => e.path)).toEqual(['roles.dev']);
    expect(await connectStatus(s.http, 'other.test')).toBe(403);

    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
  }, 60_000);
});
