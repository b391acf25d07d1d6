/**
 * The agent as its own process (`node dist/agent/main.js`, agent/main.ts as built before the run:
 * the same code as `egressgate agent`): it attributes a connection held by another process (curl) and stops cleanly on SIGTERM;
 * with a token the gateway refuses it says so at start (before, nothing until a first report).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, type Socket, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { startTestGateway, until } from '../helpers/gateway.ts';
import { CLI, killIfRunning } from '../helpers/serve-process.ts';

const MAIN = join(dirname(CLI), 'agent', 'main.js');
/**
 * The stand-in gateway's address (admin API and proxy listener), used by no other test. The agent
 * reports every socket on this host to it (UDP: to a port of its --udp-relay-ports range), so on 127.0.0.1 another test's
 * connected UDP socket, or a connection to a port it had found closed, was reported too (seen: 2
 * reports sent instead of 1 while socks5-udp and agent-attribution ran beside it).
 */
const GATEWAY_IP = '127.0.0.71';
const children: ChildProcess[] = [];
const closers: Array<() => void> = [];

afterEach(async () => {
  for (const c of children.splice(0)) await killIfRunning(c);
  for (const close of closers.splice(0)) close();
});

it('loops until SIGTERM, posting the held connection once, then exits 0', async () => {
  // Stand-in for the gateway's POST /v1/agents/reports.
  const bodies: unknown[] = [];
  let onPost: (() => void) | null = null;
  const admin = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { reports: unknown[] };
      res.writeHead(202).end();
      // The empty batch it asks with at start (is its token taken?) is no report.
      if (body.reports.length === 0) return;
      bodies.push(body);
      onPost?.();
    });
  });
  await new Promise<void>((r) => admin.listen(0, GATEWAY_IP, () => r()));
  closers.push(() => {
    admin.closeAllConnections();
    admin.close();
  });
  // Stand-in for the proxy listener, and curl holding a connection to it.
  const sockets: Socket[] = [];
  const listener = createServer((s) => sockets.push(s));
  await new Promise<void>((r) => listener.listen(0, GATEWAY_IP, () => r()));
  closers.push(() => {
    for (const s of sockets) s.destroy();
    listener.close();
  });
  const listenerPort = (listener.address() as AddressInfo).port;
  // Its command line padded past what a report carries (32,768 characters), with the upload flag
  // at the end, as one that hides it from the exfil-tool detector would be.
  const pad = `X-Pad: ${'a'.repeat(40_000)}`;
  const curl = spawn('curl', ['-s', '-H', pad, '-T', '/etc/hostname', `http://${GATEWAY_IP}:${listenerPort}/`], { stdio: 'ignore' });
  children.push(curl);
  await new Promise<void>((resolve, reject) => {
    listener.once('connection', () => resolve());
    curl.once('exit', () => reject(new Error('curl exited before connecting')));
  });

  const adminUrl = `http://${GATEWAY_IP}:${(admin.address() as AddressInfo).port}`;
  const agent = spawn(
    process.execPath,
    [MAIN, '--gateway', adminUrl, '--token', 't', '--interval-ms', '100', '--gateway-ports', String(listenerPort)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.push(agent);
  let stdout = '';
  let stderr = '';
  agent.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  agent.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const closed = new Promise<number | null>((r) => agent.once('close', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    onPost = resolve;
    agent.once('exit', (code) => reject(new Error(`agent exited early (${code}): ${stderr}`)));
  });
  // (Not repeating a report across passes is covered in agent-cli.test.ts, in process.)
  expect(stdout).toContain('"event":"agent-started"');
  agent.kill('SIGTERM');
  expect(await closed).toBe(0);
  expect(stdout).toContain('"event":"agent-stopped"');
  const stopped = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as { passes: number; sent: number };
  expect(stopped.sent).toBe(1);
  expect(bodies).toHaveLength(1);
  const body = bodies[0] as { reports: Array<{ pid: number; name: string; ppid: number; cmdline: string }> };
  expect(body.reports).toHaveLength(1);
  expect(body.reports[0]).toMatchObject({ pid: curl.pid, name: 'curl', ppid: process.pid });
  // The command line's head (the program) and its tail (the upload flag) both reach the gateway.
  const cmdline = body.reports[0]?.cmdline ?? '';
  expect(cmdline.length).toBe(32_768);
  expect(cmdline.startsWith('curl -s -H X-Pad: aaa')).toBe(true);
  expect(cmdline.endsWith(` -T /etc/hostname http://${GATEWAY_IP}:${listenerPort}/`)).toBe(true);
});

it('with a token the gateway refuses, says so at start (agent-token-refused, the gateway\'s message) and runs on', async () => {
  // The real gateway's admin listener: the token is none of its tokens. Nothing to report (no
  // socket to the --gateway-ports port), so only the check at start can tell.
  const gw = await startTestGateway({});
  closers.push(() => void gw.stop());
  const agent = spawn(
    process.execPath,
    [MAIN, '--gateway', gw.adminUrl, '--token', 'not-a-token-of-this-gateway', '--interval-ms', '100', '--gateway-ports', '9'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.push(agent);
  let stdout = '';
  let stderr = '';
  agent.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  agent.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const closed = new Promise<number | null>((r) => agent.once('close', (code) => r(code)));
  await until('the agent to say its token is refused', () => stderr.includes('"event":"agent-token-refused"'), 20_000);
  const line = stderr.split('\n').find((l) => l.includes('"event":"agent-token-refused"')) ?? '{}';
  expect(JSON.parse(line)).toMatchObject({ status: 401, message: 'invalid token', gateway: `${gw.adminUrl}/v1/agents/reports` });
  // It runs on (the token may be added to the policy later); SIGTERM stops it, exit 0.
  expect(agent.exitCode).toBeNull();
  agent.kill('SIGTERM');
  expect(await closed).toBe(0);
  expect(stdout).toContain('"event":"agent-stopped"');
});
