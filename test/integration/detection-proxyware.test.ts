/**
 * Live proof (issue 5): a proxyware process name is blocked at connect.
 *
 * - Agent path: POST /v1/agents/reports names the client's process (`honeygain`) for a client
 *   connection before its CONNECT (connected from a port the kernel picked, nothing sent yet). Enforced: 403,
 *   `X-Egress-Verdict: block`, reason `an0081.proxyware`, a block alert; monitored: the tunnel is
 *   established, the flow is recorded would-block with a would-block alert.
 *   A report that arrives after the tunnel is up kills it.
 * - Real process path: a copy of curl named `honeygain`, attributed by the gateway's own
 *   LocalAttributor from /proc (no report at all), gets the same 403 and a flow record that says
 *   block / an0081.proxyware. Regression: local attribution emitted 'attributed' mid-admission and
 *   the engine killed the not-yet-decided flow, recording it as verdict allow and answering the
 *   client reason quarantine.
 * - SOCKS5 UDP ASSOCIATE from a real process: a copy of python3 named `honeygain` whose datagram
 *   socket is unconnected and bound to 0.0.0.0. Regression: local attribution looked the client's
 *   UDP port up in the TCP table, so the association was relayed with process null and verdict
 *   allow while a CONNECT from the same process was refused 0x02.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalAttributor } from '../../agent/attribution.ts';
import type { Mode } from '../../policy/types.ts';
import {
  ATTRIBUTION_GUARD_MS,
  type ConnectAnswer,
  type TcpOrigin,
  connectsReportedAhead,
  echoOrigin,
  echoRoundTrip,
  httpConnect,
  reportProcesses,
  testAgent,
  waitForAlert,
} from '../helpers/detection-live.ts';
import { adminGet, type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { type UdpEcho, startUdpEcho } from './socks5-harness.ts';

const CLIENT_IP = '127.0.0.6';
/**
 * A client attributed from /proc waits for the gateway's read of the socket tables at each
 * admission (up to ATTRIBUTION_GUARD_MS): killed only past two of them, a hang guard, not a timing
 * check (one read takes seconds on a loaded machine; a 10 s kill once cut the UDP case short).
 */
const CHILD_GUARD_MS = 2 * ATTRIBUTION_GUARD_MS + 30_000;

let good: TcpOrigin;
let gw: TestGateway | null = null;

