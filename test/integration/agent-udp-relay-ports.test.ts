/**
 * The agent reports a UDP socket to the gateway only on a port a SOCKS5 UDP relay can have, and the
 * gateway keeps a UDP report only for a port one of its relays is on. The agent reported every UDP
 * socket connected to the gateway's address, whatever its port: a DNS (53) or an NTP (123) socket
 * to that address was reported, and the gateway kept each report 30 s waiting for a flow that never
 * comes (reproduced with the real agent CLI: 2 such sockets, 2 reports sent, 2 pending).
 *
 * The gateway's listeners are on 127.0.0.74 (127.0.0.76 for the one with limits.udpRelayPorts),
 * which no other test uses: the agent reports every socket on this host to the gateway's address.
 * Without --udp-relay-ports the agent takes the range the gateway's report answer names (its
 * limits.udpRelayPorts): before, an agent on its default range missed every datagram socket of
 * an association whose relay was in a configured range below it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_TOKEN, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { CLI, killIfRunning, ROOT } from '../helpers/serve-process.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const GATEWAY_IP = '127.0.0.74';
/** The gateway with limits.udpRelayPorts set: an address of its own, for the same reason. */
const RANGED_IP = '127.0.0.76';
let gw: TestGateway;
let echo: UdpEcho;
const children: ChildProcess[] = [];

beforeAll(async () => {
  echo = await startUdpEcho();
  gw = await startTestGateway({
    listen: { http: `${GATEWAY_IP}:0`, socks: `${GATEWAY_IP}:0`, admin: `${GATEWAY_IP}:0` },
    identity: { agents: [testAgent] },
  });
});
afterAll(async () => {
  for (const c of children) await killIfRunning(c);
  await gw?.stop();
  await echo?.close();
});

/**
 * A python3 client holding, besides a SOCKS5 UDP association whose datagram socket is connected
 * to its relay (one datagram echoed through it), two UDP sockets connected to the gateway's
 * address on 53 and 123, as a resolver and a time client on that host would. Prints
 * `ready <association's udp port> <relay port>`.
 */
function client(g: TestGateway = gw, gatewayIp = GATEWAY_IP): { child: ChildProcess; ready: Promise<{ udpPort: number; relayPort: number }> } {
  const script = `
import socket, struct, sys
others = []
for port in (53, 123):
    o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    o.connect(('${gatewayIp}', port))
    others.append(o)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('127.0.0.1', 0))
u.settimeout(5)
t = socket.create_connection(('${gatewayIp}', ${g.socksPort}))
t.sendall(b'\\x05\\x01\\x00'); t.recv(2)
t.sendall(b'\\x05\\x03\\x00\\x01' + socket.inet_aton('127.0.0.1') + struct.pack('>H', u.getsockname()[1]))
r = t.recv(10)
relay = (socket.inet_ntoa(r[4:8]), struct.unpack('>H', r[8:10])[0])
u.connect(relay)
u.send(b'\\x00\\x00\\x00\\x01' + socket.inet_aton('127.0.0.1') + struct.pack('>H', ${echo.port}) + b'hi')
u.recv(100)
print('ready', u.getsockname()[1], relay[1], flush=True)
sys.stdin.readline()
`;
  const child = spawn('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const ready = new Promise<{ udpPort: number; relayPort: number }>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^ready (\d+) (\d+)$/m.exec(out);
      if (m) resolve({ udpPort: Number(m[1]), relayPort: Number(m[2]) });
    });
    child.once('exit', (code) => reject(new Error(`client exited (${code}): ${out}`)));
  });
  return { child, ready };
}

/** `egressgate agent --once` as its own process, as deploy/ runs it; its agent-pass line. */
async function agentOnce(g: TestGateway = gw): Promise<Record<string, unknown>> {
  const args = [CLI, 'agent', '--once', '--gateway', `http://${g.admin}`, '--host', 'ws', '--gateway-ports', `${g.httpPort},${g.socksPort}`];
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, EGRESSGATE_AGENT_TOKEN: AGENT_TOKEN }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  expect(code).toBe(0);
  return JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>;
}

