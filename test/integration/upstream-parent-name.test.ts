/**
 * A parent proxy named by host name gets its address as destinations do: the running policy's
 * `resolver.hosts`, then the gateway's resolver (its DNS cache), never the OS resolver on its own.
 * The name in the first cases is one only `resolver.hosts` knows (`.invalid` never resolves, RFC
 * 6761), its address another loopback address than the origin's, which `allowRanges` leaves denied:
 * the parent is the operator's and is not judged by `deny-range` (its destinations still are).
 * The last runs `egressgate serve` with its own /etc/resolv.conf (a mount namespace, as root) naming
 * a DNS server on loopback that knows the parent's name: it is asked once, not at every dial.
 * Before, the parent's name went to net.connect, so to the OS resolver alone: a `resolver.hosts`
 * name was 502 `upstream-proxy` (SOCKS 0x01), and a DNS name was looked up at every connection.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminPut, runningConfig, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent, startSocksParent } from '../helpers/parent-proxy.ts';
import { canUnshareMounts, killIfRunning, type Served, spawnServe, withResolvConf } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { startZoneDns, type ZoneDns } from '../helpers/zone-dns.ts';
import { type Origin, readUntil, startOrigin } from './http-harness.ts';

const PARENT_NAME = 'parent.egw-test.invalid';
/** Loopback addresses besides 127.0.0.1 that the parents listen on (Linux routes all of 127.0.0.0/8 to lo). */
const PARENT_IP = '127.0.0.85';
const MOVED_IP = '127.0.0.86';

/** Whether this machine can listen on `ip` (Linux: any 127.0.0.0/8 address; macOS: only those configured). */
function canListenOn(ip: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(0, ip, () => probe.close(() => resolve(true)));
  });
}

const isAvailable = skipNotice((await canListenOn(PARENT_IP)) && (await canListenOn(MOVED_IP)), 'upstream-parent-name tests', `this machine cannot listen on ${PARENT_IP} and ${MOVED_IP} (loopback addresses other than 127.0.0.1)`);

let origin: Origin;

beforeAll(async () => {
  if (isAvailable) origin = await startOrigin();
});

afterAll(async () => {
  await origin?.close();
});

/** The gateway's config for a parent at `scheme://PARENT_NAME:port`: only 127.0.0.1 (the origin) is allowed past deny-range. */
function namedParent(scheme: string, parent: ParentProxy, login = ''): Parameters<typeof startTestGateway>[0] {
  return {
    allowRanges: ['127.0.0.1/32'],
    resolver: { hosts: { [PARENT_NAME]: PARENT_IP } },
    upstream: `${scheme}://${login}${PARENT_NAME}:${parent.port}`,
  };
}

/** A CONNECT to the origin through the gateway's HTTP listener and one request in the tunnel: the status line and the answer. */
async function connectThrough(gw: { httpHost: string; httpPort: number }): Promise<{ status: string; answer: string }> {
  const s = connect({ host: gw.httpHost, port: gw.httpPort });
  s.on('error', () => {});
  await once(s, 'connect');
  const o = `127.0.0.1:${origin.port}`;
  s.write(`CONNECT ${o} HTTP/1.1\r\nHost: ${o}\r\n\r\n`);
  const head = (await readUntil(s, '\r\n\r\n')).toString('latin1');
  const status = head.split('\r\n')[0] as string;
  if (!status.includes(' 200 ')) {
    s.destroy();
    return { status, answer: '' };
  }
  s.write(`GET /size/10 HTTP/1.1\r\nHost: ${o}\r\nConnection: close\r\n\r\n`);
  let answer = '';
  s.on('data', (d: Buffer) => {
    answer += d.toString('latin1');
  });
  await once(s, 'close');
  return { status, answer };
}

/** An absolute-URI GET of the origin through the gateway's HTTP listener: status and body length. */
async function getThrough(gw: TestGateway, path: string): Promise<{ status: number; length: number }> {
  const req = request({ host: gw.httpHost, port: gw.httpPort, path: `http://127.0.0.1:${origin.port}${path}`, agent: false, timeout: 10_000 });
  req.on('timeout', () => req.destroy(new Error(`no answer to ${path} within 10 s`)));
  req.end();
  const [res] = (await once(req, 'response')) as [import('node:http').IncomingMessage];
  let length = 0;
  res.on('data', (d: Buffer) => {
    length += d.length;
  });
  await once(res, 'end');
  return { status: res.statusCode ?? 0, length };
}

