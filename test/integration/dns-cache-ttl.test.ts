/**
 * The DNS cache's lifetimes are policy settings (`resolver.cacheTtlSec`, default 30, and
 * `resolver.negativeCacheTtlSec`, default 5; 0 = none), read at each lookup so a reload applies to
 * the lookups after it. Before, they were fixed at 30 s and 5 s: a destination that failed over by
 * DNS (its record changed, a low TTL) was dialled at its old address for up to 30 s whatever the
 * platform engineer wanted, and a name that had failed stayed failed for 5 s.
 *
 * `egressgate serve` runs with its own /etc/resolv.conf (a mount namespace, as root) naming a DNS
 * server on loopback (test/helpers/zone-dns.ts) whose zone the test changes mid-test: a name moves
 * from OLD to NEW, a name that did not exist comes to exist. The origin that answers says which
 * address was dialled, and the flow records name it. The only waits are "after the TTL passed"
 * (1 s lifetimes, waited 2 s), and "within the TTL" is a 30 s default or an hour.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { CLI, canUnshareMounts, killIfRunning, ROOT, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { run } from './http-harness.ts';

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.174';
/** A name's address before the test moves it. */
const OLD = '127.0.0.175';
/** ...and after. */
const NEW = '127.0.0.176';
const ADMIN_TOKEN = 'dns-cache-ttl-token-0123456789abc';

