/**
 * The detection tests connect clients whose processes an agent report names before their CONNECTs
 * (test/helpers/detection-live.ts connectsReportedAhead). They took every source port first (bound
 * on port 0, then closed) and bound each later: the kernel picks such a port at random among the
 * free ones, so two picks could be one port, and the second client bound to it (libuv sets
 * SO_REUSEADDR) was the first's 4-tuple to the gateway: connect failed EADDRNOTAVAIL (a clean-clone
 * CI run, detection-proxyjack: 127.0.0.5:41389 to the gateway's 127.0.0.1:41463). Rare with the
 * host's range (32768-60999); here, in a network namespace of its own whose range is narrowed to 16
 * ports (test/helpers/reported-ports-child.ts), the old way completed 1 of 30 rounds (5 runs of 6).
 * Each client now connects first, from a port the kernel picked and the connection holds, and
 * the report names it before the CONNECT is sent: every round connects, the report still waits for
 * its flows (pending) and every record names the reported process.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { skipNotice } from '../helpers/skip-notice.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const ROUNDS = 6;
const CLIENTS = 4;

function unshareWorks(): string {
  if (process.platform !== 'linux') return `platform is ${process.platform}, not linux`;
  if (process.getuid?.() !== 0) return 'not running as root';
  const probe = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up && echo "40001 40016" > /proc/sys/net/ipv4/ip_local_port_range'], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  return probe.status === 0 ? '' : `unshare -n failed: ${(probe.stderr ?? '').trim() || String(probe.error)}`;
}
const why = unshareWorks();
const available = skipNotice(why === '', 'reported-source-ports (a network namespace of its own)', why);

describe.runIf(available)('clients reported ahead, the kernel short of source ports', () => {
  it(`${ROUNDS} rounds of ${CLIENTS} reported-ahead CONNECTs from one address each: all connect, reports pending, records name the process`, () => {
    const child = spawnSync(
      'unshare',
      ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx test/helpers/reported-ports-child.ts`],
      { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, REPORTED_ROUNDS: String(ROUNDS) } },
    );
    expect(child.status, child.stderr).toBe(0);
    const got = JSON.parse(child.stdout.trim().split('\n').pop() ?? '{}') as { rounds: Array<{ report: unknown; answers: string[]; named: Array<string | null> }> };
    const want = {
      report: { accepted: CLIENTS, attributed: 0, pending: CLIENTS, shed: 0, ignored: 0, udpRelayPorts: null },
      answers: Array.from({ length: CLIENTS }, () => '200'),
      named: Array.from({ length: CLIENTS }, () => 'relayd'),
    };
    expect(got.rounds).toEqual(Array.from({ length: ROUNDS }, () => want));
  });
});
