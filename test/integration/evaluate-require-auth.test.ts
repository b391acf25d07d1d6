/**
 * `egressgate evaluate` and `POST /v1/policy/evaluate` answer what a real CONNECT through the gateway
 * gets when `identity.requireAuth` is on: a client that names no user has not logged in and is
 * refused `auth-required` (407) under the anonymous identity, whatever roles the host inventory
 * gives its address.
 *
 * Regression: both dry runs took the host inventory's roles for a login. With requireAuth on and
 * 127.0.0.0/8 in the inventory (role ci allowing the destination), a CONNECT without credentials
 * got 407 and its record `block auth-required` (identity host null, roles []), while evaluate with
 * the same source answered `allow` by role ci allow[0] (identity host "lo").
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import { type TcpOrigin, echoOrigin, httpConnect } from '../helpers/detection-live.ts';
import { type DeepPartial, type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { CLI } from '../helpers/serve-process.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLIENT_IP = '127.0.0.6';
const ALICE = 'alice:pw-alice-0123';

interface Evaluated {
  verdict: string;
  reason: string;
  detector: string | null;
  mode: string;
  matchedRule: { role: string; index: number } | null;
  identity: { user: string | null; host: string | null; roles: string[] };
  reasons: string[];
}

let origin: TcpOrigin;
let gw: TestGateway;
let dir: string;
let policyFile: string;
let dest: string;

/** The same policy for the gateway and, as a file, for the CLI. */
function policy(port: number): DeepPartial<Config> {
  return {
    mode: 'enforce',
    identity: {
      requireAuth: true,
      users: [{ name: 'alice', password: 'pw-alice-0123', roles: ['developer'] }],
      hosts: [{ cidr: '127.0.0.0/8', name: 'lo', roles: ['ci'] }],
    },
    roles: {
      ci: { allow: [{ host: 'ok.example.test', ports: [port] }] },
      developer: { allow: [{ host: 'ok.example.test', ports: [port] }] },
    },
    defaultRoles: [],
    allowRanges: ['127.0.0.0/8'],
    resolver: { hosts: { 'ok.example.test': '127.0.0.1' } },
  };
}

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
  dest = `ok.example.test:${origin.port}`;
  gw = await startTestGateway(policy(origin.port));
  dir = mkdtempSync(join(tmpdir(), 'egw-evaluate-auth-'));
  policyFile = join(dir, 'policy.json');
  writeFileSync(policyFile, JSON.stringify(policy(origin.port)));
});
afterAll(async () => {
  await gw?.stop();
  await origin?.close();
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

/** `egressgate evaluate` as a user runs it: a child process, its exit code and JSON stdout. */
function evaluateCli(...args: string[]): Promise<Evaluated> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [CLI, 'evaluate', '--config', policyFile, '--dest', dest, ...args],
      { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } },
      (err, stdout, stderr) => (err ? reject(new Error(`evaluate failed: ${err.message} ${stderr}`)) : resolve(JSON.parse(stdout) as Evaluated)),
    );
  });
}

/** A raw CONNECT with Basic credentials from `localAddress`: the answer's head (the socket is closed after). */
async function connectWithLogin(localAddress: string, login: string): Promise<string> {
  const socket = connect({ host: gw.httpHost, port: gw.httpPort, localAddress });
  socket.write(`CONNECT ${dest} HTTP/1.1\r\nHost: ${dest}\r\nProxy-Authorization: Basic ${Buffer.from(login).toString('base64')}\r\n\r\n`);
  try {
    return await new Promise<string>((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`no answer in 5 s: ${JSON.stringify(buf)}`)), 5000);
      socket.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        if (buf.includes('\r\n\r\n')) {
          clearTimeout(timer);
          resolve(buf);
        }
      });
      socket.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  } finally {
    socket.destroy();
  }
}

describe('evaluate under identity.requireAuth agrees with the gateway', () => {
  it('no user: the CONNECT is 407 auth-required, and so are the CLI and the API, host inventory or not', async () => {
    const [cli, api] = [evaluateCli('--source', CLIENT_IP), evaluateApi({ dest, source: CLIENT_IP })];
    const live = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, dest, { localAddress: CLIENT_IP });
    expect(live.status).toBe(407);
    const record = await gw.waitForClosed((r) => r.client.ip === CLIENT_IP);
    expect(record).toMatchObject({ verdict: 'block', reason: 'auth-required', identity: { user: null, host: null, roles: [] } });
    for (const answer of [await cli, await api]) {
      expect(answer).toMatchObject({ verdict: 'block', reason: 'auth-required', detector: 'policy.deny', mode: 'enforce', matchedRule: null });
      expect(answer.identity).toMatchObject({ user: null, host: null, roles: [] });
      expect(answer.reasons[0]).toBe('proxy authentication required');
    }
  }, 60_000);

  it('control: alice logged in is admitted, by the rule evaluate names for --user alice', async () => {
    const cli = evaluateCli('--source', '127.0.0.7', '--user', 'alice');
    const api = await evaluateApi({ dest, source: '127.0.0.7', user: 'alice' });
    const head = await connectWithLogin('127.0.0.7', ALICE);
    expect(head.split(' ')[1]).toBe('200');
    const record = await gw.waitForClosed((r) => r.client.ip === '127.0.0.7' && r.identity.user === 'alice');
    expect(record).toMatchObject({ verdict: 'allow', identity: { user: 'alice', host: 'lo' } });
    for (const answer of [await cli, api]) {
      expect(answer).toMatchObject({ verdict: 'allow', reason: 'allowed', matchedRule: { role: record.matchedRule?.role } });
      expect(answer.identity).toMatchObject({ user: 'alice', host: 'lo' });
      expect([...answer.identity.roles].sort()).toEqual([...record.identity.roles].sort());
    }
  }, 60_000);
});
