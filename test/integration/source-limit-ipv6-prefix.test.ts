/**
 * limits.maxConnectionsPerSource counts an IPv6 client per /64: one host holds a whole /64 and picks
 * addresses in it freely (SLAAC privacy addresses), so counted per address it stepped around the
 * limit by changing address. Before, with the limit at 3 and 3 idle connections from fd00:64::1, a
 * connection from fd00:64::2 and one from fd00:64::3 were both served.
 *
 * Loopback IPv6 is only ::1, so this runs in a network namespace whose loopback holds several
 * addresses of one /64 (fd00:64::1..3) and one of another (fd00:65::1): `serve` listens there on
 * [::] and a client there connects from each. Needs root and `ip`.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetnsLab, netnsSupport, runOk } from '../helpers/netns.ts';
import { killIfRunning, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';

const support = netnsSupport();
const canRun = skipNotice(support.ok, 'source-limit-ipv6-prefix (network namespaces)', support.reason);

const LIMIT = 3;

/**
 * The client: `LIMIT` idle connections from the first address, held open; then one probe per other
 * address, each in turn. A probe prints its first status line: the 429 of a refused connection comes
 * unasked; an admitted one answers the request the probe sends (a proxy request in origin form), or
 * `timeout` after 5 s. Prints one JSON array of the probes' lines.
 */
const CLIENT_JS = `
const net = require('node:net');
const [port, first, ...probes] = process.argv.slice(1);
setTimeout(() => { console.log('stuck'); process.exit(1); }, 30000).unref();
const open = (from) => new Promise((resolve, reject) => {
  const s = net.connect({ port: Number(port), host: 'fd00:64::1', localAddress: from });
  s.on('error', () => undefined);
  s.once('connect', () => resolve(s));
  s.once('close', () => reject(new Error('closed before connect')));
});
const statusLine = (s) => new Promise((resolve) => {
  let got = '';
  const t = setTimeout(() => resolve('timeout'), 5000);
  s.on('data', (d) => {
    got += d.toString('latin1');
    const i = got.indexOf('\\r\\n');
    if (i !== -1) { clearTimeout(t); resolve(got.slice(0, i)); }
  });
  s.on('close', () => { clearTimeout(t); resolve(got === '' ? 'closed' : got.split('\\r\\n')[0]); });
});
(async () => {
  const held = [];
  for (let i = 0; i < ${LIMIT}; i++) held.push(await open(first));
  const lines = [];
  for (const from of probes) {
    const s = await open(from);
    const line = statusLine(s);
    // Give a refusal its moment to come unasked, then ask.
    await new Promise((r) => setTimeout(r, 200));
    if (!s.destroyed) s.write('GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n');
    lines.push(await line);
    s.destroy();
  }
  console.log(JSON.stringify(lines));
  for (const s of held) s.destroy();
  process.exit(0);
})();
`;

describe.runIf(canRun)('limits.maxConnectionsPerSource and IPv6 clients', () => {
  const lab = new NetnsLab('egsl');
  let ns = '';
  let served: Served | null = null;
  let dir = '';

  beforeAll(async () => {
    ns = await lab.addNamespace('g');
    for (const a of ['fd00:64::1/64', 'fd00:64::2/64', 'fd00:64::3/64', 'fd00:65::1/64']) {
      await runOk('ip', ['-n', ns, '-6', 'addr', 'add', a, 'dev', 'lo', 'nodad']);
    }
    dir = mkdtempSync(join(tmpdir(), 'egw-sl6-'));
    const config = join(dir, 'policy.yaml');
    writeFileSync(config, `${loopbackServeConfig(join(dir, 'flows.jsonl'))}limits: { maxConnectionsPerSource: ${LIMIT} }\n`);
    served = await spawnServe(config, {
      // In the namespace, its HTTP listener on [::] (spawnServe's own is 127.0.0.1).
      wrap: (argv) => ['ip', 'netns', 'exec', ns, ...argv.map((a, i) => (argv[i - 1] === '--http' ? '[::]:0' : a))],
    });
  }, 60_000);

  afterAll(async () => {
    await killIfRunning(served?.child ?? null);
    await lab.destroy();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('counts the addresses of one /64 as one source, another /64 as another', async () => {
    const port = (served as Served).http.port;
    const out = await lab.execOk(ns, process.execPath, ['-e', CLIENT_JS, String(port), 'fd00:64::1', 'fd00:64::2', 'fd00:64::3', 'fd00:65::1'], 40_000);
    const [second, third, otherPrefix] = JSON.parse(out.trim()) as string[];
    expect(second).toBe('HTTP/1.1 429 Too Many Requests');
    expect(third).toBe('HTTP/1.1 429 Too Many Requests');
    // Another /64 is another source: served (its request answered, whatever the answer).
    expect(otherPrefix).toMatch(/^HTTP\/1\.1 \d{3} /);
    expect(otherPrefix).not.toMatch(/ 429 /);
  }, 60_000);
});
