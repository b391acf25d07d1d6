/**
 * Identity end to end through the real listeners with real clients: curl through the HTTP proxy
 * and through the HTTPS proxy with mutual TLS (client certificate → identity.user), Basic proxy
 * auth against a scrypt hash, a signed sidecar token from an untrusted address, spoofed identity
 * headers (none of them, nor Proxy-Authorization, reaching the origin), and the `socks` client
 * with RFC 1929 credentials.
 */
import { newViaName } from '../../gateway/via.ts';
import { spawnSync } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import type { Server } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GatewayContext } from '../../gateway/context.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { FlowTable } from '../../gateway/flow/flow-table.ts';
import { createIdentityResolver } from '../../gateway/identity/identity-resolver.ts';
import { hashPassword } from '../../gateway/identity/password-hash.ts';
import { signIdentityToken } from '../../gateway/identity/signed-header.ts';
import { createHttpProxy } from '../../gateway/listeners/http-proxy.ts';
import { createSocksServer } from '../../gateway/listeners/socks5.ts';
import { PolicyStore } from '../../gateway/policy-store.ts';
import { UdpRelayAddresses } from '../../gateway/udp-relay-addresses.ts';
import { type Config, defaultConfig } from '../../policy/config.ts';
import { createTestPki, hasOpenssl, type TestPki } from '../helpers/tls.ts';
import { type Origin, run, startOrigin } from './http-harness.ts';
import { skipNotice } from '../helpers/skip-notice.ts';

const SECRET = 'sidecar-secret-0123456789';

// curl must speak TLS to the proxy itself (feature "HTTPS-proxy", curl ≥ 7.52 built with OpenSSL).
const curlVersion = spawnSync('curl', ['--version'], { encoding: 'utf8' });
const canRun = hasOpenssl() && curlVersion.status === 0 && /HTTPS-proxy/.test(curlVersion.stdout);

/**
 * The data plane as main.ts wires it (FlowTable, PolicyStore, the real identity resolver, the real
 * HTTP listener over plain TCP and over mutual TLS), without the admin API or detectors, which
 * play no part in identity. Closed flow records are collected from the flow table's sink.
 */
class MiniGateway {
  readonly records: FlowRecord[] = [];
  /** Warnings and errors the gateway logged (shown when an assertion fails). */
  readonly logs: Array<Record<string, unknown>> = [];
  private readonly events = new EventEmitter();
  readonly flows = new FlowTable({ sink: { write: (r) => this.onRecord(r), flush: async () => {} } });
  readonly ctx: GatewayContext;
  readonly servers: Array<Server | ReturnType<typeof createSocksServer>> = [];

  constructor(config: Config) {
    this.ctx = {
      flows: this.flows,
      policy: new PolicyStore(config, { author: 'test', source: 'startup' }),
      identity: createIdentityResolver(),
      via: newViaName(),
      attributor: null,
      // Tests dial IP literals only: the "DNS" answer is the literal itself.
      resolver: { lookup: async (host) => [host] },
      detection: null,
      log: { info: () => {}, warn: (o, msg) => this.logs.push({ msg, ...o }), error: (o, msg) => this.logs.push({ msg, ...o }) },
      selfAddresses: new Set(),
      udpRelays: new UdpRelayAddresses(),
      isDraining: () => false,
    };
  }

  private onRecord(r: FlowRecord): void {
    if ((r as { intermediate?: boolean }).intermediate) return;
    this.records.push(r);
    this.events.emit('record');
  }

  async listen(kind: 'socks' | Parameters<typeof createHttpProxy>[1] = {}): Promise<number> {
    const server = kind === 'socks' ? createSocksServer(this.ctx) : (createHttpProxy(this.ctx, kind) as Server);
    this.servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    this.ctx.selfAddresses.add(`127.0.0.1:${port}`);
    return port;
  }

  /** The closed record matching `pred`, waiting for it (bounded) if it is not there yet. */
  async waitForRecord(pred: (r: FlowRecord) => boolean, timeoutMs = 10_000): Promise<FlowRecord> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        const hit = this.records.find(pred);
        if (hit) return hit;
        await once(this.events, 'record', { signal: ac.signal });
      }
    } catch {
      throw new Error(`no matching flow record; have ${JSON.stringify(this.records.map((r) => r.identity))}`);
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    for (const s of this.servers) {
      if ('closeAllConnections' in s) s.closeAllConnections();
      if (s.listening) {
        s.close();
        await once(s, 'close');
      }
    }
    for (const id of [...this.flows.activeFlows().keys()]) this.flows.kill(id, 'shutdown');
  }
}

