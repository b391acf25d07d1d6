/**
 * `POST /v1/policy/validate` takes only the read scope, and parsed and compiled its draft on the
 * event loop the proxy and SOCKS listeners run on, as often as asked: four read-token clients posting
 * a 1 MB policy in a loop held a CONNECT echo's answers back up to 849 ms (p50 631 ms). Now a read
 * token's validations run one at a time, each after k times the last one's time, and a caller with no
 * place in the small queue is refused 429 with Retry-After, in SPEC §6's error shape
 * (admin/validate-budget.ts). An admin token's validation does not wait. Through the real listener;
 * statuses and counts only, nothing about speed.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const READ_TOKEN = 'read-token-validate-budget-0123';
/** Concurrent validations of one read token: more than the queue holds (3 per token, 8 in all). */
const BURST = 16;
let gw: TestGateway;

/** A valid policy of about 1 MB (under the admin API's 1 MiB body limit): one role, many host rules. */
function bigPolicy(): string {
  const allow: { host: string; ports: number[] }[] = [];
  let text = '';
  for (let i = 0; i < 40_000; i++) {
    allow.push({ host: `h${i}.example${i % 97}.com`, ports: [443] });
    if (i % 500 !== 499) continue;
    const next = JSON.stringify({ mode: 'enforce', roles: { big: { allow } }, defaultRoles: ['big'] });
    if (next.length > 1_000_000) break;
    text = next;
  }
  return text;
}
const POLICY = bigPolicy();

beforeAll(async () => {
  gw = await startTestGateway({ admin: { tokens: [{ name: 'soc', token: READ_TOKEN, scope: 'read' }] } });
});

afterAll(async () => {
  await gw?.stop();
});

interface Answer {
  status: number;
  retryAfter: string | null;
  json: Record<string, unknown>;
}

async function validate(token: string, body: string): Promise<Answer> {
  const res = await fetch(`${gw.adminUrl}/v1/policy/validate`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body });
  return { status: res.status, retryAfter: res.headers.get('retry-after'), json: (await res.json()) as Record<string, unknown> };
}

/** gw_admin_validate_refused_total from /metrics. */
async function refusedMetric(): Promise<number> {
  const { text } = await adminGet(gw, '/metrics');
  const m = /^gw_admin_validate_refused_total (\d+)$/m.exec(text);
  if (!m) throw new Error('gw_admin_validate_refused_total not in /metrics');
  return Number(m[1]);
}

/** A validation with the read token, retried after each 429's Retry-After (at most 20 times). */
async function validateWhenLetIn(body: string): Promise<Answer> {
  for (let i = 0; ; i++) {
    const a = await validate(READ_TOKEN, body);
    if (a.status !== 429 || i >= 20) return a;
    await sleep(Number(a.retryAfter) * 1000);
  }
}

describe('POST /v1/policy/validate under a read token', () => {
  it('a single validation is answered as before', async () => {
    expect(POLICY.length).toBeGreaterThan(900_000);
    const ok = await validateWhenLetIn(POLICY);
    expect(ok.status).toBe(200);
    expect(ok.json).toMatchObject({ valid: true, summary: 'valid: mode enforce, 1 role(s), 0 user(s), 0 host(s)', errors: [] });
    const bad = await validateWhenLetIn(JSON.stringify({ mode: 'sometimes' }));
    expect(bad.status).toBe(200);
    expect(bad.json).toMatchObject({ valid: false, errors: [{ path: 'mode' }] });
  });

  it('a burst gets some 429s with Retry-After and correct answers for the rest; an admin token does not wait', async () => {
    const refusedBefore = await refusedMetric();
    const reads = Array.from({ length: BURST }, () => validate(READ_TOKEN, POLICY));
    const admin = validate(gw.adminToken, POLICY);
    const answers = await Promise.all(reads);
    const refused = answers.filter((a) => a.status === 429);
    const answered = answers.filter((a) => a.status === 200);
    expect(refused.length + answered.length).toBe(BURST);
    expect(refused.length).toBeGreaterThan(0);
    expect(answered.length).toBeGreaterThan(0);
    for (const a of refused) {
      expect(a.retryAfter).toMatch(/^[1-9][0-9]*$/);
      expect(a.json).toEqual({ error: 'too-many-requests', message: expect.any(String) });
    }
    for (const a of answered) expect(a.json).toMatchObject({ valid: true, errors: [] });
    // Each 429 is counted, whether refused before its body was read or once it was.
    expect((await refusedMetric()) - refusedBefore).toBe(refused.length);
    const adminAnswer = await admin;
    expect(adminAnswer.status).toBe(200);
    expect(adminAnswer.json).toMatchObject({ valid: true });

    // Once the queue has drained, the read token is answered again.
    const after = await validateWhenLetIn(POLICY);
    expect(after.status).toBe(200);
    expect(after.json).toMatchObject({ valid: true });
  });
});
