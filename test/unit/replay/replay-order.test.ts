/**
 * The replay judges a new connection in the gateway's order: policy first (admission.ts decides),
 * then quarantine and the connect-time detectors (its detection hooks). Regression: the replay
 * checked quarantine first, so a quarantined identity's attempts at denied addresses were tallied
 * as quarantine refusals and never counted towards the scan detector, unlike the live gateway.
 */
import { describe, expect, it } from 'vitest';
import { replayConnections } from '../../../gateway/replay/driver.ts';
import type { ConnSpec, ScenarioIdentity } from '../../../gateway/replay/scenario.ts';
import { compilePolicy } from '../../../policy/compile.ts';
import { loadConfig } from '../../../policy/load-config.ts';

const POLICY = `
mode: enforce
roles: { everyone: { allow: [ { host: "*" }, { cidr: 0.0.0.0/0 } ] } }
defaultRoles: [everyone]
`;

const T0 = Date.parse('2026-03-04T11:00:00Z');
const who: ScenarioIdentity = {
  name: 'p',
  host: 'ws1',
  user: 'u',
  roles: null,
  clientIp: '10.1.1.5',
  process: { pid: 4242, name: 'honeygain', exe: '/opt/honeygain/honeygain', cmdline: 'honeygain', user: 'u', uid: 1000, loginuid: 1000, ppid: 1, parentName: 'systemd', parentExe: '/usr/lib/systemd/systemd' },
};

function conn(i: number, host: string, ip: string | null, port: number): ConnSpec {
  return { scenario: 'S', identity: who, startMs: T0 + i * 1000, durationMs: 1000, host, ip, port, protocol: 'connect', bytesOut: 0, bytesIn: 0, outcome: 'ok' };
}

describe('replay: policy before quarantine', () => {
  it("a quarantined identity's attempts at denied addresses are policy refusals, as in the gateway", () => {
    const config = loadConfig(POLICY);
    if (!config.ok) throw new Error(JSON.stringify(config.errors));
    const snapshot = compilePolicy(config.config);
    // A proxyware client: refused by its detector and quarantined; then attempts at the metadata
    // address (deny-range) and at an allowed destination.
    const conns = [conn(0, 'api.honeygain.com', '203.0.113.10', 443), conn(1, '169.254.169.254', '169.254.169.254', 80), conn(2, 'www.example.org', '203.0.113.20', 443)];
    const t = replayConnections(conns, { snapshot }).tallies.get('S');
    expect(t).toMatchObject({ connections: 3, blockedByDetector: 1, blockedByPolicy: 1, blockedByQuarantine: 1 });
  });
});
