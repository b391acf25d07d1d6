/**
 * SPEC §7 / issue 4: a flow that no agent ever attributes, from a host that has an agent, is a
 * signal in itself — the record says `unattributed: true`. Driven with an injected clock and
 * explicit sweeps over the real FlowTable, PolicyStore and detection engine.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AlertStore } from '../../../gateway/alerts/alert-store.ts';
import type { Logger } from '../../../gateway/context.ts';
import { createDetectionEngine, type DetectionEngine } from '../../../gateway/detection/detection-engine.ts';
import type { FlowRecord } from '../../../gateway/flow/flow.ts';
import { FlowTable } from '../../../gateway/flow/flow-table.ts';
import { PolicyStore } from '../../../gateway/policy-store.ts';
import type { Alert } from '../../../policy/detectors/types.ts';

const silent: Logger = { info: () => {}, warn: () => {}, error: () => {} };
let engine: DetectionEngine | null = null;
afterEach(async () => {
  await engine?.close();
  engine = null;
});

async function setup() {
  const clock = { t: Date.UTC(2026, 10, 25, 12) };
  const written: FlowRecord[] = [];
  const flows = new FlowTable({ sink: { write: (r) => written.push(r), flush: async () => {} }, now: () => clock.t, interimSec: 0 });
  const policy = new PolicyStore(
    'mode: monitor\nidentity:\n  agents:\n    - { name: ws-17, token: "agent-token-0123456789", sources: [10.2.3.17/32, "fd00:1::/64"] }\n',
  );
  engine = await createDetectionEngine({ flows, policy, alerts: new AlertStore<Alert>({}), log: silent, statePath: null });
  const open = (ip: string, port: number) => {
    const f = flows.open({
      protocol: 'connect',
      listener: 'http',
      client: { ip, port },
      identity: { user: null, host: null, roles: [], process: null },
      destination: { host: 'example.test', ip: '203.0.113.5', port: 443 },
    });
    flows.markConnected(f);
    return f;
  };
  return { clock, flows, written, open };
}

const curl = { pid: 7, name: 'curl', exe: '/usr/bin/curl', cmdline: 'curl x', user: 'bob', uid: 1000, loginuid: 1000, ppid: 1, parentName: 'bash', parentExe: '/bin/bash' };

describe('unattributed flows from hosts with an agent', () => {
  it('marks a live flow the agent never reported, after the grace period only', async () => {
    const { clock, flows, written, open } = await setup();
    const f = open('10.2.3.17', 40000);
    clock.t += 5000;
    flows.sweep();
    expect(f.isUnattributed).toBe(false);
    clock.t += 6000;
    flows.sweep();
    expect(f.isUnattributed).toBe(true);
    flows.close(f, 'closed');
    expect(written.at(-1)).toMatchObject({ id: f.id, unattributed: true });
  });

  it('does not mark attributed flows, hosts without an agent, or IPv4-mapped clients wrongly', async () => {
    const { clock, flows, written, open } = await setup();
    const attributed = open('10.2.3.17', 40001);
    flows.attribute('10.2.3.17', 40001, 'tcp', curl);
    const noAgent = open('10.2.3.18', 40002);
    const mapped = open('::ffff:10.2.3.17', 40003);
    const v6 = open('fd00:1::9', 40004);
    clock.t += 11_000;
    flows.sweep();
    for (const f of [attributed, noAgent, mapped, v6]) flows.close(f, 'closed');
    const byId = new Map(written.map((r) => [r.id, r]));
    expect(byId.get(attributed.id)?.unattributed).toBeUndefined();
    expect(byId.get(noAgent.id)?.unattributed).toBeUndefined();
    expect(byId.get(mapped.id)?.unattributed).toBe(true);
    expect(byId.get(v6.id)?.unattributed).toBe(true);
  });
});
