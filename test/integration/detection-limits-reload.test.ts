/**
 * `detection.maxTrackedIdentities` and `maxTrackedDestinations` size the detectors' tables when
 * their state is made, at start: a push that changes them is taken for everything else and warned
 * of as waiting for a restart (docs/spec-notes.md, "Settings read at start only"), as a moved
 * `flowLog.path` is. Real gateway, the policy pushed through the admin API.
 *
 * Regression: such a push was answered 200, GET /v1/policy showed the new sizes, and nothing said
 * the running tables kept the start's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestGateway, adminPut, runningConfig, startTestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway();
});
afterAll(async () => {
  await gw?.stop();
});

const RESTART = 'these settings apply at the next restart; the running gateway keeps its listeners, logs and state where they are';

describe("the detectors' table sizes in a push", () => {
  it('are named in the restart warning; a push back to the running sizes warns of nothing', async () => {
    const config = await runningConfig(gw);
    const detection = config['detection'] as Record<string, unknown>;
    expect(await adminPut(gw, '/v1/policy', { ...config, detection: { ...detection, maxTrackedIdentities: 16, maxTrackedDestinations: 16 } })).toBe(200);
    const warned = gw.logs.filter((l) => l.msg === RESTART);
    expect(warned.map((l) => l['settings'])).toEqual([['detection.maxTrackedIdentities', 'detection.maxTrackedDestinations']]);
    expect(await adminPut(gw, '/v1/policy', config)).toBe(200);
    expect(gw.logs.filter((l) => l.msg === RESTART)).toHaveLength(1);
  });
});