beforeAll(async () => {
  good = await echoOrigin('127.0.0.1');
});
afterAll(async () => {
  await good?.close();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({ mode, identity: { agents: [testAgent] }, detection: { sampleIntervalMs: 50 } });
}

/**
 * A CONNECT from CLIENT_IP to the good origin whose process the agent reports as `name` before the
 * client sends it (connected from a port the kernel picked): the report waits for the flow (pending).
 */
async function connectReportedAs(g: TestGateway, name: string): Promise<ConnectAnswer & { localPort: number }> {
  const { report, answers } = await connectsReportedAhead(g, CLIENT_IP, 'ws-pw', [
    {
      target: `127.0.0.1:${good.port}`,
      process: { pid: 31337, name, exe: `/usr/bin/${name}`, cmdline: `/usr/bin/${name} -email x@example.test -device ws-pw`, user: 'bob', uid: 1001, loginuid: 1001 },
    },
  ]);
  expect(report).toEqual({ accepted: 1, attributed: 0, pending: 1, shed: 0, ignored: 0, udpRelayPorts: null });
  return answers[0]!;
}

describe('an0081.proxyware at connect, process named by an agent report', () => {
  it('enforce: 403 with X-Egress-Verdict block, reason an0081.proxyware, block alert', async () => {
    gw = await start('enforce');
    const a = await connectReportedAs(gw, 'honeygain');
    const localPort = a.localPort;
    expect(a.status).toBe(403);
    expect(a.headers['x-egress-verdict']).toBe('block');
    const body = JSON.parse(a.body) as { error: string; reason: string; flowId: string };
    expect(body).toMatchObject({ error: 'egress denied', reason: 'an0081.proxyware' });
    const rec = await gw.waitForClosed((r) => r.id === body.flowId);
    expect(rec.verdict).toBe('block');
    expect(rec.detector).toBe('an0081.proxyware');
    expect(rec.identity.process?.name).toBe('honeygain');
    expect(rec.bytesOut).toBe(0);
    expect(good.conns.some((c) => c.remotePort === localPort)).toBe(false);
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.proxyware');
    expect(alert).toMatchObject({ analytic: 'AN0081', action: 'block', enforced: true, flowIds: [body.flowId] });
    expect(alert.evidence['process']).toBe('honeygain');
  });

  it('monitor: the tunnel passes, flow recorded would-block, would-block alert', async () => {
    gw = await start('monitor');
    const a = await connectReportedAs(gw, 'honeygain');
    const localPort = a.localPort;
    expect(a.status).toBe(200);
    await echoRoundTrip(a.socket, Buffer.from('monitored, not stopped'));
    a.socket.end();
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec.verdict).toBe('would-block');
    expect(rec.enforced).toBe(false);
    expect(rec.detector).toBe('an0081.proxyware');
    expect(rec.bytesOut).toBe('monitored, not stopped'.length);
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.proxyware');
    expect(alert).toMatchObject({ action: 'would-block', enforced: false, flowIds: [rec.id] });
  });

  it('enforce: a report that arrives after the tunnel is up kills it (SPEC §7 re-evaluation)', async () => {
    gw = await start('enforce');
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: CLIENT_IP });
    const localPort = a.socket.localPort as number;
    expect(a.status).toBe(200);
    a.socket.on('error', () => undefined);
    await echoRoundTrip(a.socket, Buffer.from('before the report'));
    const closed = new Promise<void>((r) => a.socket.once('close', () => r()));
    const ans = await reportProcesses(gw.adminUrl, 'ws-pw', [
      { localIp: CLIENT_IP, localPort, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 31338, name: 'honeygain', user: 'bob', loginuid: 1001 },
    ]);
    expect(ans).toEqual({ accepted: 1, attributed: 1, pending: 0, shed: 0, ignored: 0, udpRelayPorts: null });
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec.closeReason).toBe('an0081.proxyware');
    await closed;
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.proxyware');
    expect(alert).toMatchObject({ action: 'block', enforced: true, flowIds: [rec.id] });
  });

  // Regression: a flow killed before the first sweep counted it was counted as an admission refusal
  // (gw_policy_decisions_total{verdict="block",reason="detector"}), one killed later as allowed.
  it('enforce: a tunnel killed by a late report counts as allowed at admission in /metrics', async () => {
    gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] }, detection: { sampleIntervalMs: 60_000 } });
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: CLIENT_IP });
    const localPort = a.socket.localPort as number;
    expect(a.status).toBe(200);
    a.socket.on('error', () => undefined);
    await echoRoundTrip(a.socket, Buffer.from('before the report'));
    const ans = await reportProcesses(gw.adminUrl, 'ws-pw', [
      { localIp: CLIENT_IP, localPort, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 31339, name: 'honeygain', user: 'bob', loginuid: 1001 },
    ]);
    expect(ans.attributed).toBe(1);
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec).toMatchObject({ verdict: 'block', reason: 'detector', closeReason: 'an0081.proxyware' });
    const { text } = await adminGet(gw, '/metrics');
    const decisions = text.split('\n').filter((l) => l.startsWith('gw_policy_decisions_total{'));
    expect(decisions).toEqual(['gw_policy_decisions_total{verdict="allow",reason="allowed"} 1']);
  });

  // Regression: the quarantine branch of the late-report re-evaluation still replaced the verdict with
  // FlowTable.decide, so a second tunnel of a quarantined process killed before the first sweep was
  // counted gw_policy_decisions_total{verdict="block",reason="quarantine"}, one killed after it as allowed.
  it('enforce: a tunnel killed by a late report into quarantine counts as allowed at admission in /metrics', async () => {
    gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] }, detection: { sampleIntervalMs: 60_000 } });
    const ports: number[] = [];
    for (let i = 0; i < 2; i++) {
      const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`, { localAddress: CLIENT_IP });
      expect(a.status).toBe(200);
      ports.push(a.socket.localPort as number);
      a.socket.on('error', () => undefined);
      await echoRoundTrip(a.socket, Buffer.from(`tunnel ${i}`));
    }
    for (const [i, localPort] of ports.entries()) {
      const ans = await reportProcesses(gw.adminUrl, 'ws-pw', [
        { localIp: CLIENT_IP, localPort, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 31340, name: 'honeygain', user: 'bob', loginuid: 1001 },
      ]);
      expect(ans.attributed).toBe(1);
      const rec = await gw.waitForClosed((r) => r.client.port === localPort);
      // The first is killed by the detector, the second by the quarantine the first put its process in.
      expect(rec.closeReason).toBe(i === 0 ? 'an0081.proxyware' : 'quarantine');
    }
    const { text } = await adminGet(gw, '/metrics');
    const decisions = text.split('\n').filter((l) => l.startsWith('gw_policy_decisions_total{'));
    expect(decisions).toEqual(['gw_policy_decisions_total{verdict="allow",reason="allowed"} 2']);
  });

  it('a plain process name from the same agent passes with no alert (the test can fail)', async () => {
    gw = await start('enforce');
    const a = await connectReportedAs(gw, 'backupd');
    const localPort = a.localPort;
    expect(a.status).toBe(200);
    await echoRoundTrip(a.socket, Buffer.from('fine'));
    a.socket.destroy();
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec.identity.process?.name).toBe('backupd');
    expect(rec.verdict).toBe('allow');
    expect(gw.alerts.list()).toEqual([]);
  });
});

describe('an0081.proxyware at connect, real process attributed from /proc', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-pw-'));
    await copyFile('/usr/bin/curl', join(dir, 'honeygain'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('enforce: curl renamed honeygain gets 403 on CONNECT (curl -p reports the CONNECT code)', async () => {
    gw = await startTestGateway(
      { mode: 'enforce', identity: { localAttribution: true }, detection: { sampleIntervalMs: 50 } },
      { attributor: new LocalAttributor({ timeoutMs: ATTRIBUTION_GUARD_MS }) },
    );
    const proxy = `http://${gw.httpHost}:${gw.httpPort}`;
    const child = spawn(join(dir, 'honeygain'), ['-s', '-p', '-x', proxy, '-o', '/dev/null', '-w', '%{http_connect}', `http://127.0.0.1:${good.port}/`], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_GUARD_MS);
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    clearTimeout(timer);
    expect(out).toBe('403');
    expect(code).not.toBe(0);
    const rec = await gw.waitForClosed((r) => r.destination.port === good.port, ATTRIBUTION_GUARD_MS);
    expect(rec.verdict).toBe('block');
    expect(rec.detector).toBe('an0081.proxyware');
    expect(rec.identity.process?.name).toBe('honeygain');
    expect(rec.identity.process?.pid).toBe(child.pid);
    const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.proxyware', ATTRIBUTION_GUARD_MS);
    expect(alert.action).toBe('block');
  }, 2 * CHILD_GUARD_MS);
});

