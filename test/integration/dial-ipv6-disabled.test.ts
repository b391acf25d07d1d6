/**
 * A gateway on a host whose IPv6 is disabled (net.ipv6.conf.*.disable_ipv6, a container's default):
 * there every IPv6 connect fails EADDRNOTAVAIL at once, the errno a local port shortage gives too.
 * With no IPv6 address on the host it is the destination out of reach (502 `unreachable`, SOCKS5
 * 0x04), and in a staggered dial (a name with several addresses) that address's failure, after
 * which the dial goes on to the name's next address and keeps waiting for the IPv4 attempt still
 * connecting. Before, it was the gateway's own shortage, 503 `out-of-sockets`, which ends a dial at
 * once: a dual-stack name whose first IPv4 address refused was 503 though its next IPv4 address
 * served (CONNECT, SOCKS5, absolute-URI GET), one whose IPv4 address was slower than the 250 ms
 * attempt delay was 503 with that attempt destroyed (now waited for: here it never answers, 504
 * `connect-timeout` at limits.connectTimeoutMs), and an IPv6-only name was 503, logged as the
 * gateway out of local ports. Runs in a network namespace of its own
 * (test/helpers/ipv6-disabled-child.ts), so the host's IPv6 is untouched.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { skipNotice } from '../helpers/skip-notice.ts';

const ROOT = resolve(import.meta.dirname, '../..');

function unshareWorks(): string {
  if (process.platform !== 'linux') return `platform is ${process.platform}, not linux`;
  if (process.getuid?.() !== 0) return 'not running as root';
  const probe = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up && echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && command -v python3'], { encoding: 'utf8', timeout: 10_000 });
  return probe.status === 0 ? '' : `unshare -n, IPv6 sysctls or python3 unavailable: ${(probe.stderr ?? '').trim() || String(probe.error)}`;
}
const why = unshareWorks();
const available = skipNotice(why === '', 'dial-ipv6-disabled (a network namespace of its own)', why);

interface ChildResult {
  answers: Record<string, string>;
  records: string[];
}

let got: ChildResult = { answers: {}, records: [] };

beforeAll(() => {
  if (!available) return;
  const child = spawnSync('unshare', ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx test/helpers/ipv6-disabled-child.ts`], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
  });
  expect(child.status, child.stderr).toBe(0);
  got = JSON.parse(child.stdout.trim().split('\n').pop() ?? '{}') as ChildResult;
}, 90_000);

describe.runIf(available)('a dual-stack name on a gateway whose IPv6 is disabled', () => {
  it('goes on past the IPv6 address (EADDRNOTAVAIL) to the next IPv4 one, and keeps waiting for an IPv4 attempt under way', () => {
    expect({ CONNECT: got.answers['CONNECT'], SOCKS5: got.answers['SOCKS5'], GET: got.answers['GET'], 'CONNECT hung.test': got.answers['CONNECT hung.test'] }).toEqual({
      CONNECT: 'served by 127.0.0.3',
      SOCKS5: 'served by 127.0.0.3',
      GET: '200 served by 127.0.0.3',
      'CONNECT hung.test': '504 connect-timeout',
    });
    expect(got.records.filter((r) => !r.includes('v6only.test')).sort()).toEqual(
      ['connect pair.test 127.0.0.3 closed', 'socks5 pair.test 127.0.0.3 closed', 'http pair.test 127.0.0.3 closed', 'connect hung.test 127.0.0.1 connect-timeout'].sort(),
    );
  });
});

describe.runIf(available)('an IPv6-only name on a gateway whose IPv6 is disabled', () => {
  it('is 502 unreachable, the destination out of reach, not 503 out-of-sockets, the gateway short of ports', () => {
    expect({ CONNECT: got.answers['CONNECT v6only.test'], GET: got.answers['GET v6only.test'] }).toEqual({ CONNECT: '502 unreachable', GET: '502 unreachable' });
    expect(got.records.filter((r) => r.includes('v6only.test')).sort()).toEqual(['connect v6only.test 2001:db8::1 unreachable', 'http v6only.test 2001:db8::1 unreachable']);
  });
});
