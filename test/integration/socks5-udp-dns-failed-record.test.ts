/**
 * A SOCKS5 UDP association's later destination whose name does not resolve keeps the policy's word
 * on that name in its record, as a TCP flow's and the association's first destination's do: `allow`
 * / `allowed` with the matching rule for a name the policy admits, `would-block` / `not-allowlisted`
 * for one monitor mode would refuse; closeReason `dns-failed`, no address. Before, every such record
 * said verdict `allow`, reason null and no reasons, whatever the policy said of the name: in monitor
 * mode a name the allowlist refuses was logged as allowed traffic.
 *
 * `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback (test/helpers/zone-dns.ts): NXDOMAIN for names it does not know, SERVFAIL under
 * `.servfail.test`; the real OS resolver between them.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.159';
/** The UDP echo the allowed name answers with. */
const ECHO = '127.0.0.3';

const isAvailable = skipNotice(canUnshareMounts(), 'socks5-udp-dns-failed-record', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns | undefined;
let gw: Served | null = null;
let echo: UdpSocket | null = null;
const cleanups: Cleanups = [];

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-udpdns-'));
  echo = createSocket('udp4');
  echo.on('message', (m, from) => echo?.send(m, from.port, from.address));
  echo.bind(0, ECHO);
  await once(echo, 'listening');
  dns = await startZoneDns(ZONE_DNS, { 'echo.allowed.test': [ECHO] });
  const resolv = join(dir, 'resolv.conf');
  writeFileSync(resolv, `nameserver ${dns.address}\noptions timeout:1 attempts:1\n`);
  const config = join(dir, 'policy.yaml');
  writeFileSync(
    config,
    [
      'mode: monitor',
      `allowRanges: [${ECHO}/32]`,
      'roles: { any: { allow: [ { host: "*.allowed.test" } ] } }',
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      `flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }`,
      '',
    ].join('\n'),
  );
  gw = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: 'socks5-udp-dns-failed-token-0123' }, wrap: withResolvConf(resolv) });
}, 30_000);

afterAll(async () => {
  for (const c of cleanups) await c();
  await killIfRunning(gw?.child ?? null);
  if (!isAvailable) return;
  await dns?.close();
  echo?.close();
  rmSync(dir, { recursive: true, force: true });
});

function records(): FlowRecord[] {
  try {
    return parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8'));
  } catch {
    return [];
  }
}

describe('a later SOCKS5 UDP destination whose name does not resolve', () => {
  it.runIf(isAvailable)("is recorded with the policy's verdict on the name, dns-failed", async () => {
    const served = gw as Served;
    const [host, port] = served.socks.split(':') as [string, string];
    const client = await udpSocket(cleanups);
    const assoc = await associate({ socksHost: host, socksPort: Number(port) }, client, cleanups);
    const echoPort = (echo as UdpSocket).address().port;
    // The first destination opens the association's flow: relayed.
    const reply = nextReply(client);
    await sendTo(client, udpFrame('echo.allowed.test', echoPort, Buffer.from('first')), assoc.relay);
    expect((await reply).data.toString()).toBe('first');
    const later = ['nx.allowed.test', 'x.servfail.test', 'nx.example'];
    for (const name of later) await sendTo(client, udpFrame(name, echoPort, Buffer.from(`to ${name}`)), assoc.relay);
    await until('a record for each later destination', () => later.every((n) => records().some((r) => r.destination.host === n)), 15_000);
    const of = (name: string): FlowRecord => records().find((r) => r.destination.host === name) as FlowRecord;
    // A name an allow entry admits: allowed, and which rule said so.
    const allowed = of('nx.allowed.test');
    expect(allowed.protocol).toBe('socks5-udp');
    expect([allowed.verdict, allowed.reason, allowed.closeReason, allowed.destination.ip]).toEqual(['allow', 'allowed', 'dns-failed', null]);
    expect(allowed.matchedRule).toMatchObject({ role: 'any', index: 0 });
    expect(allowed.reasons.join(' ')).toContain('allowed by role any');
    // Names no allow entry admits (SERVFAIL, NXDOMAIN): what enforce mode would refuse, not allow.
    for (const name of ['x.servfail.test', 'nx.example']) {
      const r = of(name);
      expect([r.verdict, r.reason, r.detector, r.enforced, r.closeReason, r.destination.ip], name).toEqual(['would-block', 'not-allowlisted', 'policy.deny', false, 'dns-failed', null]);
      expect(r.reasons.join(' '), name).toContain('would be blocked in enforce mode');
    }
    // The association goes on: its first destination still answers.
    const again = nextReply(client);
    await sendTo(client, udpFrame('echo.allowed.test', echoPort, Buffer.from('again')), assoc.relay);
    expect((await again).data.toString()).toBe('again');
  }, 60_000);
});