/**
 * UDP ASSOCIATE (datagram socket unconnected, bound to 0.0.0.0, its port announced), one datagram
 * to the echo, a line on stdout; the datagram again at each line `again` on stdin; then, after any
 * other line, CONNECT to the TCP origin and its reply code on stdout. UDP first: a refused CONNECT
 * would quarantine the identity.
 */
const SOCKS_CLIENT = `
import socket, struct, sys
host, port, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def recvn(c, n):
    b = b''
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x:
            break
        b += x
    return b
def greet():
    c = socket.create_connection((host, port))
    c.sendall(b'\\x05\\x01\\x00')
    assert recvn(c, 2) == b'\\x05\\x00'
    return c
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('0.0.0.0', 0))
ctl = greet()
ctl.sendall(b'\\x05\\x03\\x00\\x01' + socket.inet_aton('0.0.0.0') + struct.pack('>H', u.getsockname()[1]))
r = recvn(ctl, 10)
assert r[1] == 0, r
relay = (socket.inet_ntoa(r[4:8]), struct.unpack('>H', r[8:10])[0])
datagram = b'\\x00\\x00\\x00\\x01' + socket.inet_aton('127.0.0.1') + struct.pack('>H', udp_port) + b'from honeygain'
u.sendto(datagram, relay)
print('sent', u.getsockname()[1], flush=True)
while sys.stdin.readline().strip() == 'again':
    u.sendto(datagram, relay)
c = greet()
c.sendall(b'\\x05\\x01\\x00\\x01' + socket.inet_aton('127.0.0.1') + struct.pack('>H', tcp_port))
r = recvn(c, 2)
print('connect', r[1] if len(r) == 2 else -1, flush=True)
`;

