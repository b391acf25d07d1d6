/**
 * The agent never sends a report whose socket is gone. It kept reports while the gateway was
 * unreachable and sent them all once it came back, for sockets long closed; the gateway joins a
 * report to the live flow at its client address, so a closed connection's report named the next
 * connection from the same port. Reproduced: a copy of python3 named `nmap` held a tunnel from a
 * port while the gateway's admin API was down; it exited, and a plain python3 tunnelled from the same
 * port; when the API came back, the agent's first batch named the python3 tunnel `nmap` and the
 * gateway (enforce) killed it as an0081.scanner-tool.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { AGENT_TOKEN, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { killIfRunning } from '../helpers/serve-process.ts';

let gw: TestGateway;
let dir: string;
let closer: Server;
let holder: Server;
let front: Server;
let isApiUp = false;
const children: ChildProcess[] = [];
const sockets: Socket[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-stale-'));
  await copyFile('/usr/bin/python3', join(dir, 'nmap'));
  // Ends the tunnel on its first bytes, so the gateway ends the client's side first and the
  // client's port is free again at once (no TIME_WAIT on the client's side).
  closer = createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => s.end('bye'));
  });
  // Holds the tunnel open.
  holder = createServer((s) => {
    s.on('error', () => undefined);
    sockets.push(s);
  });
  await Promise.all([once(closer.listen(0, '127.0.0.1'), 'listening'), once(holder.listen(0, '127.0.0.1'), 'listening')]);
  gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] } });
  const [adminHost = '', adminPort = '0'] = gw.admin.split(':');
  // The agent reaches the admin API through this front: while `isApiUp` is false the gateway is
  // unreachable (connections reset), its proxy listener still carrying the tunnels.
  front = createServer((c) => {
    c.on('error', () => undefined);
    if (!isApiUp) {
      c.resetAndDestroy();
      return;
    }
    const api = connect(Number(adminPort), adminHost, () => {
      c.pipe(api).pipe(c);
    });
    api.on('error', () => c.destroy());
  });
  await once(front.listen(0, '127.0.0.1'), 'listening');
});
afterAll(async () => {
  for (const c of children) await killIfRunning(c);
  for (const s of sockets) s.destroy();
  await gw?.stop();
  closer?.close();
  holder?.close();
  front?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/**
 * A python3 client (as `exe`) tunnelling from `localPort` (0: a port the kernel picks at bind) to
 * `dest`; it prints `port <its port>` once connected and `up` once the tunnel is open.
 */
function tunnel(
  exe: string,
  localPort: number,
  dest: number,
): { child: ChildProcess; exited: Promise<unknown>; line: (text: string) => Promise<void>; port: () => number } {
  const script = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', ${localPort}))
s.connect(('127.0.0.1', ${gw.httpPort}))
print('port', s.getsockname()[1], flush=True)
s.sendall(b'CONNECT 127.0.0.1:${dest} HTTP/1.1\\r\\n\\r\\n')
head = b''
while b'\\r\\n\\r\\n' not in head:
    c = s.recv(4096)
    if not c: break
    head += c
print('up' if head.startswith(b'HTTP/1.1 200') else 'refused', flush=True)
sys.stdin.readline()
s.sendall(b'hello')
while s.recv(4096): pass
print('done', flush=True)
`;
  const child = spawn(exe, ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const exited = once(child, 'exit');
  let out = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const line = (text: string): Promise<void> => until(`${exe} to print ${text}`, () => out.split('\n').includes(text), 10_000);
  const port = (): number => Number(/^port (\d+)$/m.exec(out)?.[1] ?? 0);
  return { child, exited, line, port };
}

it('a report held while the gateway was down is not sent once its socket is gone: the next connection from its port keeps its own process', async () => {
  const agent = new Agent({
    gatewayUrl: `http://127.0.0.1:${(front.address() as { port: number }).port}`,
    gatewayHosts: ['127.0.0.1'],
    token: AGENT_TOKEN,
    host: 'ws',
    intervalMs: 50,
    gatewayPorts: [gw.httpPort],
    log: () => {},
  });
  // 1. `nmap` tunnels from a port the kernel picks; the agent sees it but cannot reach the gateway.
  const scanner = tunnel(join(dir, 'nmap'), 0, (closer.address() as { port: number }).port);
  await scanner.line('up');
  const port = scanner.port();
  expect(port).toBeGreaterThan(0);
  let seen = 0;
  for (let i = 0; i < 100 && seen === 0; i++) seen = (await agent.collect()).queued;
  // At least nmap's (the agent reads the whole host's sockets: on a busy machine another process
  // may hold one towards the same port number, as happened once in a full run).
  expect(seen).toBeGreaterThanOrEqual(1);
  expect(await agent.flush()).toBe(false);
  expect(agent.queued).toBe(seen);
  // 2. It ends its tunnel and exits; its flow closes unattributed.
  scanner.child.stdin?.write('\n');
  await scanner.line('done');
  await scanner.exited;
  const scanned = await gw.waitForClosed((r) => r.client.port === port);
  expect(scanned.identity.process).toBeNull();
  // 3. A plain python3 tunnels from the same port and holds it.
  const client = tunnel('/usr/bin/python3', port, (holder.address() as { port: number }).port);
  await client.line('up');
  // 4. The gateway is back: the agent's next pass and send.
  isApiUp = true;
  let queued = 0;
  for (let i = 0; i < 100 && queued === 0; i++) queued = (await agent.collect()).queued;
  expect(queued).toBeGreaterThanOrEqual(1);
  // flush() waits out the backoff of the failed send, then sends everything queued.
  await until('the agent to send', () => agent.flush(), 10_000);
  const live = gw.flows.list({ state: 'active' }).filter((r) => r.client.port === port);
  expect(live).toHaveLength(1);
  expect(live[0]?.identity.process).toMatchObject({ name: 'python3', pid: client.child.pid });
  expect(live[0]?.verdict).toBe('allow');
  expect(gw.closed.filter((r) => r.client.port === port)).toHaveLength(1);
  expect(agent.totals.stale).toBeGreaterThanOrEqual(1);
  client.child.kill('SIGKILL');
});
