/**
 * Hot reload under a live streaming tunnel (issue 3): a reload that passes swaps the policy for new
 * flows at once and never drops an established one; a reload that fails changes nothing; rollback
 * restores an old version. Real gateway HTTP listener, real CONNECT tunnel, real echo origin.
 * Also a real `egressgate serve` process: SIGHUP and PUT /v1/policy with bad detector settings.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killIfRunning, spawnServe } from '../helpers/serve-process.ts';
import { type LocalGateway, jsonBody, rawConnect, rawExchange, readUntil, startLocalGateway } from './http-harness.ts';

let echo: Server;
let echoPort = 0;
let gw: LocalGateway;

// Version 1: the catch-all role of the harness, enforce mode. Version 2: loopback is no longer
// allowlisted (only an unrelated host), so new CONNECTs to the echo origin are refused.
const V2 = `mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { host: "only.example.com", ports: [443] } ] } }
defaultRoles: [any]
flowLog: { path: null }
`;

beforeAll(async () => {
  echo = createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as { port: number }).port;
  gw = await startLocalGateway({ mode: 'enforce' });
});

afterAll(async () => {
  await gw?.stop();
  await new Promise<void>((r) => echo.close(() => r()));
});

async function openTunnel(): Promise<Socket> {
  const s = await rawConnect(gw.httpPort);
  s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
  const head = await readUntil(s, '\r\n\r\n');
  expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
  return s;
}

/** Writes `marker` through the tunnel and waits for the echo. */
async function roundTrip(s: Socket, marker: string): Promise<void> {
  const got = readUntil(s, marker);
  s.write(marker);
  await got;
}

/** A new CONNECT that the policy refuses: the gateway answers and closes. */
async function refusedConnect(): Promise<{ status: string; body: Record<string, unknown> }> {
  const { response } = await rawExchange(gw.httpPort, `CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`, 5000);
  return { status: response.slice(9, 12), body: jsonBody(response) };
}

describe('policy reload under a live tunnel', () => {
  it('keeps the established tunnel, refuses new flows under the new policy, rolls back', async () => {
    const tunnel = await openTunnel();
    tunnel.on('error', () => undefined);
    let sent = 0;
    for (let i = 0; i < 5; i++) {
      const m = `before-${i};`;
      await roundTrip(tunnel, m);
      sent += m.length;
    }

    // 1. A good reload: new version at once.
    expect(gw.policy.reload(V2, { author: 'test', source: 'api' })).toEqual({ ok: true, version: 2 });
    const refused = await refusedConnect();
    expect(refused.status).toBe('403');
    expect(refused.body).toMatchObject({ reason: 'not-allowlisted' });

    // 2. The established tunnel still streams both ways.
    for (let i = 0; i < 5; i++) {
      const m = `after-${i};`;
      await roundTrip(tunnel, m);
      sent += m.length;
    }

    // 3. A failed reload changes nothing.
    const bad = gw.policy.reload('roles: { any: { allow: [ { cidr: 300.0.0.0/8 } ] } }\n', { author: 'test' });
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.errors[0]?.path).toBe('roles.any.allow[0].cidr');
    expect(gw.policy.current().version).toBe(2);
    expect((await refusedConnect()).status).toBe('403');
    await roundTrip(tunnel, 'still-alive;');
    sent += 'still-alive;'.length;

    // 4. Rollback to version 1: new tunnels are allowed again, as version 3.
    expect(gw.policy.rollback(1, { author: 'test' })).toEqual({ ok: true, version: 3 });
    const reopened = await openTunnel();
    await roundTrip(reopened, 'v3;');
    reopened.destroy();

    // 5. The original tunnel was never dropped: it closes when we close it, with every byte counted.
    tunnel.end();
    const record = await gw.waitForClosed((r) => r.protocol === 'connect' && r.bytesOut === sent);
    expect(record.bytesIn).toBe(sent);
    expect(record.verdict).toBe('allow');
  });
});

// Regression: a detector threshold given as a string, or under a misspelt name, passed validation
// and the reloaded policy ran that detector on its default (a 50 MiB upload budget instead of 1 MiB).
describe('egressgate serve: a reload with bad detector settings keeps the running policy', () => {
  const TOKEN = 'policy-reload-token-0123456789';
  const policyWith = (bulkUpload: string): string => `mode: enforce
identity: { localAttribution: false }
flowLog: { path: null }
detection:
  detectors:
    an0080.bulk-upload: ${bulkUpload}
`;
  let dir = '';
  let child: ChildProcess | null = null;
  afterAll(async () => {
    await killIfRunning(child);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** The next reload outcome the gateway logs on stderr (JSON lines), waiting for its output. */
  function nextReload(c: ChildProcess): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      let buf = '';
      const onData = (b: Buffer): void => {
        buf += b.toString('utf8');
        for (const line of buf.split('\n')) {
          if (!line.startsWith('{')) continue;
          const rec = JSON.parse(line) as Record<string, unknown>;
          if (typeof rec['msg'] === 'string' && rec['msg'].startsWith('policy reload')) {
            c.stderr?.off('data', onData);
            c.off('exit', reject);
            resolve(rec);
            return;
          }
        }
      };
      c.stderr?.on('data', onData);
      c.once('exit', reject);
    });
  }

  it('SIGHUP and PUT /v1/policy: refused with the paths, version and budget unchanged', async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-policy-reload-'));
    const configPath = join(dir, 'policy.yaml');
    await writeFile(configPath, policyWith('{ action: kill, bytesOut: 1048576 }'));
    const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN, EGRESSGATE_CONFIG: undefined } });
    child = s.child;
    const auth = { authorization: `Bearer ${TOKEN}` };
    const running = async (): Promise<{ version: number; budget: unknown }> => {
      const body = (await (await fetch(`http://${s.admin}/v1/policy`, { headers: auth })).json()) as {
        version: number;
        config: { detection: { detectors: Record<string, { bytesOut?: unknown }> } };
      };
      return { version: body.version, budget: body.config.detection.detectors['an0080.bulk-upload']?.bytesOut };
    };
    expect(await running()).toEqual({ version: 1, budget: 1048576 });

    // 1. SIGHUP with the budget as a string and a misspelt threshold.
    await writeFile(configPath, policyWith('{ action: kill, bytesOut: "1048576", windowsec: 60 }'));
    const outcome = nextReload(s.child);
    s.child.kill('SIGHUP');
    const logged = await outcome;
    expect(logged['msg']).toBe('policy reload failed; the running policy is unchanged');
    expect((logged['errors'] as Array<{ path: string }>).map((e) => e.path)).toEqual([
      'detection.detectors["an0080.bulk-upload"].bytesOut',
      'detection.detectors["an0080.bulk-upload"].windowsec',
    ]);
    expect(await running()).toEqual({ version: 1, budget: 1048576 });

    // 2. The same through the admin API, as a JSON body.
    const put = await fetch(`http://${s.admin}/v1/policy`, {
      method: 'PUT',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'enforce', detection: { detectors: { 'an0080.bulk-upload': { action: 'kill', bytesOut: '1048576' } } } }),
    });
    expect(put.status).toBe(400);
    const body = (await put.json()) as { error: string; details: Array<{ path: string; message: string }> };
    expect(body.details).toEqual([{ path: 'detection.detectors["an0080.bulk-upload"].bytesOut', message: 'expected a number, got a string' }]);
    expect(await running()).toEqual({ version: 1, budget: 1048576 });

    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
  }, 60_000);
});