describe.skipIf(!skipNotice(canRun, 'identity-proxy', 'needs openssl and a curl built with HTTPS-proxy'))('identity through the real listeners (HTTP, HTTPS with mTLS, SOCKS5)', () => {
  let pki: TestPki;
  let gw: MiniGateway;
  let origin: Origin;
  let httpPort = 0;
  let httpsPort = 0;
  let socksPort = 0;
  let mtlsFlowId = '';

  beforeAll(async () => {
    pki = await createTestPki({ alice: { cn: 'alice' } });
    const bobHash = await hashPassword('bob-pw', { N: 1024, r: 8, p: 1 });
    origin = await startOrigin();
    const config = defaultConfig();
    config.allowRanges = ['127.0.0.0/8'];
    config.roles = { any: { allow: [{ cidr: '0.0.0.0/0' }] } };
    config.flowLog = { path: null, interimSec: 60, keepClosed: 1000, onError: 'refuse' };
    config.identity.localAttribution = false;
    config.identity.requireAuth = true;
    config.identity.users = [
      { name: 'alice', password: 'alice-pw', roles: ['any'] },
      { name: 'bob', passwordHash: bobHash, roles: ['any'] },
    ];
    config.identity.headers = { trustedSources: [], user: 'x-egress-user', host: 'x-egress-host', signed: { header: 'x-egress-token', secret: SECRET, maxAgeSec: 300 } };
    // Users not in identity.users (e.g. from a signed token) still get a role to reach the origin.
    config.defaultRoles = ['any'];
    gw = new MiniGateway(config);
    httpPort = await gw.listen();
    socksPort = await gw.listen('socks');
    httpsPort = await gw.listen({ tls: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert, requestCert: true } });
  }, 60_000);

  afterAll(async () => {
    await gw?.close();
    await origin?.close();
    await pki?.cleanup();
  });

  /** curl through a proxy; returns the status code and body. */
  async function curl(proxyArgs: string[], path: string, extra: string[] = []): Promise<{ status: number; body: string; stderr: string }> {
    const r = await run('curl', ['-sS', '--noproxy', '', ...proxyArgs, ...extra, '-w', '\n%{http_code}', `http://127.0.0.1:${origin.port}${path}`]);
    const text = r.stdout.toString('utf8');
    const nl = text.lastIndexOf('\n');
    return { status: Number(text.slice(nl + 1)), body: text.slice(0, nl), stderr: r.stderr };
  }

  const viaHttps = (cert: boolean): string[] => [
    '-x',
    `https://127.0.0.1:${httpsPort}`,
    '--proxy-cacert',
    pki.ca.certPath,
    ...(cert ? ['--proxy-cert', pki.clients['alice']!.certPath, '--proxy-key', pki.clients['alice']!.keyPath] : []),
  ];
  const viaHttp = (): string[] => ['-x', `http://127.0.0.1:${httpPort}`];

  function seenAt(path: string) {
    const s = origin.seen.find((r) => r.url === path);
    expect(s, `origin saw ${path}`).toBeDefined();
    return s!;
  }

  it('HTTPS proxy + client certificate CN=alice → the flow belongs to alice', async () => {
    const r = await curl(viaHttps(true), '/mtls');
    expect(r.stderr).toBe('');
    expect(r.status, `${r.body} ${r.stderr} ${JSON.stringify(gw.logs)}`).toBe(200);
    const rec = await gw.waitForRecord((f) => f.destination.port === origin.port && f.identity.user === 'alice');
    expect(rec.identity).toMatchObject({ user: 'alice', roles: ['any'] });
    mtlsFlowId = rec.id;
    seenAt('/mtls');
  });

  it('HTTPS proxy without a client certificate, auth required → 407', async () => {
    const r = await curl(viaHttps(false), '/no-cert');
    expect(r.status).toBe(407);
    expect(origin.seen.some((s) => s.url === '/no-cert')).toBe(false);
  });

  it('Basic proxy auth against a scrypt hash → bob; Proxy-Authorization never forwarded', async () => {
    const r = await curl(viaHttp(), '/basic', ['--proxy-user', 'bob:bob-pw']);
    expect(r.status, `${r.body} ${r.stderr} ${JSON.stringify(gw.logs)}`).toBe(200);
    const rec = await gw.waitForRecord((f) => f.identity.user === 'bob');
    expect(rec.identity.roles).toEqual(['any']);
    expect(seenAt('/basic').headers['proxy-authorization']).toBeUndefined();
  });

  it('wrong password → 407 and the origin sees nothing', async () => {
    const r = await curl(viaHttp(), '/wrong', ['--proxy-user', 'bob:nope']);
    expect(r.status).toBe(407);
    expect(origin.seen.some((s) => s.url === '/wrong')).toBe(false);
  });

  it('signed sidecar token from an untrusted address is believed, then stripped', async () => {
    const token = signIdentityToken({ user: 'carol', host: 'pod-7', exp: Math.floor(Date.now() / 1000) + 120 }, SECRET);
    const r = await curl(viaHttp(), '/signed', ['-H', `X-Egress-Token: ${token}`]);
    expect(r.status, `${r.body} ${r.stderr} ${JSON.stringify(gw.logs)}`).toBe(200);
    const rec = await gw.waitForRecord((f) => f.identity.user === 'carol');
    expect(rec.identity.host).toBe('pod-7');
    expect(seenAt('/signed').headers['x-egress-token']).toBeUndefined();
  });

  it('a forged token (wrong secret) → 407', async () => {
    const token = signIdentityToken({ user: 'carol', exp: Math.floor(Date.now() / 1000) + 120 }, 'not-the-secret-at-all');
    const r = await curl(viaHttp(), '/forged', ['-H', `X-Egress-Token: ${token}`]);
    expect(r.status).toBe(407);
  });

  it('identity headers from an untrusted client are ignored and stripped', async () => {
    const r = await curl(viaHttp(), '/spoof', ['--proxy-user', 'alice:alice-pw', '-H', 'X-Egress-User: bob', '-H', 'X-Egress-Host: db-1']);
    expect(r.status, `${r.body} ${r.stderr} ${JSON.stringify(gw.logs)}`).toBe(200);
    const seen = seenAt('/spoof');
    expect(seen.headers['x-egress-user']).toBeUndefined();
    expect(seen.headers['x-egress-host']).toBeUndefined();
    const rec = await gw.waitForRecord((f) => f.identity.user === 'alice' && f.id !== mtlsFlowId);
    expect(rec.identity.host).toBeNull();
  });

  it('keep-alive: a new signed token on the same connection is verified again (regression: identity cache key ignored it)', async () => {
    const exp = Math.floor(Date.now() / 1000) + 120;
    const sock = connect({ host: '127.0.0.1', port: httpPort });
    await once(sock, 'connect');
    let got = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      got += d;
    });
    const request = (path: string, user: string): string =>
      `GET http://127.0.0.1:${origin.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nX-Egress-Token: ${signIdentityToken({ user, exp }, SECRET)}\r\n\r\n`;
    try {
      sock.write(request('/ka-1', 'dave'));
      // Bounded: wait for the first full response before sending the second request.
      for (let i = 0; i < 100 && !/echo:GET:0/.test(got); i++) await once(sock, 'data');
      sock.write(request('/ka-2', 'erin'));
      const second = await gw.waitForRecord((f) => f.identity.user === 'erin');
      const first = await gw.waitForRecord((f) => f.identity.user === 'dave');
      expect(first.client.port).toBe(second.client.port);
    } finally {
      sock.destroy();
    }
  });

  /** SOCKS5 CONNECT to the origin with RFC 1929 credentials; one HTTP request through the tunnel. */
  async function socksGet(user: string, password: string, path: string): Promise<string> {
    const { socket } = await SocksClient.createConnection({
      proxy: { host: '127.0.0.1', port: socksPort, type: 5, userId: user, password },
      command: 'connect',
      destination: { host: '127.0.0.1', port: origin.port },
      timeout: 10_000,
    });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.end(`GET ${path} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n`);
    await once(socket, 'close');
    return Buffer.concat(chunks).toString('latin1');
  }

  it('SOCKS5 RFC 1929 against a scrypt hash → bob', async () => {
    const answer = await socksGet('bob', 'bob-pw', '/socks');
    expect(answer).toMatch(/^HTTP\/1\.1 200/);
    const rec = await gw.waitForRecord((f) => f.protocol === 'socks5' && f.identity.user === 'bob');
    expect(rec.identity.roles).toEqual(['any']);
  });

  it('SOCKS5 RFC 1929 with a wrong password is refused before any request', async () => {
    await expect(socksGet('bob', 'wrong', '/socks-wrong')).rejects.toThrow();
    expect(origin.seen.some((s) => s.url === '/socks-wrong')).toBe(false);
  });
});
