/**
 * End to end through the real `egressgate serve` process: a CONNECT tunnel to a local origin shows
 * up in GET /v1/flows, DELETE /v1/flows/:id kills it, the client's socket closes, and the record
 * says closeReason "admin".
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { missingNodeFlags, nodeFlagsWarning } from '../../gateway/node-flags.ts';
import { CLI, killIfRunning } from '../helpers/serve-process.ts';

const TOKEN = 'e2e-admin-token-0123456789';
const ROOT = join(import.meta.dirname, '..', '..');

const POLICY = `
mode: monitor
allowRanges: [127.0.0.0/8]
roles:
  loopback:
    allow: [ { cidr: 127.0.0.0/8 } ]
defaultRoles: [loopback]
identity: { localAttribution: false }
flowLog: { path: null }
resolver:
  hosts: { "honeygain.com": 127.0.0.1 }
detection: { sampleIntervalMs: 100 }
`;

interface Listening {
  http: string;
  admin: string;
}

/** Read the child's stdout until the listening line (or its exit). */
function waitListening(child: ChildProcess, stderr: () => string): Promise<Listening> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString('utf8');
      for (const line of buf.split('\n')) {
        if (!line.includes('"listening"')) continue;
        child.stdout?.off('data', onData);
        child.off('exit', onExit);
        resolve(JSON.parse(line) as Listening);
        return;
      }
    };
    const onExit = (code: number | null): void => reject(new Error(`serve exited (${code}) before listening: ${stderr()}`));
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
}

function split(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(addr.slice(i + 1)) };
}

async function api(admin: string, method: string, path: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`http://${admin}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}` } });
  return { status: res.status, body: await res.json() };
}

/** Open the alert stream and resolve with the first `event: alert` frame's data. */
function firstStreamedAlert(admin: string, opened: () => void): { alert: Promise<Record<string, unknown>>; close: () => void } {
  const { host, port } = split(admin);
  const req = request({ host, port, path: '/v1/alerts/stream', headers: { authorization: `Bearer ${TOKEN}` } });
  const alert = new Promise<Record<string, unknown>>((resolve, reject) => {
    req.on('response', (res) => {
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk: string) => {
        if (buf === '') opened();
        buf += chunk;
        const m = /event: alert\ndata: (.*)\n\n/.exec(buf);
        if (m?.[1]) resolve(JSON.parse(m[1]) as Record<string, unknown>);
      });
      res.on('close', () => reject(new Error(`stream closed: ${buf}`)));
    });
    req.on('error', reject);
  });
  alert.catch(() => {});
  req.end();
  return { alert, close: () => req.destroy() };
}

/** Open a CONNECT tunnel and resolve once the proxy answered 200. */
async function openTunnel(proxy: { host: string; port: number }, target: string): Promise<Socket> {
  const sock = connect(proxy);
  await once(sock, 'connect');
  sock.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  let head = '';
  while (!head.includes('\r\n\r\n')) {
    const [chunk] = (await once(sock, 'data')) as [Buffer];
    head += chunk.toString('latin1');
  }
  if (!/^HTTP\/1\.[01] 200/.test(head)) throw new Error(`CONNECT refused: ${head.split('\r\n')[0]}`);
  return sock;
}

