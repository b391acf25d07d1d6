/**
 * `POST /v1/agents/reports` refuses a body with more JSON values than 1,000 reports can hold before
 * it is parsed, through a real `serve` and its admin listener. JSON.parse's cost follows the number
 * of values: 4 MiB of `{"reports":[{},{},…]}` (1.4 million objects) held the admin event loop, which
 * the proxies share, for hundreds of milliseconds before the 1,000-report limit was applied, on
 * every request of an agent-scope token.
 *
 * Regression: such a body was parsed whole, then answered 400 `at most 1000 reports per request`;
 * the same objects under an unknown key were parsed and answered 200. Now both are 413
 * `payload-too-large`, unparsed (the answers after a parse would be those), and audited as refused.
 * A batch of 1,000 reports, each with 20 fields more than a report has, is taken as before.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_JSON_VALUES_PER_BATCH } from '../../agent/report.ts';
import { killIfRunning, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

const ADMIN_TOKEN = 'admin-token-value-budget-0123456789';
const AGENT_TOKEN = 'agent-token-value-budget-0123456789';
/** The route's bodyLimit. */
const BODY_LIMIT = 4 * 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'egw-agent-budget-'));
let served: Served | null = null;

beforeAll(async () => {
  const path = join(dir, 'serve.yaml');
  writeFileSync(path, `${loopbackServeConfig('-')}identity:\n  localAttribution: false\n  agents: [ { name: a1, token: ${AGENT_TOKEN}, sources: [127.0.0.0/8] } ]\n`.replace('identity: { localAttribution: false }\n', ''));
  served = await spawnServe(path, { env: { EGRESSGATE_ADMIN_TOKEN: ADMIN_TOKEN, EGRESSGATE_CONFIG: undefined } });
}, 120_000);

afterAll(async () => {
  await killIfRunning(served?.child ?? null);
  rmSync(dir, { recursive: true, force: true });
});

function adminUrl(path: string): string {
  return `http://${(served as Served).admin}${path}`;
}

async function post(body: string): Promise<{ status: number; answer: { error?: string; message?: string; accepted?: number } }> {
  const res = await fetch(adminUrl('/v1/agents/reports'), { method: 'POST', headers: { authorization: `Bearer ${AGENT_TOKEN}`, 'content-type': 'application/json' }, body });
  return { status: res.status, answer: (await res.json()) as { error?: string; message?: string; accepted?: number } };
}

/** `prefix`, then `unit` repeated to fill the route's bodyLimit (its trailing comma dropped), then `suffix`. */
function filled(prefix: string, unit: string, suffix: string): string {
  const n = Math.floor((BODY_LIMIT - prefix.length - suffix.length) / unit.length);
  return `${prefix}${unit.repeat(n).slice(0, -1)}${suffix}`;
}

function report(i: number, extraFields: number): Record<string, unknown> {
  const r: Record<string, unknown> = {
    proto: 'tcp',
    localIp: '127.0.0.1',
    localPort: 1 + i,
    remoteIp: '127.0.0.1',
    remotePort: 8080,
    pid: 1234,
    ppid: 1,
    name: 'curl',
    exe: '/usr/bin/curl',
    cmdline: 'curl http://example.test/',
    user: 'alice',
    uid: 1000,
    loginuid: 1000,
    parentName: 'bash',
    parentExe: '/bin/bash',
    startedAt: null,
  };
  for (let f = 0; f < extraFields; f++) r[`newerField${f}`] = f;
  return r;
}

describe('an agent report body with more values than 1,000 reports hold', () => {
  it.each([
    ['reports: [{},{},…] to the body limit', filled('{"host":"ws","reports":[', '{},', ']}')],
    ['an unknown key holding [{},{},…] to the body limit', filled('{"host":"ws","reports":[],"pad":[', '{},', ']}')],
    ['an unknown key holding [0,0,…] to the body limit', filled('{"host":"ws","reports":[],"pad":[', '0,', ']}')],
  ])('%s: 413 payload-too-large, refused before it is parsed', async (_name, body) => {
    expect(body.length).toBeLessThanOrEqual(BODY_LIMIT);
    const { status, answer } = await post(body);
    expect(status).toBe(413);
    expect(answer.error).toBe('payload-too-large');
    expect(answer.message).toContain(`at most ${MAX_JSON_VALUES_PER_BATCH}`);
  });

  it('is audited as a refused write', async () => {
    await post(filled('{"host":"ws","reports":[', '{},', ']}'));
    const res = await fetch(adminUrl('/v1/audit?limit=1'), { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const { entries } = (await res.json()) as { entries: Array<Record<string, unknown>> };
    expect(entries.at(-1)).toMatchObject({ actor: 'a1', route: '/v1/agents/reports', status: 413, detail: `body refused unparsed: more than ${MAX_JSON_VALUES_PER_BATCH} JSON values` });
  });
});

describe('bodies within the budget (controls)', () => {
  it('1,000 reports, each with 20 fields a newer agent might add, are taken', async () => {
    const reports = Array.from({ length: 1000 }, (_, i) => report(i, 20));
    const { status, answer } = await post(JSON.stringify({ host: 'ws', reports }));
    expect(status).toBe(200);
    expect(answer.accepted).toBe(1000);
  });

  it('1,001 reports are still refused by the report limit, after parsing', async () => {
    const reports = Array.from({ length: 1001 }, (_, i) => report(i, 0));
    const { status, answer } = await post(JSON.stringify({ host: 'ws', reports }));
    expect(status).toBe(400);
    expect(JSON.stringify(answer)).toContain('at most 1000 reports per request');
  });
});
