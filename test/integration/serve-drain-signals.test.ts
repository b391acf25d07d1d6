/**
 * `egressgate serve` as a process, signalled again while it drains: a second SIGTERM or SIGINT (a
 * supervisor that escalates, Ctrl-C twice) ends the grace period at once, and every flow still live
 * gets its record (`shutdown`, exact bytes) before the process exits 0. Node's default for the
 * second signal killed it mid-drain, and those flows had no record. Also: the grace period is the
 * running policy's limits.drainGraceMs (a reload changes it), and a drain whose flow log file cannot
 * be written waits within that grace for it to take the records it holds.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile, rename, symlink, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import { loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';
import { rawConnect, readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

const TOKEN = 'serve-drain-signals-token-0123456789';
/** Long enough that only the second signal can end the drain within the test. */
const GRACE_MS = 120_000;

const fx = serveEchoFixture('egw-drain-signals-');

/** A CONNECT tunnel to the echo origin with `payload` sent and echoed back. */
async function connectTunnel(s: Served, payload: string): Promise<Socket> {
  const t = await rawConnect(s.http.port);
  t.on('error', () => {});
  t.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
  expect((await readUntil(t, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  t.write(payload);
  await readUntil(t, payload);
  return t;
}

/** A SOCKS5 CONNECT (no auth) to the echo origin with `payload` sent and echoed back. */
async function socksTunnel(s: Served, payload: string): Promise<Socket> {
  const [host, port] = [s.socks.slice(0, s.socks.lastIndexOf(':')), Number(s.socks.slice(s.socks.lastIndexOf(':') + 1))];
  const t = await rawConnect(port, host);
  t.on('error', () => {});
  t.write(Buffer.from([5, 1, 0]));
  expect([...(await readBytes(t, 2))]).toEqual([5, 0]);
  t.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, fx.echo.port >> 8, fx.echo.port & 255]));
  expect((await readBytes(t, 10))[1]).toBe(0);
  t.write(payload);
  await readUntil(t, payload);
  return t;
}

/** Whether a new connection to the HTTP listener is refused (the drain has closed it). Bounded. */
async function waitUntilRefused(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const refused = await new Promise<boolean>((resolve) => {
      const c = connect({ port, host: '127.0.0.1' });
      c.once('connect', () => {
        c.destroy();
        resolve(false);
      });
      c.once('error', () => resolve(true));
    });
    if (refused) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the listener still accepts');
}

describe('egressgate serve: a second stop signal during the drain', () => {
  for (const [first, second] of [
    ['SIGTERM', 'SIGTERM'],
    ['SIGINT', 'SIGINT'],
    ['SIGTERM', 'SIGINT'],
  ] as const) {
    it(`${first} then ${second}: the grace ends, each live tunnel is recorded shutdown with its bytes, the log is flushed, exit 0`, async () => {
      const flowLog = join(fx.dir, `${first}-${second}.jsonl`);
      const configPath = join(fx.dir, `${first}-${second}.yaml`);
      await writeFile(configPath, loopbackServeConfig(flowLog, GRACE_MS));
      const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
      fx.killAfterTest(s);
      const tunnels = [await connectTunnel(s, 'c'.repeat(300)), await socksTunnel(s, 's'.repeat(500))];
      const closed = tunnels.map((t) => new Promise((r) => t.once('close', r)));
      const exited = once(s.child, 'exit');
      s.child.kill(first);
      // The drain has begun (the listener is closed) and waits on both tunnels for up to GRACE_MS.
      await waitUntilRefused(s.http.port);
      s.child.kill(second);
      const [code, signal] = (await exited) as [number | null, string | null];
      await Promise.all(closed);
      expect({ code, signal }).toEqual({ code: 0, signal: null });
      const records = parseRecords(await readFile(flowLog, 'utf8'));
      expect(records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn]).sort()).toEqual([
        ['connect', 'shutdown', 300, 300],
        ['socks5', 'shutdown', 500, 500],
      ]);
      expect(s.stderr()).toContain('stop signal during the drain: ending the grace period now');
    }, 60_000);
  }
});

describe('egressgate serve: a reload that changes limits.drainGraceMs', () => {
  it('SIGHUP from a 120 s grace to 1 s, then SIGTERM: the drain waits 1 s, the live tunnel is recorded shutdown with its bytes, exit 0', async () => {
    const flowLog = join(fx.dir, 'grace-reload.jsonl');
    const configPath = join(fx.dir, 'grace-reload.yaml');
    await writeFile(configPath, loopbackServeConfig(flowLog, GRACE_MS));
    const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    fx.killAfterTest(s);
    const reloaded = new Promise<void>((resolve) => {
      const onData = (b: Buffer): void => {
        if (b.toString('utf8').includes('policy reloaded')) {
          s.child.stderr?.off('data', onData);
          resolve();
        }
      };
      s.child.stderr?.on('data', onData);
    });
    await writeFile(configPath, loopbackServeConfig(flowLog, 1000));
    s.child.kill('SIGHUP');
    await reloaded;
    const tunnel = await connectTunnel(s, 'g'.repeat(200));
    const closed = new Promise((r) => tunnel.once('close', r));
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    // With the grace read from the startup config the drain would wait GRACE_MS, past this test's timeout.
    const [code] = (await exited) as [number | null];
    await closed;
    expect(code).toBe(0);
    const records = parseRecords(await readFile(flowLog, 'utf8'));
    expect(records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn])).toEqual([['connect', 'shutdown', 200, 200]]);
  }, 30_000);
});

/** Resolves at the first stderr line of `c` that contains `text`; rejects if the process exits first. */
function stderrLine(c: ChildProcess, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onExit = (code: number | null): void => reject(new Error(`exited (${code}) before ${JSON.stringify(text)}`));
    const onData = (b: Buffer): void => {
      buf += b.toString('utf8');
      if (!buf.includes(text)) return;
      c.stderr?.off('data', onData);
      c.off('exit', onExit);
      resolve();
    };
    c.stderr?.on('data', onData);
    c.once('exit', onExit);
  });
}

describe('egressgate serve: SIGTERM while the flow log file cannot be written', () => {
  it('the drain waits within its grace for the log to take the records it holds, then writes them and exits 0', async () => {
    // The path is a symlink to /dev/full (every write ENOSPC) until a regular file replaces it.
    const flowLog = join(fx.dir, 'full.jsonl');
    await symlink('/dev/full', flowLog);
    const configPath = join(fx.dir, 'full.yaml');
    await writeFile(configPath, `${loopbackServeConfig(flowLog, GRACE_MS).replace(/flowLog: \{ path: ("[^"]*") \}/, 'flowLog: { path: $1, onError: admit }')}`);
    const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    fx.killAfterTest(s);
    const failed = stderrLine(s.child, 'flow log write failed');
    const tunnel = await connectTunnel(s, 'f'.repeat(100));
    const closed = new Promise((r) => tunnel.once('close', r));
    tunnel.end();
    await closed;
    await failed;
    const exited = once(s.child, 'exit');
    const waiting = stderrLine(s.child, 'draining: waiting for the flow log to take the records it holds');
    s.child.kill('SIGTERM');
    await waiting;
    await writeFile(`${flowLog}.new`, '');
    await rename(`${flowLog}.new`, flowLog);
    const [code] = (await exited) as [number | null];
    expect(code).toBe(0);
    const records = parseRecords(await readFile(flowLog, 'utf8'));
    expect(records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn])).toEqual([['connect', 'closed', 100, 100]]);
    expect(s.stderr()).not.toContain('records not written');
  }, 60_000);
});