const isAvailable = skipNotice(canUnshareMounts(), 'dns-cache-ttl', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

let dir: string;
let dns: ZoneDns;
let gw: Served | null = null;
const origins: Server[] = [];
let port = 0;
/** The test's zone: changed in place, read by the DNS server at each query. */
const zone: Record<string, string[]> = {};
let version = 1;

const policy = (resolver: string): string =>
  [
    'mode: enforce',
    `allowRanges: [${OLD}/32, ${NEW}/32]`,
    'roles: { any: { allow: [ { host: "*.test" } ] } }',
    'defaultRoles: [any]',
    'identity: { localAttribution: false }',
    `resolver: { ${resolver} }`,
    `flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }`,
    '',
  ].join('\n');

async function listen(host: string): Promise<void> {
  const s = createServer((req, res) => res.end(`served by ${req.socket.localAddress}`));
  s.listen(port, host);
  await once(s, 'listening');
  port = (s.address() as { port: number }).port;
  origins.push(s);
}

beforeAll(async () => {
  if (!isAvailable) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-dnsttl-'));
  await listen(OLD);
  await listen(NEW);
  dns = await startZoneDns(ZONE_DNS, zone);
  writeFileSync(join(dir, 'resolv.conf'), `nameserver ${dns.address}\noptions timeout:2 attempts:2\n`);
  // The positive lifetime at its default; failures remembered for an hour.
  writeFileSync(join(dir, 'policy.yaml'), policy('negativeCacheTtlSec: 3600'));
  gw = await spawnServe(join(dir, 'policy.yaml'), { env: { EGRESSGATE_ADMIN_TOKEN: ADMIN_TOKEN }, wrap: withResolvConf(join(dir, 'resolv.conf')) });
}, 30_000);

afterAll(async () => {
  await killIfRunning(gw?.child ?? null, 'SIGTERM');
  if (!isAvailable) return;
  await dns?.close();
  for (const s of origins) s.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A GET through the gateway: "status body" ("502 ..." when the name did not resolve). */
async function get(name: string): Promise<string> {
  const r = await run('curl', ['-sS', '-m', '15', '-w', '\n%{http_code}', '-x', `http://127.0.0.1:${(gw as Served).http.port}`, `http://${name}:${port}/`]);
  const text = r.stdout.toString('utf8');
  const nl = text.lastIndexOf('\n');
  return `${text.slice(nl + 1)} ${text.slice(0, nl)}`;
}

const served = (ip: string): string => `200 served by ${ip}`;
const queries = (name: string): number => dns.asked.filter((q) => q === `${name} A`).length;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** SIGHUP with `resolver` in the file; resolves once serve logged the new version. */
async function reload(resolver: string): Promise<void> {
  writeFileSync(join(dir, 'policy.yaml'), policy(resolver));
  (gw as Served).child.kill('SIGHUP');
  version++;
  const deadline = Date.now() + 20_000;
  while (!(gw as Served).stderr().includes(`"version":${version}`) && Date.now() < deadline) await sleep(25);
  expect((gw as Served).stderr()).toContain(`"version":${version}`);
}

describe('resolver.cacheTtlSec and resolver.negativeCacheTtlSec', () => {
  it.runIf(isAvailable)('set the lifetimes of answers and failures, and a reload applies to the lookups after it', async () => {
    // 1. Defaults (30 s): a moved name is dialled at its old address within the lifetime, one query.
    zone['stay.test'] = [OLD];
    expect(await get('stay.test')).toBe(served(OLD));
    zone['stay.test'] = [NEW];
    expect(await get('stay.test')).toBe(served(OLD));
    expect(queries('stay.test')).toBe(1);
    // An hour's negative lifetime: a name that comes to exist still fails, unasked.
    expect(await get('gone.test')).toMatch(/^502 /);
    zone['gone.test'] = [NEW];
    expect(await get('gone.test')).toMatch(/^502 /);
    expect(queries('gone.test')).toBe(1);

    // 2. Reloaded to 1 s each: what was remembered under the longer lifetimes is not answered any
    // more (stay.test's answer is seconds old, within its 30 s), and each lifetime is 1 s.
    await reload('cacheTtlSec: 1, negativeCacheTtlSec: 1');
    expect(await get('stay.test')).toBe(served(NEW));
    expect(await get('gone.test')).toBe(served(NEW));
    zone['moved.test'] = [OLD];
    expect(await get('moved.test')).toBe(served(OLD));
    zone['moved.test'] = [NEW];
    expect(await get('late.test')).toMatch(/^502 /);
    zone['late.test'] = [NEW];
    await sleep(2000);
    expect(await get('moved.test')).toBe(served(NEW));
    expect(await get('late.test')).toBe(served(NEW));
    expect(queries('moved.test')).toBe(2);
    expect(queries('late.test')).toBe(2);

    // 3. Reloaded to 0 (through the admin API): every flow looks its name up, answered or failed.
    const put = await fetch(`http://${(gw as Served).admin}/v1/policy`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'text/yaml' },
      body: policy('cacheTtlSec: 0, negativeCacheTtlSec: 0'),
    });
    expect(put.status).toBe(200);
    version++;
    zone['each.test'] = [OLD];
    for (let i = 0; i < 3; i++) expect(await get('each.test')).toBe(served(OLD));
    expect(queries('each.test')).toBe(3);
    for (let i = 0; i < 3; i++) expect(await get('never.test')).toMatch(/^502 /);
    expect(queries('never.test')).toBe(3);
    zone['each.test'] = [NEW];
    expect(await get('each.test')).toBe(served(NEW));

    // 4. Raised again (an hour): answered from memory once more.
    await reload('cacheTtlSec: 3600');
    zone['again.test'] = [OLD];
    expect(await get('again.test')).toBe(served(OLD));
    zone['again.test'] = [NEW];
    expect(await get('again.test')).toBe(served(OLD));
    expect(queries('again.test')).toBe(1);

    // The records name the address each flow dialled.
    const deadline = Date.now() + 5000;
    const dialled = (): string[] =>
      parseRecords(readFileSync(join(dir, 'flows.jsonl'), 'utf8'))
        .filter((r) => r.destination.host === 'moved.test' || r.destination.host === 'stay.test')
        .map((r) => `${r.destination.host} ${r.destination.ip}`);
    while (dialled().length < 5 && Date.now() < deadline) await sleep(50);
    expect(dialled().sort()).toEqual([`moved.test ${OLD}`, `moved.test ${NEW}`, `stay.test ${OLD}`, `stay.test ${OLD}`, `stay.test ${NEW}`]);
  }, 120_000);
});

describe('egressgate check', () => {
  const checkDir = mkdtempSync(join(tmpdir(), 'egw-dnsttl-check-'));
  afterAll(() => rmSync(checkDir, { recursive: true, force: true }));

  function check(text: string): Promise<{ code: number; stderr: string }> {
    const path = join(checkDir, 'policy.yaml');
    writeFileSync(path, text);
    return new Promise((resolve) => {
      execFile(process.execPath, [CLI, 'check', '--config', path], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, _stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr }),
      );
    });
  }

  it('rejects lifetimes that are not whole seconds within their bounds, naming the field', async () => {
    const bad = await check('resolver: { cacheTtlSec: 86401, negativeCacheTtlSec: 1.5 }\n');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('resolver.cacheTtlSec: must be <= 86400, got 86401');
    expect(bad.stderr).toContain('resolver.negativeCacheTtlSec: expected an integer, got 1.5');
    const worse = await check('resolver: { cacheTtlSec: -1, negativeCacheTtlSec: 3601 }\n');
    expect(worse.code).toBe(1);
    expect(worse.stderr).toContain('resolver.cacheTtlSec: must be >= 0, got -1');
    expect(worse.stderr).toContain('resolver.negativeCacheTtlSec: must be <= 3600, got 3601');
    expect((await check('resolver: { cacheTtlSec: 0, negativeCacheTtlSec: 3600 }\n')).code).toBe(0);
  }, 120_000);
});