async function pendingReports(g: TestGateway = gw): Promise<number> {
  const res = await fetch(`${g.adminUrl}/metrics`, { headers: { authorization: `Bearer ${g.adminToken}` } });
  const m = /^gw_agent_reports_pending (\d+)$/m.exec(await res.text());
  return Number(m?.[1]);
}

describe('agent: UDP sockets to the gateway', () => {
  it('only those to a relay port are reported; a DNS or NTP socket to the gateway address is not', async () => {
    const c = client();
    const { udpPort, relayPort } = await c.ready;
    expect(relayPort).toBeGreaterThanOrEqual(32768);
    const pass = await agentOnce();
    // The association's control connection and its datagram socket, not the two others.
    expect(pass).toMatchObject({ event: 'agent-pass', sockets: 2, queued: 2, sent: 2, delivered: true });
    expect(await pendingReports()).toBe(0);
    const live = gw.flows.list({ state: 'active' }).find((r) => r.protocol === 'socks5-udp' && r.client.port === udpPort);
    expect(live?.identity.process).toMatchObject({ name: 'python3', pid: c.child.pid });
    c.child.stdin?.end('\n');
    await until('the client to exit', () => c.child.exitCode !== null);
  });
});

describe('gateway: a UDP report about a port no relay is on', () => {
  it('is ignored: neither kept nor tried; one about a live relay port is taken', async () => {
    const post = async (remotePort: number, localPort: number): Promise<Record<string, unknown>> => {
      const res = await fetch(`${gw.adminUrl}/v1/agents/reports`, {
        method: 'POST',
        headers: { authorization: `Bearer ${AGENT_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          host: 'ws',
          reports: [{ proto: 'udp', localIp: '127.0.0.1', localPort, remoteIp: GATEWAY_IP, remotePort, pid: 77, ppid: null, name: 'systemd-resolved', exe: null, cmdline: null, user: null, uid: null, loginuid: null, parentName: null, parentExe: null, startedAt: null }],
        }),
      });
      expect(res.status).toBe(200);
      return (await res.json()) as Record<string, unknown>;
    };
    expect(await post(53, 40_053)).toEqual({ accepted: 0, attributed: 0, pending: 0, shed: 0, ignored: 1, udpRelayPorts: null });
    expect(await pendingReports()).toBe(0);
    // A live relay's port: taken, and kept for a flow not known yet (this client port has none).
    const c = client();
    const { relayPort } = await c.ready;
    expect(await post(relayPort, 40_054)).toEqual({ accepted: 1, attributed: 0, pending: 1, shed: 0, ignored: 0, udpRelayPorts: null });
    c.child.stdin?.end('\n');
    await until('the client to exit', () => c.child.exitCode !== null);
  });
});

describe('agent: the relay range from the gateway (limits.udpRelayPorts)', () => {
  it('without --udp-relay-ports, the report answer names the range and the association datagram socket on it is reported', async () => {
    // A range below Linux's ephemeral range, which the agent's default (32768-60999) does not cover.
    const lo = 20_000 + 8 * Math.floor(Math.random() * 1000);
    const ranged = await startTestGateway({
      listen: { http: `${RANGED_IP}:0`, socks: `${RANGED_IP}:0`, admin: `${RANGED_IP}:0` },
      identity: { agents: [testAgent] },
      limits: { udpRelayPorts: `${lo}-${lo + 7}` },
    });
    try {
      const c = client(ranged, RANGED_IP);
      const { udpPort, relayPort } = await c.ready;
      expect(relayPort).toBeGreaterThanOrEqual(lo);
      expect(relayPort).toBeLessThanOrEqual(lo + 7);
      const pass = await agentOnce(ranged);
      // The control connection, and the datagram socket once the answer named the range.
      expect(pass).toMatchObject({ event: 'agent-pass', sockets: 2, queued: 2, sent: 2, delivered: true });
      expect(await pendingReports(ranged)).toBe(0);
      const live = ranged.flows.list({ state: 'active' }).find((r) => r.protocol === 'socks5-udp' && r.client.port === udpPort);
      expect(live?.identity.process).toMatchObject({ name: 'python3', pid: c.child.pid });
      c.child.stdin?.end('\n');
      await until('the client to exit', () => c.child.exitCode !== null);
    } finally {
      await ranged.stop();
    }
  });
});
