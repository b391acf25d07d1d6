/**
 * The detection state's saves to `state.path` run one at a time: a save asked for while one runs
 * runs once after it, with the newest state, so the file is always one whole JSON document. Driven
 * with explicit sweeps (each a periodic save, persistEveryMs 0) and stops over the real FlowTable,
 * PolicyStore and detection engine, on the real file system.
 *
 * Regression: a save waited only for the write already running, so the saves asked for during it
 * all started together when it ended, writing the same temp file in parallel: in each round below,
 * 14 or 15 renames found the temp file already renamed (`could not persist detection state`, ENOENT).
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AlertStore } from '../../../gateway/alerts/alert-store.ts';
import type { Logger } from '../../../gateway/context.ts';
import { createDetectionEngine } from '../../../gateway/detection/detection-engine.ts';
import { FlowTable } from '../../../gateway/flow/flow-table.ts';
import { PolicyStore } from '../../../gateway/policy-store.ts';
import type { Alert } from '../../../policy/detectors/types.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-state-saves-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Baselines {
  version: number;
  firstSeen: Array<[string, number]>;
}

describe('detection state saves', () => {
  it.each([1, 2, 3])('a burst of saves and a stop leave one whole JSON file with the newest state (round %i)', async (round) => {
    const path = join(dir, `state-${round}.json`);
    const warnings: Array<Record<string, unknown>> = [];
    const log: Logger = { info: () => {}, warn: (obj) => warnings.push(obj), error: (obj) => warnings.push(obj) };
    const clock = { t: Date.UTC(2026, 10, 25, 12) };
    const flows = new FlowTable({ sink: { write: () => {}, flush: async () => {} }, now: () => clock.t, interimSec: 0 });
    const policy = new PolicyStore('mode: monitor\n');
    const engine = await createDetectionEngine({ flows, policy, alerts: new AlertStore<Alert>({}), log, statePath: path, persistEveryMs: 0 });
    let hosts = 0;
    /** `n` flows to new destinations: each a first-seen entry, so each save writes more than the last. */
    const visit = (n: number): void => {
      for (let i = 0; i < n; i++) {
        hosts++;
        const f = flows.open({
          protocol: 'connect',
          listener: 'http',
          client: { ip: '10.0.0.7', port: 40000 + (hosts % 20000) },
          identity: { user: 'alice', host: null, roles: [], process: null },
          destination: { host: `dest-${hosts}.test`, ip: '203.0.113.5', port: 443 },
        });
        flows.markConnected(f);
        flows.close(f, 'closed');
      }
    };
    // Bounded: 5 bursts of 3 sweeps (each asks for a save) over a growing state.
    for (let burst = 0; burst < 5; burst++) {
      for (let sweep = 0; sweep < 3; sweep++) {
        visit(400);
        clock.t += 1000;
        flows.sweep();
      }
      // Let the running write get on, so the next burst asks while it is mid-way.
      await new Promise((r) => setImmediate(r));
    }
    visit(400);
    // A stop's save over the periodic ones still running, and a second stop.
    await Promise.all([engine.close(), engine.close()]);
    expect(warnings).toEqual([]);
    const saved = JSON.parse(readFileSync(path, 'utf8')) as Baselines;
    expect(saved.version).toBe(1);
    // The last save had every destination: nothing older overwrote it.
    expect(saved.firstSeen.length).toBe(hosts);
    expect(saved).toEqual(engine.state.toJSON());
    // No temp file left behind.
    expect(readdirSync(dir).filter((f) => f.startsWith(`state-${round}.json.`))).toEqual([]);
  });
});
