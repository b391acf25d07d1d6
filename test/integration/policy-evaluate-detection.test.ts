/**
 * `POST /v1/policy/evaluate` judges a described connection as admission does: the policy, then the
 * quarantine and the connect-time detectors (SPEC §6; gateway/detection/dry-run.ts), through the
 * real admin listener of a running gateway.
 *
 * Regression: the dry run ran only the allow lists. A proxyware client (`honeygain` to
 * api.honeygain.com) evaluated to allow while the gateway refused it at admission (enforce) or
 * recorded it would-block (monitor); a scanner (nmap) and an exfil tool (rclone to an IP literal)
 * the same; and an identity quarantined after a real refusal evaluated to allow while its next
 * CONNECT was refused `quarantine`.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DetectionEngine } from '../../gateway/detection/detection-engine.ts';
import { identityKeyOf } from '../../policy/detectors/match.ts';
import type { Config } from '../../policy/config.ts';
import { type TcpOrigin, echoOrigin, echoRoundTrip, httpConnect } from '../helpers/detection-live.ts';
import { type DeepPartial, type TestGateway, startTestGateway } from '../helpers/gateway.ts';

const CLIENT_IP = '127.0.0.6';

interface Evaluated {
  verdict: string;
  reason: string;
  detector: string | null;
  mode: string;
  matchedRule: { role: string; index: number } | null;
  reasons: string[];
  findings: Array<{ detector: string; analytic: string; severity: string; action: string; evidence: Record<string, unknown>; reasons: string[] }>;
  detectors: {
    state: string;
    judged: string[];
    skipped: Array<{ detector: string; why: string }>;
    notJudged: string[];
    quarantinedUntil: string | null;
    notes: string[];
  };
}

let origin: TcpOrigin;
let gw: TestGateway | null = null;

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
});
afterAll(async () => {
  await origin?.close();
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});

/** A gateway whose provider and ordinary names resolve (resolver.hosts) to the loopback echo origin. */
function start(overrides: DeepPartial<Config> = {}): Promise<TestGateway> {
  return startTestGateway({
    mode: 'enforce',
    resolver: { hosts: { 'api.honeygain.com': '127.0.0.1', 'ok.example.test': '127.0.0.1' } },
    detection: { sampleIntervalMs: 50, quarantineSec: 600 },
    ...overrides,
  });
}

/** The running gateway's detection engine (its quarantine and detector state). */
const engineOf = (g: TestGateway): DetectionEngine => g.ctx.detection as DetectionEngine;

