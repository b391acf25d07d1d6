/**
 * The gateway out of local ports is its own shortage, not the destinations' failure. In a network
 * namespace of its own (`unshare -n`, so the host's port range is untouched), a real gateway's
 * ephemeral port range is narrowed to one port after it started (test/helpers/port-shortage-child.ts):
 * each of 18 loopback origins takes one CONNECT, held open, and a second CONNECT to each fails its
 * dial with EADDRNOTAVAIL. Those must answer 503 `out-of-sockets`, be recorded so, be logged once
 * (EGW_OUT_OF_SOCKETS), and raise no an0081.scan. Before, each was 502 `unreachable` and the 18
 * "failed ports" on 127.0.0.1 were an an0081.scan block (port-scan) that quarantined the client.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { skipNotice } from '../helpers/skip-notice.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const PORTS = 18;

function unshareWorks(): string {
  if (process.platform !== 'linux') return `platform is ${process.platform}, not linux`;
  if (process.getuid?.() !== 0) return 'not running as root';
  const probe = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up && echo "50000 50000" > /proc/sys/net/ipv4/ip_local_port_range'], { encoding: 'utf8', timeout: 10_000 });
  return probe.status === 0 ? '' : `unshare -n failed: ${(probe.stderr ?? '').trim() || String(probe.error)}`;
}
const why = unshareWorks();
const available = skipNotice(why === '', 'dial-port-shortage (a network namespace of its own)', why);

describe.runIf(available)('a dial the gateway has no local port for', () => {
  it(`${PORTS} second CONNECTs to ${PORTS} origins, no port left: 503 out-of-sockets, logged once, no an0081.scan`, () => {
    const child = spawnSync(
      'unshare',
      ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx test/helpers/port-shortage-child.ts`],
      { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, SHORTAGE_PORTS: String(PORTS) } },
    );
    expect(child.status, child.stderr).toBe(0);
    const got = JSON.parse(child.stdout.trim().split('\n').pop() ?? '{}') as { first: number[]; second: string[]; closeReasons: string[]; scan: string[]; errors: string[] };
    expect(got.first).toEqual(Array.from({ length: PORTS }, () => 200));
    expect(got.second).toEqual(Array.from({ length: PORTS }, () => '503 out-of-sockets'));
    expect(got.closeReasons).toEqual(Array.from({ length: PORTS }, () => 'allow out-of-sockets'));
    expect(got.scan).toEqual([]);
    expect(got.errors).toEqual(['EGW_OUT_OF_SOCKETS EADDRNOTAVAIL']);
  });
});
