/**
 * `egressgate serve` as a process, drained by SIGTERM with admin API clients whose request never
 * comes in full: one stalled mid-head, one mid-body (a policy upload). The admin API answers through
 * the drain (/readyz 503); at the drain's end those connections are closed and the process exits 0.
 * Before, its close waited for them for ever: node checks no header timeout on a closed server and
 * the admin listener has no request timeout, so the process never exited.
 */
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import { loopbackServeConfig, spawnServe } from '../helpers/serve-process.ts';
import { rawConnect, rawExchange, readUntil } from './http-harness.ts';

const TOKEN = 'serve-drain-admin-token-0123456789';
/** Far beyond the test: only the drain's end can close the stalled admin connections. */
const HEADER_TIMEOUT_MS = 300_000;
const GRACE_MS = 120_000;
/** How long the test waits for the exit (without the fix it never came). */
const EXIT_WAIT_MS = 30_000;

const fx = serveEchoFixture('egw-drain-admin-');

/** A connection to the admin listener that has sent `bytes` and nothing more; resolves at its close. */
async function stalledAdmin(admin: string, bytes: string): Promise<{ socket: Socket; closed: Promise<string> }> {
  const socket = await rawConnect(Number(admin.slice(admin.lastIndexOf(':') + 1)), admin.slice(0, admin.lastIndexOf(':')));
  socket.on('error', () => {});
  let got = '';
  socket.on('data', (b: Buffer) => {
    got += b.toString('latin1');
  });
  const closed = new Promise<string>((resolve) => socket.once('close', () => resolve(got)));
  socket.write(bytes);
  return { socket, closed };
}

describe('egressgate serve: SIGTERM with admin requests that never come in full', () => {
  it('a head and a body stalled on the admin listener are closed at the drain end; the flow is recorded; exit 0', async () => {
    const flowLog = join(fx.dir, 'flows.jsonl');
    const configPath = join(fx.dir, 'serve.yaml');
    await writeFile(configPath, `${loopbackServeConfig(flowLog)}limits: { drainGraceMs: ${GRACE_MS}, headerTimeoutMs: ${HEADER_TIMEOUT_MS} }\n`);
    const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    fx.killAfterTest(s);
    const tunnel = await rawConnect(s.http.port);
    tunnel.on('error', () => {});
    tunnel.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
    expect((await readUntil(tunnel, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    tunnel.write('t'.repeat(300));
    await readUntil(tunnel, 't'.repeat(300));

    const midHead = await stalledAdmin(s.admin, 'GET /v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\n');
    const midBody = await stalledAdmin(
      s.admin,
      `PUT /v1/policy HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: text/yaml\r\nContent-Length: 1000\r\n\r\nmode: enf`,
    );
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    // The drain waits on the tunnel; meanwhile the admin API answers, and says it is not ready (once
    // serve has taken the signal: a request sent with it may still be answered ready).
    const adminPort = Number(s.admin.slice(s.admin.lastIndexOf(':') + 1));
    await until('/readyz answering 503 during the drain', async () => {
      const ready = await rawExchange(adminPort, 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
      return /^HTTP\/1\.1 503 /.test(ready.response);
    }, 5000);
    tunnel.end();
    const exit = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), EXIT_WAIT_MS))]);
    expect(exit, 'serve still running after the drain (stalled admin connections held its close)').not.toBeNull();
    expect(exit).toEqual([0, null]);
    // Cut unanswered: neither request was complete.
    expect(await midHead.closed).toBe('');
    expect(await midBody.closed).toBe('');
    const records = parseRecords(await readFile(flowLog, 'utf8'));
    expect(records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn])).toEqual([['connect', 'closed', 300, 300]]);
  }, 60_000);
});
