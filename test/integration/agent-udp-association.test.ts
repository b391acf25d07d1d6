/**
 * An agent report about a SOCKS5 UDP association's control connection names the association. The
 * agent reports sockets whose remote end is the gateway; a client's datagram socket is most often
 * unconnected (sendto), with no remote address, so the agent reported only the TCP control
 * connection, which joined no flow: the association was recorded with process null. Reproduced: a
 * copy of python3 named `honeygain` relayed UDP through an association in enforce mode, the real
 * agent reported its control connection, and the association went on, allowed, process null.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { AGENT_TOKEN, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { killIfRunning } from '../helpers/serve-process.ts';

let enforce: TestGateway;
let monitor: TestGateway;
let dir: string;
const echo = createSocket('udp4');
const children: ChildProcess[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-udp-agent-'));
  await copyFile('/usr/bin/python3', join(dir, 'honeygain'));
  echo.on('message', (m, r) => echo.send(m, r.port, r.address));
  echo.bind(0, '127.0.0.1');
  await once(echo, 'listening');
  enforce = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] } });
  monitor = await startTestGateway({ identity: { agents: [testAgent] } });
});
afterAll(async () => {
  for (const c of children) await killIfRunning(c);
  await enforce?.stop();
  await monitor?.stop();
  echo.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/**
 * `exe` associates through `gw` with an unconnected datagram socket and prints `associated <udp port>`;
 * then, at each line on its stdin, sends a datagram to the echo server and prints `echo` or `none`.
 */
function udpClient(exe: string, gw: TestGateway): { child: ChildProcess; stdin: (line: string) => void; line: (start: string | RegExp) => Promise<string> } {
  const script = `
import socket, struct, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('127.0.0.1', 0))
u.settimeout(2)
t = socket.create_connection(('127.0.0.1', ${gw.socksPort}))
t.sendall(b'\\x05\\x01\\x00'); t.recv(2)
t.sendall(b'\\x05\\x03\\x00\\x01' + socket.inet_aton('127.0.0.1') + struct.pack('>H', u.getsockname()[1]))
r = t.recv(10)
relay = (socket.inet_ntoa(r[4:8]), struct.unpack('>H', r[8:10])[0])
print('associated', u.getsockname()[1], flush=True)
while sys.stdin.readline():
    u.sendto(b'\\x00\\x00\\x00\\x01' + socket.inet_aton('127.0.0.1') + struct.pack('>H', ${(echo.address() as { port: number }).port}) + b'hi', relay)
    try:
        u.recvfrom(100)
        print('echo', flush=True)
    except socket.timeout:
        print('none', flush=True)
`;
  const child = spawn(exe, ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  let consumed = 0;
  /** The next whole output line starting with `start`, or matching it (after the ones already taken). */
  const line = async (start: string | RegExp): Promise<string> => {
    let found = '';
    await until(`${exe} to print ${start}`, () => {
      const lines = out.split('\n').slice(consumed, -1);
      const i = lines.findIndex((l) => (typeof start === 'string' ? l.startsWith(start) : start.test(l)));
      if (i < 0) return false;
      found = lines[i] ?? '';
      consumed += i + 1;
      return true;
    }, 10_000);
    return found;
  };
  return { child, stdin: (l) => child.stdin?.write(`${l}\n`), line };
}

/** What the client prints after each datagram sent. */
const ANSWER = /^(echo|none)$/;

/** Real agent passes (real /proc) until it has reported the client's sockets to `gw`. */
async function agentReports(gw: TestGateway): Promise<Agent> {
  const agent = new Agent({ gatewayUrl: gw.adminUrl, token: AGENT_TOKEN, host: 'ws', intervalMs: 50, gatewayPorts: [gw.httpPort, gw.socksPort], log: () => {} });
  let queued = 0;
  for (let i = 0; i < 100 && queued === 0; i++) queued = (await agent.collect()).queued;
  expect(queued).toBeGreaterThan(0);
  expect(await agent.flush()).toBe(true);
  return agent;
}

describe('an agent report about the control connection names the UDP association', () => {
  it('enforce: a live association of a proxyware process is killed and recorded with its process', async () => {
    const c = udpClient(join(dir, 'honeygain'), enforce);
    const udpPort = Number((await c.line('associated')).split(' ')[1]);
    c.stdin('send');
    expect(await c.line(ANSWER)).toBe('echo');
    await agentReports(enforce);
    const rec = await enforce.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === udpPort);
    expect(rec).toMatchObject({ verdict: 'block', reason: 'detector', closeReason: 'an0081.proxyware' });
    expect(rec.identity.process).toMatchObject({ name: 'honeygain', pid: c.child.pid, uid: process.getuid?.() });
    c.stdin('send');
    expect(await c.line(ANSWER)).toBe('none');
  });

  it('enforce: reported before its first datagram, the association is refused at its first datagram', async () => {
    const c = udpClient(join(dir, 'honeygain'), enforce);
    const udpPort = Number((await c.line('associated')).split(' ')[1]);
    await agentReports(enforce);
    c.stdin('send');
    expect(await c.line(ANSWER)).toBe('none');
    const rec = await enforce.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === udpPort);
    expect(rec).toMatchObject({ verdict: 'block', bytesOut: 0, bytesIn: 0 });
    expect(rec.identity.process).toMatchObject({ name: 'honeygain', pid: c.child.pid });
  });

  it('monitor: the association names its process and is recorded would-block, still relaying', async () => {
    const c = udpClient(join(dir, 'honeygain'), monitor);
    const udpPort = Number((await c.line('associated')).split(' ')[1]);
    c.stdin('send');
    expect(await c.line(ANSWER)).toBe('echo');
    await agentReports(monitor);
    const live = monitor.flows.list({ state: 'active' }).find((r) => r.protocol === 'socks5-udp' && r.client.port === udpPort);
    expect(live).toMatchObject({ verdict: 'would-block', reason: 'detector', identity: { process: { name: 'honeygain', pid: c.child.pid } } });
    c.stdin('send');
    expect(await c.line(ANSWER)).toBe('echo');
  });
});
