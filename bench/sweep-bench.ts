/**
 * Detector sweep cost at scale:
 * `node --import tsx bench/sweep-bench.ts [--flows 10000] [--sweeps 50] [--churn 0]`.
 *
 * Opens N live flows in a real FlowTable (spread over 500 identities and 2,000 destinations, bytes
 * growing every sweep), hangs the real detection engine off it with the SPEC §3 detector defaults,
 * and times `flows.sweep()` (activity sampling + interim records + evaluateSweep + actions) over a
 * bounded number of sweeps on a virtual clock. `--churn C` also opens and closes C short flows of
 * one identity before each sweep (a busy client: the sweep then folds C ended flows into the
 * detector state, whose bounded maps fill and evict). Prints p50 / p99 / max in ms and one JSON line.
 */
import { parseArgs } from 'node:util';
import { AlertStore } from '../gateway/alerts/alert-store.ts';
import { createDetectionEngine } from '../gateway/detection/detection-engine.ts';
import { FlowTable } from '../gateway/flow/flow-table.ts';
import { PolicyStore } from '../gateway/policy-store.ts';
import { defaultConfig } from '../policy/config.ts';
import type { Alert } from '../policy/detectors/types.ts';

const { values } = parseArgs({
  options: { flows: { type: 'string', default: '10000' }, sweeps: { type: 'string', default: '50' }, churn: { type: 'string', default: '0' } },
});
const N = Math.min(50_000, Math.max(1, Number(values.flows)));
const SWEEPS = Math.min(1000, Math.max(1, Number(values.sweeps)));
const CHURN = Math.min(50_000, Math.max(0, Number(values.churn) || 0));

const clock = { t: Date.UTC(2026, 10, 25, 10) };
const flows = new FlowTable({ sink: { write: () => {}, flush: async () => {} }, now: () => clock.t, interimSec: 60 });
const config = defaultConfig();
config.mode = 'monitor';
const policy = new PolicyStore(config);
const alerts = new AlertStore<Alert>({ keep: 10_000 });
const silent = { info: () => {}, warn: () => {}, error: () => {} };
const engine = await createDetectionEngine({ flows, policy, alerts, log: silent, statePath: null });

const procs = ['curl', 'wget', 'python3', 'node', 'git', 'apt'];
const live = [];
for (let i = 0; i < N; i++) {
  const who = i % 500;
  const f = flows.open({
    protocol: i % 3 === 0 ? 'socks5' : 'connect',
    listener: i % 3 === 0 ? 'socks' : 'http',
    client: { ip: `10.${(who >> 8) & 255}.${who & 255}.${1 + (i % 200)}`, port: 20000 + (i % 40000) },
    identity: {
      user: `user${who}`,
      host: `ws-${who}`,
      roles: [],
      process: { pid: 1000 + i, name: procs[i % procs.length] as string, exe: null, cmdline: null, user: `user${who}`, uid: 1000, loginuid: 1000, ppid: 1, parentName: 'bash', parentExe: '/bin/bash' },
    },
    destination: { host: `d${i % 2000}.example.net`, ip: `203.0.${(i % 2000) >> 8}.${i % 256}`, port: 443 },
  });
  flows.setDestinationIp(f, f.destination.ip as string);
  flows.markConnected(f);
  live.push(f);
}

const times: number[] = [];
for (let s = 0; s < SWEEPS; s++) {
  clock.t += 1000;
  for (let i = 0; i < live.length; i++) {
    const f = live[i];
    if (!f) continue;
    f.bytesOut += 1000 + (i % 7) * 100;
    f.bytesIn += 5000 + (i % 5) * 1000;
  }
  for (let i = 0; i < CHURN; i++) {
    const f = flows.open({
      protocol: 'http',
      listener: 'http',
      client: { ip: '10.9.9.9', port: 1024 + ((s * CHURN + i) % 60000) },
      identity: { user: null, host: null, roles: [], process: null },
      destination: { host: 'busy.example.org', ip: '203.0.113.80', port: 80 },
    });
    flows.setDestinationIp(f, '203.0.113.80');
    flows.markConnected(f);
    f.bytesOut += 200;
    f.bytesIn += 1024;
    flows.close(f, 'closed');
  }
  const t0 = performance.now();
  flows.sweep();
  times.push(performance.now() - t0);
}
await engine.close();
times.sort((a, b) => a - b);
const pick = (q: number): number => Number((times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? 0).toFixed(2));
const result = { flows: N, sweeps: SWEEPS, churn: CHURN, p50_ms: pick(0.5), p99_ms: pick(0.99), max_ms: pick(1), alerts: alerts.size, active: flows.activeCount };
console.log(`| live flows | sweeps | churn per sweep | p50 ms | p99 ms | max ms | alerts |\n|---|---|---|---|---|---|---|\n| ${N} | ${SWEEPS} | ${CHURN} | ${result.p50_ms} | ${result.p99_ms} | ${result.max_ms} | ${result.alerts} |`);
console.log(JSON.stringify(result));
