/**
 * The agent end to end: a plain node:http server stands in for the gateway's
 * `POST /v1/agents/reports`, a plain TCP server for its proxy listener, and curl holds a
 * connection to it. Real /proc, real processes, loopback only.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type IncomingHttpHeaders, type Server as HttpServer, createServer as createHttpServer } from 'node:http';
import { type AddressInfo, type Server, type Socket, createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { validateReportBatch } from '../../agent/report.ts';
import { run } from '../../gateway/commands/agent.ts';
import { closedPort } from '../helpers/closed-port.ts';
import { AGENT_TOKEN, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway } from '../helpers/gateway.ts';
import { killIfRunning } from '../helpers/serve-process.ts';

/**
 * The stand-in gateway's address (admin API and proxy listener), used by no other test. The agent
 * reports every socket on this host to the gateway's address (UDP: to a port of its --udp-relay-ports range), so on 127.0.0.1
 * another test's connected UDP socket, or a connection to a port it had found closed, was reported
 * too: with a UDP socket connected to 127.0.0.1 anywhere on the host, 5 of these 7 tests failed.
 */
const GATEWAY_IP = '127.0.0.72';
const children: ChildProcess[] = [];
const closers: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const c of children.splice(0)) await killIfRunning(c);
  for (const close of closers.splice(0)) await close();
});

interface Post {
  headers: IncomingHttpHeaders;
  body: unknown;
  url: string;
}

/** A fake admin API: answers each POST with the next status in `statuses` (then 200) and records it. */
async function fakeGateway(statuses: number[] = []): Promise<{ url: string; posts: Post[]; nextPost: () => Promise<Post> }> {
  const posts: Post[] = [];
  const waiters: Array<(p: Post) => void> = [];
  const server: HttpServer = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const post = { headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown, url: req.url ?? '' };
      posts.push(post);
      const status = statuses.shift() ?? 200;
      res.writeHead(status, { 'content-type': 'application/json' }).end('{}');
      waiters.shift()?.(post);
    });
  });
  await new Promise<void>((r) => server.listen(0, GATEWAY_IP, () => r()));
  closers.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${GATEWAY_IP}:${port}`,
    posts,
    nextPost: () => new Promise<Post>((r) => waiters.push(r)),
  };
}

/** A stand-in proxy listener and a curl holding a connection to it. */
async function heldCurl(): Promise<{ listenerPort: number; child: ChildProcess; conn: Socket }> {
  const sockets: Socket[] = [];
  const server: Server = createServer((s) => sockets.push(s));
  await new Promise<void>((r) => server.listen(0, GATEWAY_IP, () => r()));
  closers.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  const listenerPort = (server.address() as AddressInfo).port;
  const child = spawn('curl', ['-s', `http://${GATEWAY_IP}:${listenerPort}/held`], { stdio: 'ignore' });
  children.push(child);
  const conn = await new Promise<Socket>((resolve, reject) => {
    server.once('connection', resolve);
    child.once('exit', () => reject(new Error('curl exited before connecting')));
  });
  return { listenerPort, child, conn };
}

