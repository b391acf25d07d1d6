/**
 * A name refused because a policy change came during its lookup still names the local process.
 *
 * In enforce mode a name the roles can never admit is refused unresolved, and that refusal waits for
 * local attribution so its record names the process that asked (local-attribution-refused.test.ts).
 * A reload or mode switch while a name is being looked up refuses it the same way, unresolved, at
 * once (flow-judged-while-looked-up.test.ts): that refusal did not wait, so its record said process
 * null (a CONNECT and a SOCKS5 CONNECT from curl, PUT /v1/policy; a CONNECT, PUT /v1/mode). Now both
 * refusals wait for the attribution, and the records name curl with its pid.
 *
 * DNS answers late (test/helpers/late-dns.ts: `.slow.test` names after LOOKUP_MS); the clients are
 * real curl processes on this host, so /proc names them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { LocalAttributor } from '../../agent/attribution.ts';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import type { Config } from '../../policy/config.ts';
import { ATTRIBUTION_GUARD_MS } from '../helpers/detection-live.ts';
import { adminPut, type DeepPartial, runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type LateDns, startLateDns } from '../helpers/late-dns.ts';

/** How late names answer: a refusal "at once" comes well before it on a loaded machine. */
const LOOKUP_MS = 3000;

let dns: LateDns;

beforeAll(async () => {
  dns = await startLateDns(LOOKUP_MS);
});
afterAll(() => {
  dns?.close();
});

async function gateway(overrides: DeepPartial<Config>, onTestFinished: (fn: () => Promise<void>) => void): Promise<TestGateway> {
  const gw = await startTestGateway(
    { identity: { localAttribution: true }, ...overrides },
    {
      attributor: new LocalAttributor({ timeoutMs: ATTRIBUTION_GUARD_MS }),
      resolver: createDnsResolver({ timeoutMs: 10_000, lookup: dns.lookup, slots: 16, perRequester: 16 }),
    },
  );
  onTestFinished(() => gw.stop());
  return gw;
}

/** curl started (bounded: 10 s of its own, killed at 15 s); its pid and, once its stdout closes, what it wrote. */
function curl(args: string[], onTestFinished: (fn: () => void) => void): { pid: number; out: Promise<string> } {
  const child: ChildProcess = spawn('curl', ['-s', '-o', '/dev/null', '--max-time', '10', ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  onTestFinished(() => {
    clearTimeout(timer);
    child.kill('SIGKILL');
  });
  let text = '';
  child.stdout?.on('data', (c: Buffer) => {
    text += c.toString();
  });
  const out = new Promise<string>((resolve) => {
    child.once('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
  });
  return { pid: child.pid ?? -1, out };
}

const SLOW_NAMES = { any: { allow: [{ host: '*.slow.test' }] } };
const UNRELATED = { any: { allow: [{ host: 'only.example.com' }] } };

describe.concurrent('a name refused unresolved after a change during its lookup (enforce)', () => {
  it('PUT /v1/policy: CONNECT 403 and SOCKS5 refused before the answer; both records name curl with its pid', async ({ expect, onTestFinished }) => {
    const gw = await gateway({ mode: 'enforce', roles: SLOW_NAMES }, onTestFinished);
    const viaConnect = curl(['-p', '-x', `http://${gw.httpHost}:${gw.httpPort}`, '-w', '%{http_connect}', 'http://c1.slow.test:443/'], onTestFinished);
    const viaSocks = curl(['--socks5-hostname', `${gw.socksHost}:${gw.socksPort}`, 'http://s1.slow.test:443/'], onTestFinished);
    await until('both looked up', () => dns.asked.includes('c1.slow.test') && dns.asked.includes('s1.slow.test'), 10_000);
    expect(await adminPut(gw, '/v1/policy', { ...(await runningConfig(gw)), roles: UNRELATED })).toBe(200);
    expect(await viaConnect.out).toBe('403');
    await viaSocks.out;
    // Refused while both names were still being looked up (the refusal after the change, not after the answer).
    expect(dns.answered.filter((n) => n === 'c1.slow.test' || n === 's1.slow.test')).toEqual([]);
    const connect = await gw.waitForClosed((r) => r.destination.host === 'c1.slow.test');
    const socks = await gw.waitForClosed((r) => r.destination.host === 's1.slow.test');
    expect(connect).toMatchObject({ protocol: 'connect', verdict: 'block', reason: 'not-allowlisted', destination: { ip: null } });
    expect(socks).toMatchObject({ protocol: 'socks5', verdict: 'block', reason: 'not-allowlisted', destination: { ip: null } });
    expect([connect.identity.process, socks.identity.process]).toMatchObject([
      { name: 'curl', pid: viaConnect.pid },
      { name: 'curl', pid: viaSocks.pid },
    ]);
  });

  it('PUT /v1/mode enforce over a policy that never admits the name: CONNECT 403, the record names curl with its pid', async ({ expect, onTestFinished }) => {
    const gw = await gateway({ mode: 'monitor', roles: UNRELATED }, onTestFinished);
    const viaConnect = curl(['-p', '-x', `http://${gw.httpHost}:${gw.httpPort}`, '-w', '%{http_connect}', 'http://m1.slow.test:443/'], onTestFinished);
    await until('looked up', () => dns.asked.includes('m1.slow.test'), 10_000);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    expect(await viaConnect.out).toBe('403');
    expect(dns.answered).not.toContain('m1.slow.test');
    const rec = await gw.waitForClosed((r) => r.destination.host === 'm1.slow.test');
    expect(rec).toMatchObject({ verdict: 'block', reason: 'not-allowlisted', destination: { ip: null } });
    expect(rec.identity.process).toMatchObject({ name: 'curl', pid: viaConnect.pid });
  });

  it('for comparison, refused before its lookup: the record names curl with its pid', async ({ expect, onTestFinished }) => {
    const gw = await gateway({ mode: 'enforce', roles: UNRELATED }, onTestFinished);
    const viaConnect = curl(['-p', '-x', `http://${gw.httpHost}:${gw.httpPort}`, '-w', '%{http_connect}', 'http://b1.slow.test:443/'], onTestFinished);
    expect(await viaConnect.out).toBe('403');
    expect(dns.asked).not.toContain('b1.slow.test');
    const rec = await gw.waitForClosed((r) => r.destination.host === 'b1.slow.test');
    expect(rec.identity.process).toMatchObject({ name: 'curl', pid: viaConnect.pid });
  });
});