describe('egressgate serve: kill a live tunnel through the admin API', () => {
  let dir: string;
  let child: ChildProcess;
  let origin: Server;
  let listening: Listening;
  let stderr = '';
  const sockets: Socket[] = [];

  beforeAll(async () => {
    origin = createServer((s) => {
      sockets.push(s);
      s.on('error', () => {});
      s.pipe(s);
    });
    origin.listen(0, '127.0.0.1');
    await once(origin, 'listening');
    dir = await mkdtemp(join(tmpdir(), 'egw-e2e-'));
    const configPath = join(dir, 'policy.yaml');
    await writeFile(configPath, POLICY);
    child = spawn(
      process.execPath,
      [CLI, 'serve', '--config', configPath, '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
      { cwd: ROOT, env: { ...process.env, EGRESSGATE_ADMIN_TOKEN: TOKEN }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
    });
    listening = await waitListening(child, () => stderr);
  }, 90_000);

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    origin?.close();
    await killIfRunning(child ?? null, 'SIGTERM');
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 30_000);

  it('says at start when node 24 runs it without the gateway\'s node flags (this spawn has none), and sets only V8 flags this node knows', async () => {
    const expected = nodeFlagsWarning(process.versions.node, missingNodeFlags([], process.env['NODE_OPTIONS'] ?? ''));
    // Written to stderr before the listening line goes to stdout; the two pipes are read independently.
    if (expected !== null) await vi.waitFor(() => expect(stderr).toContain(`egressgate: ${expected}`), { timeout: 5000 });
    else expect(stderr).not.toContain('node was started without');
    // serve's run-time V8 flags (gateway/node-flags.ts) are ones this node's V8 knows: V8 says so on
    // stderr otherwise (node 20 has no --invocation-count-for-turbofan).
    expect(stderr).not.toMatch(/unrecognized flag/i);
  });

  it('finds the tunnel in GET /v1/flows, kills it with DELETE, and the client socket closes', async () => {
    const target = `127.0.0.1:${(origin.address() as { port: number }).port}`;
    const tunnel = await openTunnel(split(listening.http), target);
    sockets.push(tunnel);
    tunnel.on('error', () => {});
    // The tunnel carries bytes both ways before the kill.
    tunnel.write('ping');
    const [echo] = (await once(tunnel, 'data')) as [Buffer];
    expect(echo.toString()).toBe('ping');

    const list = await api(listening.admin, 'GET', '/v1/flows?state=active');
    expect(list.status).toBe(200);
    const flows = (list.body as { flows: Array<{ id: string; protocol: string; client: { port: number }; destination: { port: number } }> }).flows;
    const flow = flows.find((f) => f.client.port === tunnel.localPort);
    expect(flow).toBeDefined();
    expect(flow).toMatchObject({ protocol: 'connect', destination: { port: split(target).port } });

    const closed = new Promise<void>((resolve) => tunnel.once('close', () => resolve()));
    const del = await api(listening.admin, 'DELETE', `/v1/flows/${flow?.id}`);
    expect(del.status).toBe(200);
    await closed;
    expect(tunnel.destroyed).toBe(true);

    const after = await api(listening.admin, 'GET', `/v1/flows/${flow?.id}`);
    expect(after.body).toMatchObject({ id: flow?.id, state: 'closed', closeReason: 'admin' });
    const again = await api(listening.admin, 'DELETE', `/v1/flows/${flow?.id}`);
    expect(again.status).toBe(404);
    const audit = await api(listening.admin, 'GET', '/v1/audit');
    expect((audit.body as { entries: unknown[] }).entries[1]).toMatchObject({ actor: 'env', method: 'DELETE', status: 200 });
  });

  it('an SSE client receives the alert a connection raises', async () => {
    let markOpen: () => void = () => {};
    const opened = new Promise<void>((resolve) => {
      markOpen = resolve;
    });
    const stream = firstStreamedAlert(listening.admin, () => markOpen());
    try {
      await opened;
      // A proxyware provider domain is flagged at connect time, whatever answers there.
      const target = `honeygain.com:${(origin.address() as { port: number }).port}`;
      const sock = connect(split(listening.http));
      sockets.push(sock);
      sock.on('error', () => {});
      await once(sock, 'connect');
      sock.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
      const alert = await stream.alert;
      expect(alert).toMatchObject({ detector: 'an0081.proxyware', analytic: 'AN0081' });
      const listed = await api(listening.admin, 'GET', '/v1/alerts?detector=an0081.proxyware');
      expect((listed.body as { alerts: Array<{ id: string }> }).alerts.map((a) => a.id)).toContain(alert['id']);
    } finally {
      stream.close();
    }
  });
});
