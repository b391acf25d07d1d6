/**
 * What a policy validation leaves behind (policy/text-memo.ts): the parse memos of CIDRs, host
 * patterns and time zones keep no text longer than a valid one could be, so validations with long
 * texts, which a read token may send, leave nothing of them in memory.
 *
 * Regression: the memos kept every text they met, with its error message. Through the real admin
 * listener, 100 validations of a read token each naming a 500,000-character time zone left ~100 MB
 * on the heap for the process's life (a bogus CIDR the same); the time zone memo had no bound at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { textMemoStats } from '../../policy/text-memo.ts';
import { runningConfig, startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const READ_TOKEN = 'read-token-validate-memo-0123456';
const LONG = 100_000;
/** The longest text each memo may keep: a little over the longest valid one. */
const BOUNDS: Readonly<Record<string, number>> = { cidr: 64, 'host pattern': 300, 'time zone': 64 };

let gw: TestGateway;
let config: Record<string, unknown>;

beforeAll(async () => {
  gw = await startTestGateway({ admin: { tokens: [{ name: 'soc', token: READ_TOKEN, scope: 'read' }] } });
  config = await runningConfig(gw);
});

afterAll(async () => {
  await gw?.stop();
});

/** POST /v1/policy/validate as the read token: the answer's body. */
async function validate(draft: Record<string, unknown>): Promise<{ valid: boolean; errors: Array<{ path: string; message: string }> }> {
  const res = await fetch(`${gw.adminUrl}/v1/policy/validate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${READ_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(draft),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as { valid: boolean; errors: Array<{ path: string; message: string }> };
}

describe('policy validations and the parse memos', () => {
  it('long time zones, CIDRs and host patterns are judged as before and none is kept', async () => {
    for (let i = 0; i < 5; i++) {
      const filler = `${i}-${'x'.repeat(LONG)}`;
      const zone = await validate({ ...config, schedule: { ...(config['schedule'] as object), timezone: `Nowhere/${filler}` } });
      expect(zone.valid).toBe(false);
      expect(zone.errors[0]?.path).toBe('schedule.timezone');
      const cidr = await validate({ ...config, roles: { any: { allow: [{ cidr: `10.0.0.0/${filler}` }] } } });
      expect(cidr.valid).toBe(false);
      expect(cidr.errors[0]?.path).toBe('roles.any.allow[0].cidr');
      await validate({ ...config, roles: { any: { allow: [{ host: `${filler}.example` }] } } });
    }
    // Short valid texts are still kept (the memos still serve reloads).
    expect((await validate({ ...config, schedule: { ...(config['schedule'] as object), timezone: 'Europe/Berlin' } })).valid).toBe(true);
    const stats = textMemoStats();
    expect(stats.map((s) => s.name).sort()).toEqual(Object.keys(BOUNDS).sort());
    for (const s of stats) {
      expect(s.longestText, s.name).toBeLessThanOrEqual(BOUNDS[s.name] as number);
      expect(s.entries, s.name).toBeGreaterThan(0);
    }
  });
});
