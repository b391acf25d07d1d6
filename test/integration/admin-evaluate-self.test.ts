/**
 * POST /v1/policy/evaluate answers a dial to the gateway itself as admission does. The data plane
 * refuses a connection to its own listeners (block, deny-range, in any mode) before the policy, but
 * the dry run judged only the policy: against a monitor-mode serve whose roles allow 127.0.0.0/8,
 * evaluate {dest: <its own HTTP listener>} answered allow (or would-block for a user without roles)
 * while `curl -p -x` to that address got 403 deny-range. Through the real listeners: the admin API
 * with fetch, the data plane with curl.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const run = promisify(execFile);
let gw: TestGateway;
let origin: Server;
let originPort = 0;

beforeAll(async () => {
  origin = createServer((s) => s.end());
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  gw = await startTestGateway({ mode: 'monitor', roles: { any: { allow: [{ cidr: '127.0.0.0/8' }] } }, defaultRoles: ['any'] });
});

afterAll(async () => {
  await gw?.stop();
  origin?.close();
});

async function evaluate(body: Record<string, string>): Promise<{ verdict: string; reason: string; detector: string | null; reasons: string[] }> {
  const res = await fetch(`${gw.adminUrl}/v1/policy/evaluate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as { verdict: string; reason: string; detector: string | null; reasons: string[] };
}

/** What the data plane does with a CONNECT to `dest`: the CONNECT's status and, if refused, its JSON reason. */
async function connectTo(dest: string): Promise<{ status: string; reason: string | null }> {
  const { stdout } = await run('curl', ['-s', '-p', '-x', `http://${gw.httpHost}:${gw.httpPort}`, '-m', '5', '-o', '/dev/null', '-w', '%{http_connect}', `telnet://${dest}`]).catch(
    (e: { stdout: string }) => ({ stdout: e.stdout }),
  );
  const record = await gw.waitForClosed((r) => r.protocol === 'connect' && `${r.destination.host}:${r.destination.port}` === dest.replace(/^\[|\](?=:)/g, ''));
  return { status: stdout, reason: record.verdict === 'block' ? record.reason : null };
}

describe('evaluate: a destination that is the gateway itself', () => {
  it('is block deny-range, as the CONNECT to it is, for each listener and spelling', async () => {
    const port = (a: string): string => a.slice(a.lastIndexOf(':') + 1);
    for (const dest of [gw.http, gw.socks, gw.admin, `[::ffff:127.0.0.1]:${port(gw.http)}`]) {
      const answer = await evaluate({ dest, source: '127.0.0.1' });
      expect(answer, dest).toMatchObject({ verdict: 'block', reason: 'deny-range', detector: 'policy.deny-range' });
      expect(answer.reasons.join(' ')).toContain('of this gateway');
      // A name whose address the caller gives is judged on that address.
      expect(await evaluate({ dest: `gw.example.test:${port(dest)}`, ip: '127.0.0.1' })).toMatchObject({ verdict: 'block', reason: 'deny-range' });
    }
    const real = await connectTo(gw.http);
    expect(real).toEqual({ status: '403', reason: 'deny-range' });
  });

  it('leaves other loopback destinations to the policy: allow, and the CONNECT is established', async () => {
    const dest = `127.0.0.1:${originPort}`;
    expect(await evaluate({ dest, source: '127.0.0.1' })).toMatchObject({ verdict: 'allow', reason: 'allowed' });
    expect(await connectTo(dest)).toEqual({ status: '200', reason: null });
  });
});
