/**
 * `egressgate evaluate` and `POST /v1/policy/evaluate` judge a name under `localhost` on the address
 * the gateway's resolver answers it without DNS (127.0.0.1: upstream/resolve.ts isUnderLocalhost),
 * as a real CONNECT to it through `serve` is judged: `deny-range` (loopback) by default, allowed
 * when `allowRanges` admits it, and never the gateway's own listeners.
 *
 * Regression: both dry runs said `destIp: null` ("address unknown … deny ranges not checked") and
 * answered `allow` for `app.localhost:PORT` under a role allowing `*.localhost`, while the CONNECT
 * got 403 `deny-range`.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'egw-evaluate-localhost-'));
const TOKEN = 'soc-read-token-0123456789abcdef';
const policy = (allowRanges: string): string => `
mode: enforce
${allowRanges}
roles: { any: { allow: [ { host: "*.localhost" } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
admin: { tokens: [ { name: soc, token: ${TOKEN}, scope: read } ] }
flowLog: { path: null }
`;
const DENIED = join(dir, 'denied.yaml');
const ALLOWED = join(dir, 'allowed.yaml');
writeFileSync(DENIED, policy(''));
writeFileSync(ALLOWED, policy('allowRanges: [127.0.0.0/8]'));

let origin: Server;
let originPort = 0;
let denied: Served | null = null;
let allowed: Served | null = null;

beforeAll(async () => {
  origin = createServer((s) => {
    s.on('error', () => undefined);
    s.end();
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  [denied, allowed] = await Promise.all([spawnServe(DENIED), spawnServe(ALLOWED)]);
}, 120_000);

afterAll(async () => {
  await Promise.all([killIfRunning(denied?.child ?? null), killIfRunning(allowed?.child ?? null)]);
  origin?.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Verdict {
  verdict: unknown;
  reason: unknown;
  ip: unknown;
}

/** A real CONNECT to `dest` through `served`: the answer's status and, when refused, its reason. */
async function connectThrough(served: Served, dest: string): Promise<{ status: number; reason: unknown }> {
  const text = await new Promise<string>((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port: served.http.port });
    const guard = setTimeout(() => {
      c.destroy();
      reject(new Error('no answer within 5 s'));
    }, 5_000);
    let got = '';
    c.on('error', () => undefined);
    c.on('data', (b: Buffer) => {
      got += b.toString('latin1');
      if (got.includes('\r\n\r\n') && got.startsWith('HTTP/1.1 200')) c.destroy();
    });
    c.on('close', () => {
      clearTimeout(guard);
      resolve(got);
    });
    c.write(`CONNECT ${dest} HTTP/1.1\r\nHost: ${dest}\r\n\r\n`);
  });
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  return { status, reason: status === 200 ? null : (JSON.parse(body) as { reason?: unknown }).reason };
}

async function cliEvaluate(config: string, dest: string): Promise<Verdict & { destIpSource: unknown }> {
  const { stdout } = await run(process.execPath, [CLI, 'evaluate', '--config', config, '--dest', dest], { timeout: 30_000 });
  const out = JSON.parse(stdout) as { verdict: unknown; reason: unknown; destIp: unknown; destIpSource: unknown };
  return { verdict: out.verdict, reason: out.reason, ip: out.destIp, destIpSource: out.destIpSource };
}

async function adminEvaluate(served: Served, dest: string): Promise<Verdict> {
  const res = await fetch(`http://${served.admin}/v1/policy/evaluate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ dest }),
  });
  expect(res.status).toBe(200);
  const out = (await res.json()) as { verdict: unknown; reason: unknown; destination: { ip: unknown } };
  return { verdict: out.verdict, reason: out.reason, ip: out.destination.ip };
}

describe('evaluate: a name under localhost', () => {
  it('is judged on 127.0.0.1 and refused deny-range, as the CONNECT to it is', async () => {
    const dest = `app.localhost:${originPort}`;
    expect(await connectThrough(denied as Served, dest)).toEqual({ status: 403, reason: 'deny-range' });
    expect(await cliEvaluate(DENIED, dest)).toEqual({ verdict: 'block', reason: 'deny-range', ip: '127.0.0.1', destIpSource: 'localhost' });
    expect(await adminEvaluate(denied as Served, dest)).toEqual({ verdict: 'block', reason: 'deny-range', ip: '127.0.0.1' });
  });

  it('is allowed where allowRanges admits loopback, as the CONNECT is; the gateway itself stays refused', async () => {
    const dest = `a.b.app.localhost:${originPort}`;
    expect(await connectThrough(allowed as Served, dest)).toEqual({ status: 200, reason: null });
    expect(await cliEvaluate(ALLOWED, dest)).toEqual({ verdict: 'allow', reason: 'allowed', ip: '127.0.0.1', destIpSource: 'localhost' });
    expect(await adminEvaluate(allowed as Served, dest)).toEqual({ verdict: 'allow', reason: 'allowed', ip: '127.0.0.1' });
    const self = `app.localhost:${(allowed as Served).http.port}`;
    expect(await connectThrough(allowed as Served, self)).toEqual({ status: 403, reason: 'deny-range' });
    expect(await adminEvaluate(allowed as Served, self)).toEqual({ verdict: 'block', reason: 'deny-range', ip: '127.0.0.1' });
  });
});
