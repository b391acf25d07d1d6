/**
 * A SOCKS5 UDP association to a link-local destination (possible where the operator allows
 * fe80::/10) gets its replies. Node names a link-local sender with its zone (`fe80::b%veth`), while
 * the destination was admitted and keyed as `fe80::b` (a zone cannot be named in a destination, and
 * the relay sends unscoped): every reply was dropped as unsolicited, the client got nothing.
 *
 * Link-local addresses exist only on a real link, so this runs in network namespaces: `serve` and
 * the client in one, a UDP echo on `fe80::b` in another, joined by a veth pair. Needs root and `ip`.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { NetnsLab, type NsProcess, netnsSupport } from '../helpers/netns.ts';
import { killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';

const support = netnsSupport();
const canRun = skipNotice(support.ok, 'socks5-udp-link-local (network namespaces)', support.reason);

const PEER = 'fe80::b';
const ECHO_PORT = 7007;

/**
 * A UDP echo on fe80::b: answers `echo:` + the datagram. Bound to the address (one bound to `::`
 * would answer from the address the kernel picks, the link's own EUI-64 one).
 */
const ECHO_JS = `
const s = require('node:dgram').createSocket('udp6');
s.on('message', (m, r) => s.send(Buffer.concat([Buffer.from('echo:'), m]), r.port, r.address));
s.bind(${ECHO_PORT}, '${PEER}%llp', () => console.log('up'));
setTimeout(() => process.exit(0), 60000).unref();
`;

/**
 * A SOCKS5 client: UDP ASSOCIATE on 127.0.0.1:<socks port>, one datagram to [fe80::b]:ECHO_PORT
 * (ATYP 4) through the relay, then prints the reply's payload, or `none` after 3 s.
 */
const CLIENT_JS = `
const net = require('node:net');
const dgram = require('node:dgram');
const port = Number(process.argv[1]);
setTimeout(() => { console.log('none'); process.exit(0); }, 3000);
const c = net.connect(port, '127.0.0.1');
let buf = Buffer.alloc(0);
let step = 0;
c.on('connect', () => c.write(Buffer.from([5, 1, 0])));
c.on('data', (d) => {
  buf = Buffer.concat([buf, d]);
  if (step === 0 && buf.length >= 2) {
    buf = buf.subarray(2);
    step = 1;
    c.write(Buffer.from([5, 3, 0, 1, 127, 0, 0, 1, 0, 0]));
  }
  if (step === 1 && buf.length >= 10) {
    step = 2;
    const relayPort = buf.readUInt16BE(8);
    const u = dgram.createSocket('udp4');
    u.on('message', (m) => {
      // RSV RSV FRAG ATYP(4) ADDR(16) PORT(2), then the payload.
      console.log(m.subarray(22).toString());
      process.exit(0);
    });
    u.bind(0, '127.0.0.1', () => {
      const f = Buffer.alloc(22);
      f[3] = 4;
      f[4] = 0xfe; f[5] = 0x80; f[19] = 0x0b;
      f.writeUInt16BE(${ECHO_PORT}, 20);
      u.send(Buffer.concat([f, Buffer.from('hi')]), relayPort, '127.0.0.1');
    });
  }
});
`;

describe.runIf(canRun)('a SOCKS5 UDP association to a link-local destination', () => {
  const lab = new NetnsLab('egll');
  let gwNs = '';
  let echo: NsProcess | null = null;
  let served: Served | null = null;
  let dir = '';

  beforeAll(async () => {
    gwNs = await lab.addNamespace('g');
    const peerNs = await lab.addNamespace('p');
    await lab.link({ ns: gwNs, ifname: 'llg', addr: '10.201.0.1/30', addr6: 'fe80::a/64' }, { ns: peerNs, ifname: 'llp', addr: '10.201.0.2/30', addr6: `${PEER}/64` });
    echo = lab.spawn(peerNs, process.execPath, ['-e', ECHO_JS]);
    await echo.waitForLine((l) => l === 'up', 10_000);
    dir = mkdtempSync(join(tmpdir(), 'egw-ll-'));
    const config = join(dir, 'policy.yaml');
    writeFileSync(
      config,
      `
mode: enforce
allowRanges: [127.0.0.0/8, fe80::/10]
roles: { any: { allow: [ { cidr: fe80::/10 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }
`,
    );
    served = await spawnServe(config, { wrap: (argv) => ['ip', 'netns', 'exec', gwNs, ...argv] });
  }, 60_000);

  afterAll(async () => {
    await killIfRunning(served?.child ?? null);
    await lab.destroy();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('relays the reply from fe80::b to the client', async () => {
    const socksPort = Number((served as Served).socks.slice((served as Served).socks.lastIndexOf(':') + 1));
    const out = await lab.execOk(gwNs, process.execPath, ['-e', CLIENT_JS, String(socksPort)], 15_000);
    expect(out.trim()).toBe('echo:hi');
    // The client has gone, so has its association: its record is written at its close.
    const log = join(dir, 'flows.jsonl');
    let records: string[] = [];
    await until('the association record', () => {
      records = existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('"socks5-udp"')) : [];
      return records.length > 0;
    }, 15_000);
    expect(records.length).toBeGreaterThan(0);
    const rec = JSON.parse(records.at(-1) as string) as { verdict: string; destination: { ip: string }; bytesIn: number; reasons: string[] };
    expect(rec.verdict).toBe('allow');
    expect(rec.destination.ip).toBe(PEER);
    expect(rec.bytesIn).toBe('echo:hi'.length);
    expect(rec.reasons.join('\n')).toContain(' 0 unsolicited replies');
  }, 60_000);
});
