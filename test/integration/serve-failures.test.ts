/**
 * `egressgate serve` as a process, when something goes wrong inside it:
 *  - a bug escapes every handler (a thrown exception, an unhandled rejection — injected by a
 *    preloaded module on SIGUSR2, test/fixtures/fault-on-signal.mjs): the live tunnel is closed with
 *    closeReason "gateway-error" and its exact byte counts reach the flow log, the error is logged,
 *    and the process exits 1 for its supervisor to restart it;
 *  - the flow log is stdout and the reader of that pipe goes away (EPIPE): the gateway stays up,
 *    refuses new flows (503 flow-log-unavailable), says why on stderr, and drains on SIGTERM;
 *  - SIGHUP when the config file cannot be read: the running policy stays, the gateway serves on;
 *  - SIGHUP after the flow log and audit log files were moved away (rotation): records go to new files.
 */
import { once } from 'node:events';
import { readFile, rename, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import { CLI, loopbackServeConfig, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';
import { type Origin, rawConnect, readUntil, run, startOrigin } from './http-harness.ts';

const FAULT = join(ROOT, 'test', 'fixtures', 'fault-on-signal.mjs');
const TOKEN = 'serve-failures-token-0123456789';

const fx = serveEchoFixture('egw-serve-fail-');
let origin: Origin;

beforeAll(async () => {
  origin = await startOrigin();
});
afterAll(async () => {
  await origin.close();
});

/** Start `serve` with `policyText` and extra env; resolves at the listening line. */
async function serve(name: string, policyText: string, env: NodeJS.ProcessEnv = {}): Promise<Served> {
  const configPath = join(fx.dir, `${name}.yaml`);
  await writeFile(configPath, policyText);
  const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN, ...env } });
  fx.killAfterTest(s);
  return s;
}

/** A CONNECT tunnel to the echo origin through `s`, with `payload` sent and echoed back. */
async function echoTunnel(s: Served, payload: string): Promise<Socket> {
  const tunnel = await rawConnect(s.http.port);
  tunnel.on('error', () => {});
  tunnel.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
  expect((await readUntil(tunnel, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  tunnel.write(payload);
  await readUntil(tunnel, payload);
  return tunnel;
}

function logLines(stderr: string): Array<Record<string, unknown>> {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('egressgate serve: a fatal error records the live flows before the process exits', () => {
  for (const [fault, origin, message] of [
    ['throw', 'uncaughtException', 'injected fault'],
    ['reject', 'unhandledRejection', 'injected rejection'],
  ] as const) {
    it(`${origin}: the live tunnel's record (gateway-error, exact bytes) is in the flow log; exit 1`, async () => {
      const flowLog = join(fx.dir, `fatal-${fault}.jsonl`);
      const s = await serve(`fatal-${fault}`, loopbackServeConfig(flowLog), { NODE_OPTIONS: `--import=${FAULT}`, EGW_TEST_FAULT: fault });
      const tunnel = await echoTunnel(s, 'x'.repeat(100));
      const exited = once(s.child, 'exit');
      // (events.once would reject on the reset's 'error': wait for 'close' alone.)
      const tunnelClosed = new Promise((r) => tunnel.once('close', r));
      s.child.kill('SIGUSR2');
      const [code] = (await exited) as [number | null];
      await tunnelClosed;
      expect(code).toBe(1);
      const fatal = logLines(s.stderr()).find((l) => l.msg === 'fatal error: recording live flows and exiting');
      expect(fatal).toMatchObject({ level: 'error', origin });
      expect(String(fatal?.err)).toContain(message);
      const records = parseRecords(await readFile(flowLog, 'utf8'));
      expect(records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn, r.destination.port])).toEqual([['connect', 'gateway-error', 100, 100, fx.echo.port]]);
    }, 60_000);
  }
});

describe('egressgate serve: a fatal error during a SIGTERM drain', () => {
  it('cuts the grace period short: the tunnel still waiting is recorded as gateway-error, exit 1 at once', async () => {
    const flowLog = join(fx.dir, 'fatal-draining.jsonl');
    const s = await serve('fatal-draining', loopbackServeConfig(flowLog, 60_000), { NODE_OPTIONS: `--import=${FAULT}`, EGW_TEST_FAULT: 'throw' });
    await echoTunnel(s, 'y'.repeat(10));
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    // The drain waits for the tunnel (up to 60 s); the fault comes while it waits.
    await new Promise((r) => setTimeout(r, 300));
    const faultAt = Date.now();
    s.child.kill('SIGUSR2');
    const [code] = (await exited) as [number | null];
    expect(code).toBe(1);
    expect(Date.now() - faultAt).toBeLessThan(4000);
    const records = parseRecords(await readFile(flowLog, 'utf8'));
    expect(records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn])).toEqual([['connect', 'gateway-error', 10, 10]]);
  }, 60_000);
});