async function evaluate(g: TestGateway, body: Record<string, string>): Promise<Evaluated> {
  const res = await fetch(`${g.adminUrl}/v1/policy/evaluate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${g.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as Evaluated;
}

describe('POST /v1/policy/evaluate runs the connect-time detectors', () => {
  it('enforce: a proxyware client is block an0081.proxyware, as its real CONNECT is; an ordinary process is allow', async () => {
    gw = await start();
    const dest = `api.honeygain.com:${origin.port}`;
    const pw = await evaluate(gw, { dest, process: 'honeygain', source: CLIENT_IP });
    expect(pw).toMatchObject({ verdict: 'block', reason: 'detector', detector: 'an0081.proxyware', mode: 'enforce', matchedRule: { role: 'any' } });
    expect(pw.reasons[0]).toContain('process honeygain is on the proxyware list');
    expect(pw.findings).toEqual([
      expect.objectContaining({ detector: 'an0081.proxyware', analytic: 'AN0081', action: 'block', evidence: { process: 'honeygain', providerDomain: 'honeygain.com' } }),
    ]);
    expect(pw.detectors).toMatchObject({
      state: 'live',
      judged: ['an0081.proxyware', 'an0081.scanner-tool', 'an0080.exfil-tool', 'an0080.lineage'],
      skipped: [],
      quarantinedUntil: null,
    });
    expect(pw.detectors.notJudged).toEqual(expect.arrayContaining(['an0081.scan', 'an0081.proxyjack', 'an0080.bulk-upload']));
    const [scanner, exfil, ordinary] = await Promise.all([
      evaluate(gw, { dest: `ok.example.test:${origin.port}`, process: 'nmap', source: CLIENT_IP }),
      evaluate(gw, { dest: `127.0.0.1:${origin.port}`, process: 'rclone', source: CLIENT_IP }),
      evaluate(gw, { dest: `ok.example.test:${origin.port}`, process: 'curl', source: CLIENT_IP }),
    ]);
    expect(scanner).toMatchObject({ verdict: 'block', reason: 'detector', detector: 'an0081.scanner-tool' });
    expect(exfil).toMatchObject({ verdict: 'block', reason: 'detector', detector: 'an0080.exfil-tool' });
    expect(ordinary).toMatchObject({ verdict: 'allow', reason: 'allowed', detector: null, findings: [] });

    // The gateway itself: the provider domain alone is refused at admission by the same detector.
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, dest, { localAddress: '127.0.0.5' });
    expect(a.status).toBe(403);
    expect(JSON.parse(a.body)).toMatchObject({ reason: 'an0081.proxyware' });
    expect(await evaluate(gw, { dest, source: '127.0.0.8' })).toMatchObject({ verdict: 'block', detector: 'an0081.proxyware' });
  });

  it('evaluating changes nothing: no alert, no quarantine, no corroboration, the real CONNECT still passes', async () => {
    gw = await start();
    for (let i = 0; i < 5; i++) {
      expect(await evaluate(gw, { dest: `api.honeygain.com:${origin.port}`, process: 'honeygain', source: CLIENT_IP })).toMatchObject({ verdict: 'block' });
    }
    expect(gw.alerts.list()).toEqual([]);
    const detection = engineOf(gw);
    expect([...detection.quarantine.keys()]).toEqual([]);
    const key = identityKeyOf({ user: null, host: null, roles: [], process: { pid: 0, name: 'honeygain' } as never }, CLIENT_IP);
    expect(detection.state.recentDetectors(key, Date.now())).toEqual([]);
    expect(await evaluate(gw, { dest: `ok.example.test:${origin.port}`, source: CLIENT_IP })).toMatchObject({ verdict: 'allow', detectors: { quarantinedUntil: null } });
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `ok.example.test:${origin.port}`, { localAddress: CLIENT_IP });
    expect(a.status).toBe(200);
    await echoRoundTrip(a.socket, Buffer.from('still admitted'));
    a.socket.destroy();
  });

  it('monitor: would-block with a would-block finding', async () => {
    gw = await start({ mode: 'monitor' });
    const r = await evaluate(gw, { dest: `api.honeygain.com:${origin.port}`, process: 'honeygain', source: CLIENT_IP });
    expect(r).toMatchObject({ verdict: 'would-block', reason: 'detector', detector: 'an0081.proxyware', mode: 'monitor' });
    expect(r.findings).toEqual([expect.objectContaining({ detector: 'an0081.proxyware', action: 'would-block' })]);
  });

  it('a disabled detector, or an exception for the process, is skipped: allow', async () => {
    gw = await start({ detection: { detectors: { 'an0081.proxyware': { enabled: false } } } });
    const disabled = await evaluate(gw, { dest: `api.honeygain.com:${origin.port}`, process: 'honeygain', source: CLIENT_IP });
    expect(disabled).toMatchObject({ verdict: 'allow', reason: 'allowed', detector: null, findings: [] });
    expect(disabled.detectors.skipped).toEqual([{ detector: 'an0081.proxyware', why: 'disabled' }]);
    expect(disabled.detectors.judged).not.toContain('an0081.proxyware');
    await gw.stop();
    gw = await start({ exceptions: [{ process: ['honeygain'], detectors: ['an0081.proxyware'] }] });
    const excepted = await evaluate(gw, { dest: `ok.example.test:${origin.port}`, process: 'honeygain', source: CLIENT_IP });
    expect(excepted).toMatchObject({ verdict: 'allow', reason: 'allowed', detector: null, findings: [] });
    expect(excepted.detectors.skipped).toEqual([{ detector: 'an0081.proxyware', why: 'exception' }]);
    // The exception names the process: another proxyware client is still refused.
    expect(await evaluate(gw, { dest: `ok.example.test:${origin.port}`, process: 'earnapp', source: CLIENT_IP })).toMatchObject({
      verdict: 'block',
      detector: 'an0081.proxyware',
    });
  });

  it('an identity quarantined by a real refusal is block quarantine; another source is allow', async () => {
    gw = await start();
    const dest = `ok.example.test:${origin.port}`;
    expect(await evaluate(gw, { dest, source: CLIENT_IP })).toMatchObject({ verdict: 'allow' });
    // The provider domain alone refuses the CONNECT and quarantines 127.0.0.6 (no user, no process known).
    const refused = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `api.honeygain.com:${origin.port}`, { localAddress: CLIENT_IP });
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.body)).toMatchObject({ reason: 'an0081.proxyware' });
    const until = engineOf(gw).quarantine.get(`${CLIENT_IP}|-|-`)?.untilMs;
    expect(until).toBeGreaterThan(Date.now());

    const q = await evaluate(gw, { dest, source: CLIENT_IP, process: 'curl' });
    expect(q).toMatchObject({ verdict: 'block', reason: 'quarantine', detector: 'quarantine', findings: [] });
    expect(q.detectors.quarantinedUntil).toBe(new Date(until!).toISOString());
    expect(await evaluate(gw, { dest, source: '127.0.0.9' })).toMatchObject({ verdict: 'allow', detectors: { quarantinedUntil: null } });
    // The gateway agrees: the next CONNECT from that source is refused quarantine, from another passes.
    const next = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, dest, { localAddress: CLIENT_IP });
    expect(next.status).toBe(403);
    expect(JSON.parse(next.body)).toMatchObject({ reason: 'quarantine' });
    const other = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, dest, { localAddress: '127.0.0.9' });
    expect(other.status).toBe(200);
    other.socket.destroy();
    // Evaluating left the quarantine as it was.
    expect(engineOf(gw).quarantine.get(`${CLIENT_IP}|-|-`)?.untilMs).toBe(until);
  });
});