describe('an0081.proxyware for a SOCKS5 UDP association, real process attributed from /proc', () => {
  let dir = '';
  let echo: UdpEcho;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-pw-udp-'));
    await copyFile('/usr/bin/python3.11', join(dir, 'honeygain'));
    echo = await startUdpEcho('udp4');
  });
  afterAll(async () => {
    await echo?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('enforce: python3 renamed honeygain gets its association refused and recorded, as its CONNECT is refused 0x02', async () => {
    gw = await startTestGateway(
      { mode: 'enforce', identity: { localAttribution: true }, detection: { sampleIntervalMs: 50 } },
      { attributor: new LocalAttributor({ timeoutMs: ATTRIBUTION_GUARD_MS }) },
    );
    const child = spawn(join(dir, 'honeygain'), ['-c', SOCKS_CLIENT, gw.socksHost, String(gw.socksPort), String(good.port), String(echo.port)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_GUARD_MS);
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    let out = '';
    let err = '';
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    const lines: string[] = [];
    let onLine: (() => void) | null = null;
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const parts = out.split('\n');
      out = parts.pop() ?? '';
      lines.push(...parts);
      onLine?.();
    });
    const nextLine = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const take = (): void => {
          const line = lines.shift();
          if (line === undefined) return;
          onLine = null;
          resolve(line);
        };
        onLine = take;
        take();
        void exited.then(() => reject(new Error(`client exited: ${err}`)));
      });
    try {
      const [word, udpPort] = (await nextLine()).split(' ');
      expect(word).toBe('sent');
      // Refused: the association's record closes; relayed: the echo hears the datagram. Its flow opens
      // (attribution, detection) at the first datagram past the source port's owner check, whose
      // lookup, one read of /proc/net/udp, can outlast its 500 ms wait on a loaded machine: that
      // datagram is then dropped as not known in time, and the client sends again (250 ms apart, the
      // bound a hang guard) until the outcome.
      const record = gw.waitForClosed((r) => r.protocol === 'socks5-udp', CHILD_GUARD_MS);
      let settled = false;
      const outcome = Promise.race([
        record.then((r) => r, () => null),
        once(echo.socket, 'message').then(() => 'relayed' as const),
      ]).finally(() => {
        settled = true;
      });
      for (let n = 0; n < CHILD_GUARD_MS / 250 && !settled; n++) {
        await new Promise((r) => setTimeout(r, 250));
        if (!settled) child.stdin.write('again\n');
      }
      expect(await outcome).not.toBe('relayed');
      const rec = await record;
      expect(rec.client.port).toBe(Number(udpPort));
      expect(rec.identity.process?.name).toBe('honeygain');
      expect(rec.identity.process?.pid).toBe(child.pid);
      expect([rec.verdict, rec.detector, rec.enforced]).toEqual(['block', 'an0081.proxyware', true]);
      expect(rec.bytesOut).toBe(0);
      expect(echo.received).toEqual([]);
      const alert = await waitForAlert(gw.alerts, (x) => x.detector === 'an0081.proxyware', ATTRIBUTION_GUARD_MS);
      expect(alert).toMatchObject({ action: 'block', enforced: true, flowIds: [rec.id] });

      // The same process's CONNECT, for comparison: refused 0x02 (by the quarantine now).
      child.stdin.write('connect\n');
      expect(await nextLine()).toBe('connect 2');
      expect(await exited).toBe(0);
    } finally {
      clearTimeout(timer);
      child.kill('SIGKILL');
    }
  }, 2 * CHILD_GUARD_MS);
});