/** Run the command in this process (the subprocess path is covered by the SIGTERM test), capturing stdout/stderr. */
async function runCaptured(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = process.stdout.write.bind(process.stdout);
  const err = process.stderr.write.bind(process.stderr);
  let stdout = '';
  let stderr = '';
  process.stdout.write = ((chunk: string | Uint8Array): boolean => {
    stdout += String(chunk);
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string | Uint8Array): boolean => {
    stderr += String(chunk);
    return true;
  }) as typeof process.stderr.write;
  try {
    const code = await run(args);
    return { code, stdout, stderr };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
}

describe('egressgate agent', () => {
  it('--once with nothing to report still asks the gateway: a wrong token is exit 1, not delivered', async () => {
    const gw = await startTestGateway({ identity: { agents: [testAgent] } });
    closers.push(() => gw.stop());
    // A port nothing on this host connects to: the pass finds no socket to report. The real
    // gateway's admin API is on 127.0.0.1; --gateway-host points the agent at GATEWAY_IP.
    const idle = createServer();
    await new Promise<void>((r) => idle.listen(0, GATEWAY_IP, () => r()));
    closers.push(() => new Promise<void>((r) => idle.close(() => r())));
    const ports = String((idle.address() as AddressInfo).port);
    const wrong = await runCaptured(['--once', '--gateway', `http://${gw.admin}`, '--token', 'not-the-token', '--host', 'ws', '--gateway-ports', ports, '--gateway-host', GATEWAY_IP]);
    expect(wrong.code).toBe(1);
    expect(JSON.parse(wrong.stdout.trim())).toMatchObject({ event: 'agent-pass', queued: 0, sent: 0, delivered: false, gatewayStatus: 401 });
    const right = await runCaptured(['--once', '--gateway', `http://${gw.admin}`, '--token', AGENT_TOKEN, '--host', 'ws', '--gateway-ports', ports, '--gateway-host', GATEWAY_IP]);
    expect(right.code).toBe(0);
    expect(JSON.parse(right.stdout.trim())).toMatchObject({ event: 'agent-pass', queued: 0, sent: 0, delivered: true });
    const down = await runCaptured(['--once', '--gateway', 'http://127.0.0.1:1', '--token', AGENT_TOKEN, '--host', 'ws', '--gateway-ports', ports, '--gateway-host', GATEWAY_IP]);
    expect(down.code).toBe(1);
    expect(JSON.parse(down.stdout.trim())).toMatchObject({ delivered: false, gatewayStatus: 0, error: expect.any(String) });
  });

  // Broke: the unit's agent.env example was https://…:9180, a scheme the admin listener does not
  // speak: every report failed ("fetch failed"), so an agent installed as documented never delivered.
  it('the EGRESSGATE_GATEWAY that deploy/systemd/egressgate-agent.service documents reaches a real admin listener', async () => {
    const unit = await readFile(new URL('../../deploy/systemd/egressgate-agent.service', import.meta.url), 'utf8');
    const documented = /EGRESSGATE_GATEWAY=(\S+)/.exec(unit)?.[1];
    expect(documented).toBeDefined();
    const gw = await startTestGateway({ identity: { agents: [testAgent] } });
    closers.push(() => gw.stop());
    // The documented URL with the real listener's address in place of the example name and port.
    const url = new URL(documented!);
    const real = new URL(gw.adminUrl);
    url.hostname = real.hostname;
    url.port = real.port;
    const idle = createServer();
    await new Promise<void>((r) => idle.listen(0, GATEWAY_IP, () => r()));
    closers.push(() => new Promise<void>((r) => idle.close(() => r())));
    const ports = String((idle.address() as AddressInfo).port);
    process.env['EGRESSGATE_AGENT_TOKEN'] = AGENT_TOKEN;
    try {
      const res = await runCaptured(['--once', '--gateway', url.href.replace(/\/$/, ''), '--host', 'ws-unit', '--gateway-ports', ports, '--gateway-host', GATEWAY_IP]);
      expect(JSON.parse(res.stdout.trim()), url.href).toMatchObject({ event: 'agent-pass', delivered: true, gatewayStatus: 200 });
      expect(res.code).toBe(0);
    } finally {
      delete process.env['EGRESSGATE_AGENT_TOKEN'];
    }
  });

  it('takes its token from EGRESSGATE_AGENT_TOKEN when --token is not given (deploy/ passes it so, off the command line)', async () => {
    const gw = await fakeGateway();
    const { listenerPort } = await heldCurl();
    process.env['EGRESSGATE_AGENT_TOKEN'] = 'tok-env';
    try {
      const res = await runCaptured(['--once', '--gateway', gw.url, '--host', 'ws-env', '--gateway-ports', String(listenerPort)]);
      expect(res.stderr).toBe('');
      expect(res.code).toBe(0);
      expect(gw.posts).toHaveLength(1);
      expect(gw.posts[0]?.headers.authorization).toBe('Bearer tok-env');
    } finally {
      delete process.env['EGRESSGATE_AGENT_TOKEN'];
    }
  });

  it('--once posts a SPEC §7 report for a held connection, with the bearer token', async () => {
    const gw = await fakeGateway();
    const { listenerPort, child, conn } = await heldCurl();
    const res = await runCaptured(['--once', '--gateway', gw.url, '--token', 'tok-1', '--host', 'ws-test', '--gateway-ports', String(listenerPort)]);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout.trim())).toMatchObject({ event: 'agent-pass', host: 'ws-test', queued: 1, sent: 1, delivered: true });
    expect(gw.posts).toHaveLength(1);
    const post = gw.posts[0]!;
    expect(post.url).toBe('/v1/agents/reports');
    expect(post.headers.authorization).toBe('Bearer tok-1');
    const valid = validateReportBatch(post.body);
    expect(valid.ok).toBe(true);
    const loginuid = Number((await readFile('/proc/self/loginuid', 'utf8')).trim());
    expect(post.body).toEqual({
      host: 'ws-test',
      reports: [
        {
          proto: 'tcp',
          localIp: conn.remoteAddress,
          localPort: conn.remotePort,
          remoteIp: GATEWAY_IP,
          remotePort: listenerPort,
          pid: child.pid,
          ppid: process.pid,
          name: 'curl',
          exe: expect.stringMatching(/curl$/),
          cmdline: `curl -s http://${GATEWAY_IP}:${listenerPort}/held`,
          user: expect.any(String),
          uid: process.getuid?.(),
          loginuid,
          parentName: expect.any(String),
          parentExe: process.execPath,
          startedAt: expect.stringMatching(/^\d{4}-/),
        },
      ],
    });
  });

  it('reports only what is new, and keeps reports across a failed POST (retry with backoff)', async () => {
    const gw = await fakeGateway([503]);
    const first = await heldCurl();
    const logs: Array<Record<string, unknown>> = [];
    const agent = new Agent({
      gatewayUrl: gw.url,
      token: 't',
      host: 'h',
      intervalMs: 50,
      gatewayPorts: [first.listenerPort],
      log: (e) => logs.push(e),
    });
    expect((await agent.collect()).queued).toBe(1);
    expect(await agent.sendBatch()).toBe('retry');
    expect(agent.queued).toBe(1);
    expect(agent.backoffRemainingMs()).toBeGreaterThan(0);
    expect(logs.some((l) => l['event'] === 'agent-report-failed' && l['status'] === 503)).toBe(true);
    // Same socket again: nothing new.
    expect((await agent.collect()).queued).toBe(0);
    expect(await agent.sendBatch()).toBe('sent');
    expect(agent.queued).toBe(0);
    expect(gw.posts).toHaveLength(2);
    expect(gw.posts[1]!.body).toEqual(gw.posts[0]!.body);
    // A second connection to the same listener is new.
    const again = spawn('curl', ['-s', `http://${GATEWAY_IP}:${first.listenerPort}/second`], { stdio: 'ignore' });
    children.push(again);
    // Wait until the kernel shows it: poll passes, bounded.
    let queued = 0;
    for (let i = 0; i < 200 && queued === 0; i++) {
      queued = (await agent.collect()).queued;
      if (queued === 0) await new Promise((r) => setTimeout(r, 10));
    }
    expect(queued).toBe(1);
    expect(await agent.sendBatch()).toBe('sent');
    const body = gw.posts[2]!.body as { reports: Array<{ pid: number }> };
    expect(body.reports.map((r) => r.pid)).toEqual([again.pid]);
  });

  it('drops a batch the gateway refuses (403) instead of retrying it forever', async () => {
    const gw = await fakeGateway([403]);
    const { listenerPort } = await heldCurl();
    const agent = new Agent({ gatewayUrl: gw.url, token: 't', host: 'h', intervalMs: 50, gatewayPorts: [listenerPort], log: () => {} });
    await agent.collect();
    expect(await agent.sendBatch()).toBe('dropped');
    expect(agent.queued).toBe(0);
    expect(agent.totals.dropped).toBe(1);
  });

  it('--help exits 0; unknown flags and bad values exit 2', async () => {
    const help = await runCaptured(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: egressgate agent');
    const unknown = await runCaptured(['--gateway', 'http://127.0.0.1:1', '--token', 't', '--frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--frobnicate');
    for (const bad of [
      ['--token', 't'],
      ['--gateway', 'http://127.0.0.1:1', '--token', 't', '--interval-ms', 'soon'],
      ['--gateway', 'http://127.0.0.1:1', '--token', 't', '--gateway-ports', '3128,70000'],
      ['--gateway', 'ftp://x', '--token', 't'],
      ['--gateway', 'http://127.0.0.1:1', '--token', 't', 'stray-positional'],
    ]) {
      expect((await runCaptured(bad)).code).toBe(2);
    }
  });

  // Regression: `--gateway-host ""` (a unit's `--gateway-host "$PROXY_HOSTS"`, the variable unset)
  // was an empty list of gateway addresses: the agent watched none, found 0 sockets beside a held
  // connection, posted nothing, and --once said delivered, exit 0.
  it('--gateway-host naming no host is a usage error (exit 2), nothing posted; control: the host given, the held socket reported', async () => {
    const gw = await fakeGateway();
    const { listenerPort } = await heldCurl();
    const base = ['--once', '--gateway', gw.url, '--token', 't', '--host', 'ws', '--gateway-ports', String(listenerPort)];
    for (const hosts of ['', ' , ']) {
      const res = await runCaptured([...base, '--gateway-host', hosts]);
      expect(res.code).toBe(2);
      expect(res.stderr).toMatch(/^egressgate agent: --gateway-host: no host in /m);
      expect(res.stdout).toBe('');
    }
    expect(gw.posts).toHaveLength(0);
    const given = await runCaptured([...base, '--gateway-host', ` ${GATEWAY_IP} ,`]);
    expect(given.code).toBe(0);
    expect(JSON.parse(given.stdout.trim())).toMatchObject({ sockets: 1, sent: 1, delivered: true });
  });

  // Regression: `agent -h` was an unknown option (exit 2) while every other command takes it;
  // `--token` with `--token-file` used the file's token without a word; `--interval-ms` took
  // "1e3", "0x64" and " 100" (Number()), which no other numeric flag takes.
  it('-h is --help; --token with --token-file and a non-digit --interval-ms are usage errors (exit 2), nothing posted', async () => {
    const short = await runCaptured(['-h']);
    expect(short.code).toBe(0);
    expect(short.stdout).toContain('Usage: egressgate agent');
    const gw = await fakeGateway();
    const dir = await mkdtemp(join(tmpdir(), 'egw-agent-flags-'));
    closers.push(() => rm(dir, { recursive: true, force: true }));
    const tokenFile = join(dir, 'token');
    await writeFile(tokenFile, 'from-the-file\n');
    const base = ['--once', '--gateway', gw.url, '--host', 'ws', '--gateway-ports', '9'];
    const both = await runCaptured([...base, '--token', 'from-the-flag', '--token-file', tokenFile]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('--token and --token-file both given');
    for (const interval of ['1e3', '0x64', ' 100', '100.0', '']) {
      const r = await runCaptured([...base, '--token', 't', '--interval-ms', interval]);
      expect(r.code, JSON.stringify(interval)).toBe(2);
      expect(r.stderr).toContain(`--interval-ms: must be an integer in 50..3600000, got "${interval}"`);
    }
    expect(gw.posts).toHaveLength(0);
    // Control: the file alone, digits for the interval: the gateway is asked with the file's token.
    const fileOnly = await runCaptured([...base, '--token-file', tokenFile, '--interval-ms', '100']);
    expect(fileOnly.code).toBe(0);
    expect(gw.posts[0]?.headers.authorization).toBe('Bearer from-the-file');
  });

  it('--once exits 1 when the gateway cannot be reached', async () => {
    const { listenerPort } = await heldCurl();
    // A port nobody listens on, below the ephemeral range (no listener started later takes it).
    const deadPort = await closedPort(GATEWAY_IP);
    const res = await runCaptured(['--once', '--gateway', `http://${GATEWAY_IP}:${deadPort}`, '--token', 't', '--interval-ms', '50', '--gateway-ports', String(listenerPort)]);
    expect(res.code).toBe(1);
    expect(JSON.parse(res.stdout.trim())).toMatchObject({ queued: 1, sent: 0, delivered: false });
    expect(res.stderr).toContain('agent-report-failed');
  });
});