describe('egressgate serve: the flow log is stdout and its reader goes away', () => {
  it('stays up, refuses new flows with 503 flow-log-unavailable, says why, and drains on SIGTERM', async () => {
    const s = await serve('stdout-epipe', loopbackServeConfig('-'));
    // Close our end of the gateway's stdout: its next write gets EPIPE.
    s.child.stdout?.destroy();
    const first = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-x', `http://${s.http.host}:${s.http.port}`, `http://127.0.0.1:${origin.port}/size/10`]);
    expect(first.stdout.toString()).toBe('200');
    const deadline = Date.now() + 10_000;
    while (!s.stderr().includes('flow log write failed')) {
      if (Date.now() > deadline) throw new Error(`no failure logged: ${s.stderr()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(logLines(s.stderr()).find((l) => l.code === 'EPIPE')).toMatchObject({ level: 'error', path: '-', onError: 'refuse' });
    expect(String(logLines(s.stderr()).find((l) => l.code === 'EPIPE')?.msg)).toContain('until the gateway is restarted');
    // A CONNECT now: refused with the reason, the gateway still serving.
    const tunnel = await rawConnect(s.http.port);
    tunnel.on('error', () => {});
    tunnel.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
    const answer = (await readUntil(tunnel, '}')).toString('latin1');
    expect(answer).toMatch(/^HTTP\/1\.1 503 /);
    expect(answer).toContain('"reason":"flow-log-unavailable"');
    tunnel.destroy();
    expect(s.child.exitCode).toBeNull();
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    const [code] = (await exited) as [number | null];
    expect(code).toBe(0);
    expect(logLines(s.stderr()).find((l) => l.msg === 'flow log still failing at shutdown: records not written')).toMatchObject({ path: '-', records: 2 });
  }, 60_000);
});

async function curlStatus(s: Served, path: string): Promise<string> {
  const r = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-x', `http://${s.http.host}:${s.http.port}`, `http://127.0.0.1:${origin.port}${path}`]);
  return r.stdout.toString();
}

async function untilLogged(s: Served, msg: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const hit = logLines(s.stderr()).find((l) => l.msg === msg);
    if (hit) return hit;
    if (Date.now() > deadline) throw new Error(`not logged: ${msg}; exit ${s.child.exitCode} ${s.child.signalCode}; stderr: ${s.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}


describe('egressgate serve: SIGHUP', () => {
  it('with the config file gone: the reload fails with the reason, the running policy stays, the gateway serves on', async () => {
    const s = await serve('hup-missing', loopbackServeConfig(join(fx.dir, 'hup-missing.jsonl')));
    await rename(join(fx.dir, 'hup-missing.yaml'), join(fx.dir, 'hup-missing.yaml.moved'));
    s.child.kill('SIGHUP');
    const warned = await untilLogged(s, 'policy reload failed; the running policy is unchanged');
    expect(JSON.stringify(warned.errors)).toContain('cannot read');
    expect(s.child.exitCode).toBeNull();
    expect(await curlStatus(s, '/size/5')).toBe('200');
  }, 60_000);

  it('after the flow log and the audit log were moved away (log rotation): later records go to new files at their paths', async () => {
    const flowLog = join(fx.dir, 'rotate.jsonl');
    const auditLog = `${flowLog}.audit.jsonl`;
    const s = await serve('rotate', loopbackServeConfig(flowLog));
    const setMode = async (mode: string): Promise<number> =>
      (await fetch(`http://${s.admin}/v1/mode`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ mode }) })).status;
    expect(await setMode('monitor')).toBe(200);
    expect(await curlStatus(s, '/size/1')).toBe('200');
    const deadline = Date.now() + 5000;
    while (!(await readFile(flowLog, 'utf8')).includes('"bytesIn":1,')) {
      if (Date.now() > deadline) throw new Error('first record not written');
      await new Promise((r) => setTimeout(r, 20));
    }
    await rename(flowLog, `${flowLog}.1`);
    await rename(auditLog, `${auditLog}.1`);
    s.child.kill('SIGHUP');
    await untilLogged(s, 'flow log reopened');
    await untilLogged(s, 'audit log reopened');
    expect(await curlStatus(s, '/size/2')).toBe('200');
    expect(await setMode('enforce')).toBe(200);
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
    expect(parseRecords(await readFile(`${flowLog}.1`, 'utf8')).map((r) => r.bytesIn)).toEqual([1]);
    expect(parseRecords(await readFile(flowLog, 'utf8')).map((r) => r.bytesIn)).toEqual([2]);
    const modes = async (path: string): Promise<string[]> =>
      (await readFile(path, 'utf8'))
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => String((JSON.parse(l) as { detail?: string }).detail));
    expect((await modes(`${auditLog}.1`)).join()).toContain('monitor');
    expect((await modes(auditLog)).join()).toContain('enforce');
  }, 60_000);
  // Regression: every SIGHUP (logrotate's postrotate) made a new policy version of an unchanged file,
  // pushing real versions out of the 20 kept for rollback; rotation had no signal that left the
  // policy alone, so it also put the file back over a policy pushed through the API.
  it('an unchanged config file makes no new version; SIGUSR2 reopens the logs and leaves a pushed policy serving', async () => {
    const flowLog = join(fx.dir, 'hup-same.jsonl');
    const configPath = join(fx.dir, 'hup-same.yaml');
    const text = loopbackServeConfig(flowLog);
    const s = await serve('hup-same', text);
    const auth = { authorization: `Bearer ${TOKEN}` };
    const history = async (): Promise<{ current: number; sources: string[] }> => {
      const h = (await (await fetch(`http://${s.admin}/v1/policy/history`, { headers: auth })).json()) as {
        current: number;
        versions: Array<{ source: string }>;
      };
      return { current: h.current, sources: h.versions.map((v) => v.source) };
    };
    const logged = (msg: string): number => logLines(s.stderr()).filter((l) => l.msg === msg).length;
    const untilCount = async (msg: string, n: number): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while (logged(msg) < n) {
        if (Date.now() > deadline) throw new Error(`not logged ${n}×: ${msg}; stderr: ${s.stderr()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    expect(await history()).toEqual({ current: 1, sources: ['file'] });

    for (const n of [1, 2]) {
      s.child.kill('SIGHUP');
      await untilCount('config file unchanged; the running policy stays', n);
    }
    expect(await history()).toEqual({ current: 1, sources: ['file'] });

    // An edited file is still a new version, once.
    await writeFile(configPath, `${text}\n# edited\n`);
    s.child.kill('SIGHUP');
    await untilCount('policy reloaded', 1);
    s.child.kill('SIGHUP');
    await untilCount('config file unchanged; the running policy stays', 3);
    expect(await history()).toEqual({ current: 2, sources: ['file', 'file'] });

    // A policy pushed through the API survives rotation by SIGUSR2, which still reopens the logs.
    const put = await fetch(`http://${s.admin}/v1/policy`, {
      method: 'PUT',
      headers: { ...auth, 'content-type': 'application/yaml' },
      body: `${text}\n# pushed\n`,
    });
    expect(put.status).toBe(200);
    expect(await curlStatus(s, '/size/3')).toBe('200');
    const deadline = Date.now() + 5000;
    while (!(await readFile(flowLog, 'utf8').catch(() => '')).includes('"bytesIn":3,')) {
      if (Date.now() > deadline) throw new Error('first record not written');
      await new Promise((r) => setTimeout(r, 20));
    }
    await rename(flowLog, `${flowLog}.1`);
    s.child.kill('SIGUSR2');
    await untilLogged(s, 'flow log reopened');
    expect(await curlStatus(s, '/size/4')).toBe('200');
    expect(await history()).toEqual({ current: 3, sources: ['api', 'file', 'file'] });
    expect(logged('policy reloaded')).toBe(1);

    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
    expect(parseRecords(await readFile(`${flowLog}.1`, 'utf8')).map((r) => r.bytesIn)).toEqual([3]);
    expect(parseRecords(await readFile(flowLog, 'utf8')).map((r) => r.bytesIn)).toEqual([4]);
  }, 60_000);
});

// Regression: with the admin address taken, serve printed EADDRINUSE but its HTTP and SOCKS listeners
// were bound already and kept the process alive and proxying: no admin API (no emergency brake), no
// readiness, no listening line, and Restart=on-failure never fired.
describe('a start that fails half-way', () => {
  it('exits 1 and says why, leaving no listener behind', async () => {
    const { createServer } = await import('node:net');
    const { spawn } = await import('node:child_process');
    const taken = createServer();
    taken.listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const adminPort = (taken.address() as { port: number }).port;
    const configPath = join(fx.dir, 'half.yaml');
    await writeFile(configPath, 'flowLog: { path: null }\n');
    const c = spawn(process.execPath, [CLI, 'serve', '--config', configPath, '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', `127.0.0.1:${adminPort}`], {
      cwd: ROOT,
      env: { ...process.env, EGRESSGATE_ADMIN_TOKEN: TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let stdout = '';
    c.stderr?.on('data', (b: Buffer) => {
      stderr += b.toString('utf8');
    });
    c.stdout?.on('data', (b: Buffer) => {
      stdout += b.toString('utf8');
    });
    const timer = setTimeout(() => c.kill('SIGKILL'), 20_000);
    const [code, signal] = (await once(c, 'close')) as [number | null, string | null];
    clearTimeout(timer);
    taken.close();
    expect(signal).toBeNull();
    expect(code).toBe(1);
    expect(stderr).toMatch(/cannot start: .*EADDRINUSE/);
    expect(stdout).not.toContain('"listening"');
  }, 30_000);
});
