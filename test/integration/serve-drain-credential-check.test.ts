/**
 * `egressgate serve` drained (SIGTERM) while credential checks are under way: a CONNECT whose
 * Proxy-Authorization the per-source failure throttle holds, and a SOCKS5 RFC 1929 login it holds.
 * Neither has a flow yet (a flow opens once its identity is known), but each is a request the
 * gateway took before the signal: the drain waits for the checks within its grace, so the CONNECT
 * gets 503 `shutting-down` and the refused login its status 0x01, each with one record.
 * Regression: the drain saw no live flow and ended at once; both connections were closed with no
 * answer, the process exited 0 and neither had a record.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';
import { startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const TOKEN = 'serve-drain-credential-check-token-0123';
/** The source whose failed logins the throttle slows (the other clients of the host are not). */
const GUESSER = '127.0.0.2';
/** Failures past the throttle's free 5: the next check from GUESSER waits 250 ms · 2³ = 2 s. */
const FAILURES = 8;

let dir: string;
let origin: TcpOrigin;
let child: ChildProcess | null = null;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-drain-credentials-'));
  origin = await startTcpOrigin();
});
afterAll(async () => {
  await killIfRunning(child);
  await origin.close();
  await rm(dir, { recursive: true, force: true });
});

/** Connect from GUESSER, send `bytes`, and collect what the gateway sends until it closes (bounded). */
async function exchange(port: number, bytes: Buffer | string): Promise<{ port: number; answer: Promise<Buffer> }> {
  const s = connect({ host: '127.0.0.1', port, localAddress: GUESSER });
  s.on('error', () => {});
  await once(s, 'connect');
  const chunks: Buffer[] = [];
  s.on('data', (b: Buffer) => chunks.push(b));
  const timer = setTimeout(() => s.destroy(), 30_000);
  const answer = once(s, 'close').then(() => {
    clearTimeout(timer);
    return Buffer.concat(chunks);
  });
  s.write(bytes);
  return { port: s.localPort as number, answer };
}

function connectHead(password: string): string {
  const auth = Buffer.from(`alice:${password}`).toString('base64');
  return `CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`;
}

/** A SOCKS5 greeting offering username/password, and the RFC 1929 login after it. */
function socksLogin(password: string): Buffer {
  const u = Buffer.from('alice');
  const p = Buffer.from(password);
  return Buffer.concat([Buffer.from([0x05, 0x01, 0x02, 0x01, u.length]), u, Buffer.from([p.length]), p]);
}

/** gw_identity_auth_throttled_total: checks the per-source throttle has begun to delay. */
async function throttled(s: Served): Promise<number> {
  const res = await fetch(`http://${s.admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  const m = /^gw_identity_auth_throttled_total (\d+)$/m.exec(await res.text());
  return Number(m?.[1] ?? -1);
}

describe('serve: SIGTERM while credential checks are under way', () => {
  it('waits for them: the CONNECT gets 503 shutting-down, the SOCKS5 login 0x01, each one record', async () => {
    const flowLog = join(dir, 'flows.jsonl');
    const config = join(dir, 'gw.yaml');
    await writeFile(
      config,
      `
mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity:
  localAttribution: false
  requireAuth: true
  users: [ { name: alice, password: right-pw, roles: [any] } ]
flowLog: { path: ${JSON.stringify(flowLog)} }
limits: { drainGraceMs: 60000 }
`,
    );
    const s = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    child = s.child;
    for (let i = 0; i < FAILURES; i++) {
      const { answer } = await exchange(s.http.port, connectHead('wrong-pw'));
      expect((await answer).toString('latin1')).toMatch(/^HTTP\/1\.1 407 /);
    }
    const before = await throttled(s);
    const http = await exchange(s.http.port, connectHead('right-pw'));
    const socks = await exchange(Number(s.socks.slice(s.socks.lastIndexOf(':') + 1)), socksLogin('wrong-pw'));
    // Both checks are held by the throttle now (bounded wait for the counter, no sleep).
    for (let i = 0; i < 400 && (await throttled(s)) < before + 2; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await throttled(s)).toBe(before + 2);

    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    const httpAnswer = (await http.answer).toString('latin1');
    expect(httpAnswer).toMatch(/^HTTP\/1\.1 503 /);
    expect(httpAnswer).toContain('"reason":"shutting-down"');
    // The method choice (username/password), then RFC 1929's failure status.
    expect((await socks.answer).toString('hex')).toBe('05020101');
    expect((await exited)[0]).toBe(0);

    const records = parseRecords(await readFile(flowLog, 'utf8'));
    expect(new Set(records.map((r) => r.id)).size).toBe(records.length);
    // One per request: the refused guesses, the CONNECT and the login (one line each, no other).
    expect(records).toHaveLength(FAILURES + 2);
    const connect = records.filter((r) => r.identity.user === 'alice');
    expect(connect).toHaveLength(1);
    expect(connect[0]).toMatchObject({ protocol: 'connect', client: { port: http.port }, identity: { user: 'alice' }, destination: { port: origin.port }, verdict: 'block', closeReason: 'shutting-down', bytesOut: 0, bytesIn: 0 });
    const login = records.filter((r) => r.protocol === 'socks5');
    expect(login).toHaveLength(1);
    expect(login[0]).toMatchObject({ client: { port: socks.port }, identity: { user: null }, verdict: 'block', closeReason: 'auth-required' });
    expect(origin.done.length).toBe(0);
  }, 60_000);
});
