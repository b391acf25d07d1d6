/**
 * An empty user name: the gateway refuses a login naming it (407 bad-credentials), with or without
 * identity.requireAuth, as no account can have it. `egressgate evaluate --user ''` answered `allow`
 * with `user: ""`, as if such a client had logged in; now it is a usage error (exit 2) and
 * `POST /v1/policy/evaluate` with `user: ""` a 400, each saying why.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import { type TcpOrigin, echoOrigin } from '../helpers/detection-live.ts';
import { type DeepPartial, type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { CLI, ROOT } from '../helpers/serve-process.ts';

let origin: TcpOrigin;
let gw: TestGateway;
let dir: string;
let policyFile: string;
let dest: string;

function policy(port: number): DeepPartial<Config> {
  return {
    mode: 'enforce',
    identity: { localAttribution: false, users: [{ name: 'alice', password: 'pw-alice-0123', roles: ['any'] }] },
    roles: { any: { allow: [{ host: 'ok.example.test', ports: [port] }] } },
    defaultRoles: ['any'],
    allowRanges: ['127.0.0.0/8'],
    resolver: { hosts: { 'ok.example.test': '127.0.0.1' } },
  };
}

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
  dest = `ok.example.test:${origin.port}`;
  gw = await startTestGateway(policy(origin.port));
  dir = mkdtempSync(join(tmpdir(), 'egw-evaluate-empty-user-'));
  policyFile = join(dir, 'policy.json');
  writeFileSync(policyFile, JSON.stringify(policy(origin.port)));
});
afterAll(async () => {
  await gw?.stop();
  await origin?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A raw CONNECT with Basic credentials: the answer's status line. */
async function connectStatus(login: string): Promise<string> {
  const socket = connect({ host: gw.httpHost, port: gw.httpPort });
  socket.write(`CONNECT ${dest} HTTP/1.1\r\nHost: ${dest}\r\nProxy-Authorization: Basic ${Buffer.from(login).toString('base64')}\r\n\r\n`);
  try {
    return await new Promise<string>((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`no answer in 5 s: ${JSON.stringify(buf)}`)), 5000);
      socket.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        if (buf.includes('\r\n')) {
          clearTimeout(timer);
          resolve(buf.slice(0, buf.indexOf('\r\n')));
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

function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'evaluate', '--config', policyFile, '--dest', dest, ...args], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

async function api(body: Record<string, string>): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${gw.adminUrl}/v1/policy/evaluate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('evaluate with an empty user name says what the gateway does', () => {
  it('the gateway answers 407 to a login naming no user; evaluate refuses the empty name (CLI exit 2, API 400)', async () => {
    expect(await connectStatus(':pw-alice-0123')).toMatch(/^HTTP\/1\.1 407 /);
    const [empty, emptyApi] = await Promise.all([cli('--user', ''), api({ dest, user: '' })]);
    expect(empty.code).toBe(2);
    expect(empty.stdout).toBe('');
    expect(empty.stderr).toContain('--user is empty: the gateway refuses a login with an empty user name (407 bad-credentials)');
    expect(emptyApi.status).toBe(400);
    expect(String(emptyApi.body['message'])).toContain('user is empty');
    // Control: a named user is judged as logged in, as its CONNECT with the password is let through.
    expect(await connectStatus('alice:pw-alice-0123')).toMatch(/^HTTP\/1\.1 200 /);
    const [alice, aliceApi] = await Promise.all([cli('--user', 'alice'), api({ dest, user: 'alice' })]);
    expect(alice.code).toBe(0);
    expect(JSON.parse(alice.stdout)).toMatchObject({ verdict: 'allow', identity: { user: 'alice' } });
    expect(aliceApi).toMatchObject({ status: 200, body: { verdict: 'allow', identity: { user: 'alice' } } });
  }, 60_000);
});
