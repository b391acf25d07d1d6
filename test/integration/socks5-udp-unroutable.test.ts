/**
 * A SOCKS5 UDP datagram the kernel does not send is not in the association's `bytesOut`. The relay
 * sent without a callback, and node tells a send's failure only to its callback: a datagram to an
 * IPv6 destination from a host without an IPv6 route (sendto fails ENETUNREACH) was counted as
 * relayed, silently, though not one byte left. Reproduced: 3 datagrams of 10 bytes to
 * `[fd00:99::1]:9` and one of 7 to an echo on ::1 were recorded `bytesOut: 37`; 7 were sent.
 *
 * `egressgate serve` runs in a network namespace of its own with loopback only (no route off it), as
 * does the client (raw SOCKS5 over [::1], an echo on ::1): nothing leaves the namespace.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { NetnsLab, type NsProcess, netnsSupport } from '../helpers/netns.ts';
import { CLI, ROOT } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';

const support = netnsSupport();
const isAvailable = skipNotice(support.ok, 'socks5-udp-unroutable', support.reason);

/** A destination the policy allows and the namespace has no route to. */
const UNROUTABLE = 'fd00:99::1';

/**
 * Inside the namespace: a UDP echo on ::1; UDP ASSOCIATE over [::1]:argv[1]; 3 datagrams of 10 bytes
 * to UNROUTABLE (the association's first destination, admitted first), then one of 7 to the echo;
 * prints the echo's answer once it is back, and closes the association.
 */
const CLIENT_JS = `
const net = require('node:net');
const dgram = require('node:dgram');
const socksPort = Number(process.argv[1]);
const fail = (why) => { console.log(JSON.stringify({ error: why })); process.exit(1); };
setTimeout(() => fail('timed out'), 10000).unref();
function v6(text) {
  const [head, tail] = text.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const b = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) b.writeUInt16BE(parseInt(groups[i], 16), i * 2);
  return b;
}
function header(ip, port) {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  return Buffer.concat([Buffer.from([0, 0, 0, 4]), v6(ip), p]);
}
const echo = dgram.createSocket('udp6');
echo.on('message', (m, r) => echo.send(m, r.port, r.address));
echo.bind(0, '::1', () => {
  const ctl = net.connect(socksPort, '::1');
  let got = Buffer.alloc(0);
  ctl.on('error', (e) => fail(e.message));
  ctl.on('connect', () => ctl.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 3, 0]), header('::', 0).subarray(3)])));
  ctl.on('data', (d) => {
    got = Buffer.concat([got, d]);
    if (got.length < 2 + 22) return;
    ctl.removeAllListeners('data');
    if (got[1] !== 0 || got[3] !== 0 || got[5] !== 4) fail('refused: ' + got.toString('hex'));
    const relayPort = got.readUInt16BE(2 + 20);
    const u = dgram.createSocket('udp6');
    u.on('message', (m) => {
      console.log(JSON.stringify({ echoed: m.subarray(22).toString() }));
      ctl.end();
      u.close();
      echo.close();
    });
    u.bind(0, '::1', () => {
      for (let i = 0; i < 3; i++) u.send(Buffer.concat([header(${JSON.stringify(UNROUTABLE)}, 9), Buffer.from('0123456789')]), relayPort, '::1');
      u.send(Buffer.concat([header('::1', echo.address().port), Buffer.from('ping-7b')]), relayPort, '::1');
    });
  });
});
`;

let lab: NetnsLab | null = null;
let ns = '';
let dir = '';
let serve: NsProcess | null = null;
let socksPort = 0;

beforeAll(async () => {
  if (!isAvailable) return;
  lab = new NetnsLab('u6');
  ns = await lab.addNamespace('a');
  dir = mkdtempSync(join(tmpdir(), 'egw-udp-unroutable-'));
  writeFileSync(
    join(dir, 'policy.yaml'),
    [
      'mode: enforce',
      `allowRanges: ["${UNROUTABLE}/128", "::1/128"]`,
      `roles: { any: { allow: [ { cidr: "${UNROUTABLE}/128" }, { cidr: "::1/128" } ] } }`,
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      `flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }`,
      '',
    ].join('\n'),
  );
  const args = [CLI, 'serve', '--config', join(dir, 'policy.yaml'), '--http', '127.0.0.1:0', '--socks', '[::1]:0', '--admin', '127.0.0.1:0'];
  serve = lab.spawn(ns, process.execPath, args, { cwd: ROOT, env: { ...process.env, EGRESSGATE_ADMIN_TOKEN: 'socks5-udp-unroutable-token-0123' } });
  const listening = JSON.parse(await serve.waitForLine((l) => l.includes('"listening"'), 30_000)) as { socks: string };
  socksPort = Number(listening.socks.slice(listening.socks.lastIndexOf(':') + 1));
}, 40_000);

afterAll(async () => {
  await serve?.stop();
  await lab?.destroy();
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

function records(): FlowRecord[] {
  try {
    return parseWrittenRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8'));
  } catch {
    return [];
  }
}

describe.runIf(isAvailable)('SOCKS5 UDP datagrams to a destination the host has no route to', () => {
  it('are not in bytesOut, and the record counts them as not sent', async () => {
    const r = await (lab as NetnsLab).exec(ns, process.execPath, ['-e', CLIENT_JS, String(socksPort)]);
    expect(r.stdout.trim()).toBe(JSON.stringify({ echoed: 'ping-7b' }));
    await until('the association record', () => records().some((f) => f.protocol === 'socks5-udp'), 10_000);
    const rec = records().find((f) => f.protocol === 'socks5-udp') as FlowRecord;
    expect(rec.destination).toMatchObject({ host: UNROUTABLE, ip: UNROUTABLE, port: 9 });
    expect(rec.verdict).toBe('allow');
    expect(rec.bytesOut).toBe(7);
    expect(rec.bytesIn).toBe(7);
    expect(rec.reasons).toContain('udp association: 2 destinations relayed, 0 refused');
    expect(rec.reasons.find((x) => x.startsWith('udp datagrams dropped:'))).toContain('3 the kernel did not send');
  }, 30_000);
});
