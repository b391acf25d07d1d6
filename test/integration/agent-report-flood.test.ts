/**
 * Agent reports that wait for their flow, through the real admin API: bounded per agent, by number
 * and bytes, and in all; expired ones purged; what is shed counted (/metrics, the answer) and logged.
 * Regression: the reports kept for flows not yet open were capped at 50,000 entries but not by
 * size, each kept all of its up to ~52,000 characters, and expired ones stayed until evicted: 4,500
 * reports from one agent token took the gateway from 122 to 448 MB, and under a 600 MB heap limit
 * it died.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KEPT_CMDLINE_CHARS, KEPT_NAME_CHARS, KEPT_PATH_CHARS } from '../../gateway/pending-reports.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const FLOOD_TOKEN = 'flood-agent-token-0123456789';
const OTHER_TOKEN = 'other-agent-token-0123456789';
const PER_AGENT_BYTES = 8 * 1024 * 1024;

/** A report as large as the report validator lets through (~52,000 characters). */
function bigReport(localIp: string, localPort: number) {
  return {
    proto: 'tcp',
    localIp,
    localPort,
    remoteIp: '127.0.0.1',
    remotePort: 3128,
    pid: 4242,
    ppid: 1,
    name: 'n'.repeat(1024),
    exe: `/${'e'.repeat(8190)}x`,
    cmdline: 'c'.repeat(32_768),
    user: 'u'.repeat(1024),
    uid: 1000,
    loginuid: 1000,
    parentName: 'p'.repeat(1024),
    parentExe: `/${'q'.repeat(8190)}y`,
    startedAt: null,
  };
}

async function post(gw: TestGateway, token: string, reports: unknown[]): Promise<{ status: number; body: Record<string, number> }> {
  const res = await fetch(`${gw.adminUrl}/v1/agents/reports`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ host: 'ws', reports }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, number> };
}

async function gauge(gw: TestGateway, name: string): Promise<number> {
  const { text } = await adminGet(gw, '/metrics');
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  expect(m, `${name} in /metrics`).not.toBeNull();
  return Number(m![1]);
}

describe('agent reports waiting for their flow are bounded', () => {
  let gw: TestGateway;
  let skewMs = 0;

  beforeAll(async () => {
    gw = await startTestGateway(
      {
        identity: {
          agents: [
            { name: 'flooder', token: FLOOD_TOKEN, sources: ['127.0.0.17/32'] },
            { name: 'other', token: OTHER_TOKEN, sources: ['127.0.0.18/32'] },
          ],
        },
      },
      { now: () => Date.now() + skewMs },
    );
  });

  afterAll(async () => {
    await gw?.stop();
  });

  it('one agent flooding large reports: kept text clipped, its share bounded by bytes, the rest shed, counted and logged; another agent unaffected; expired ones purged', async () => {
    const POSTS = 6;
    const PER_POST = 75;
    let port = 10_000;
    let shed = 0;
    let pending = 0;
    for (let i = 0; i < POSTS; i++) {
      const reports = Array.from({ length: PER_POST }, () => bigReport('127.0.0.17', port++));
      const r = await post(gw, FLOOD_TOKEN, reports);
      expect(r.status).toBe(200);
      expect(r.body['accepted']! + r.body['shed']!).toBe(PER_POST);
      shed += r.body['shed']!;
      pending += r.body['pending']!;
    }
    // Clipped, a report is kept in about 2 × (3 × 256 + 2 × 4096 + 8192) + 256 bytes: ~240 fit in 8 MiB.
    const kept = 2 * (3 * KEPT_NAME_CHARS + 2 * KEPT_PATH_CHARS + KEPT_CMDLINE_CHARS) + 256;
    expect(pending).toBe(Math.floor(PER_AGENT_BYTES / kept));
    expect(shed).toBe(POSTS * PER_POST - pending);
    expect(await gauge(gw, 'gw_agent_reports_pending')).toBe(pending);
    expect(await gauge(gw, 'gw_agent_reports_pending_bytes')).toBeLessThanOrEqual(PER_AGENT_BYTES);
    expect(await gauge(gw, 'gw_agent_reports_shed_total')).toBe(shed);
    expect(gw.logs.some((l) => l.msg === 'agent reports shed: too many waiting for their flows' && l['agent'] === 'flooder')).toBe(true);

    // Another agent's report is kept: the flood used its own share only.
    const other = await post(gw, OTHER_TOKEN, [bigReport('127.0.0.18', 20_000)]);
    expect(other.body).toEqual({ accepted: 1, attributed: 0, pending: 1, shed: 0, ignored: 0, udpRelayPorts: null });

    // 30 s later the flow table has let them expire: counted no more, and the flooder may report again.
    skewMs = 31_000;
    expect(await gauge(gw, 'gw_agent_reports_pending')).toBe(0);
    expect(await gauge(gw, 'gw_agent_reports_pending_bytes')).toBe(0);
    const again = await post(gw, FLOOD_TOKEN, [bigReport('127.0.0.17', port++)]);
    expect(again.body).toEqual({ accepted: 1, attributed: 0, pending: 1, shed: 0, ignored: 0, udpRelayPorts: null });
  }, 60_000);
});