describe.runIf(isAvailable)('an http parent named by a resolver.hosts name', () => {
  let parent: ParentProxy;
  let moved: ParentProxy;
  let gw: TestGateway;

  beforeAll(async () => {
    parent = await startHttpParent(PARENT_IP);
    gw = await startTestGateway(namedParent('http', parent));
  });

  afterAll(async () => {
    await gw?.stop();
    await parent?.close();
    await moved?.close();
  });

  it('carries CONNECT and absolute-URI requests, asked for the checked origin address', async () => {
    const tunnel = await connectThrough(gw);
    expect(tunnel.status).toMatch(/^HTTP\/1\.1 200 /);
    expect(tunnel.answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(await getThrough(gw, '/size/321')).toEqual({ status: 200, length: 321 });
    expect(parent.seen.map((s) => s.target)).toEqual([`127.0.0.1:${origin.port}`, `127.0.0.1:${origin.port}`]);
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect');
    expect(rec.upstream).toBe(`http://${PARENT_NAME}:${parent.port}`);
    expect(rec.closeReason).toBe('closed');
  });

  it('follows a reload that moves the name to another address', async () => {
    // The same port on the new address: the URL stays, only the name's answer changes.
    moved = await startHttpParent(MOVED_IP, parent.port);
    const config = await runningConfig(gw);
    expect(await adminPut(gw, '/v1/policy', { ...config, resolver: { ...(config['resolver'] as object), hosts: { [PARENT_NAME]: MOVED_IP } } })).toBe(200);
    const tunnel = await connectThrough(gw);
    expect(tunnel.status).toMatch(/^HTTP\/1\.1 200 /);
    expect(moved.seen.map((s) => s.target)).toEqual([`127.0.0.1:${origin.port}`]);
  });
});

describe.runIf(isAvailable)('a socks5 parent named by a resolver.hosts name', () => {
  let parent: ParentProxy;
  let gw: TestGateway;

  beforeAll(async () => {
    parent = await startSocksParent('child:s3cret', PARENT_IP);
    gw = await startTestGateway(namedParent('socks5', parent, 'child:s3cret@'));
  });

  afterAll(async () => {
    await gw?.stop();
    await parent?.close();
  });

  it('carries SOCKS5 CONNECTs and absolute-URI requests, logged in, asked for the checked origin address', async () => {
    const { socket } = await SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: origin.port }, timeout: 10_000 });
    socket.write(`GET /size/10 HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`);
    let answer = '';
    socket.on('data', (d: Buffer) => {
      answer += d.toString('latin1');
    });
    await once(socket, 'close');
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(await getThrough(gw, '/size/123')).toEqual({ status: 200, length: 123 });
    expect(parent.seen).toEqual([
      { target: `127.0.0.1:${origin.port}`, login: 'child:s3cret' },
      { target: `127.0.0.1:${origin.port}`, login: 'child:s3cret' },
    ]);
  });
});

/** Its DNS server's address when free (test/helpers/zone-dns.ts picks another when it is not). */
const ZONE_DNS = '127.0.0.177';
const DNS_NAME = 'parent.zone.test';
const canUnshare = isAvailable && skipNotice(canUnshareMounts(), 'upstream-parent-name (DNS)', 'needs root and unshare -m (a mount namespace for its own /etc/resolv.conf)');

describe.runIf(canUnshare)('an http parent named by a DNS name', () => {
  let dir: string;
  let dns: ZoneDns;
  let parent: ParentProxy;
  let served: Served | null = null;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egw-parent-name-'));
    dns = await startZoneDns(ZONE_DNS, { [DNS_NAME]: [PARENT_IP] });
    parent = await startHttpParent(PARENT_IP);
    writeFileSync(join(dir, 'resolv.conf'), `nameserver ${dns.address}\noptions timeout:5 attempts:2\n`);
    const policy = [
      'mode: enforce',
      'allowRanges: [127.0.0.1/32]',
      'roles: { any: { allow: [ { cidr: 127.0.0.1/32 } ] } }',
      'defaultRoles: [any]',
      'identity: { localAttribution: false }',
      'flowLog: { path: null }',
      `upstream: "http://${DNS_NAME}:${parent.port}"`,
      '',
    ].join('\n');
    writeFileSync(join(dir, 'policy.yaml'), policy);
    served = await spawnServe(join(dir, 'policy.yaml'), { env: { EGRESSGATE_ADMIN_TOKEN: 'upstream-parent-name-token-01234' }, wrap: withResolvConf(join(dir, 'resolv.conf')) });
  }, 30_000);

  afterAll(async () => {
    await killIfRunning(served?.child ?? null);
    await parent?.close();
    await dns?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("is looked up through the gateway's resolver: once for three tunnels, within the cache's 30 s", async () => {
    const gw = { httpHost: (served as Served).http.host, httpPort: (served as Served).http.port };
    for (let i = 0; i < 3; i++) expect((await connectThrough(gw)).status).toMatch(/^HTTP\/1\.1 200 /);
    expect(parent.seen).toHaveLength(3);
    expect(dns.asked.filter((q) => q === `${DNS_NAME} A`)).toHaveLength(1);
  });
});
