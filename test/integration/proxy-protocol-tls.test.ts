/**
 * PROXY protocol on the HTTPS proxy listener (`listen.https`), through the real gateway: a load
 * balancer puts the header first and the client's TLS handshake follows. The flow belongs to the
 * claimed client (its host identity, its record), as on the plain listeners; a trusted peer that
 * starts TLS without a header is closed. haproxy is the real load balancer, curl the real client.
 * The certificates are made by the real openssl for the test (test/helpers/tls.ts).
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { connect as connectTcp, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV1, encodeProxyV2 } from '../../gateway/protocol/proxy-protocol.ts';
import { echoOrigin, refusingPorts, type TcpOrigin } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { killIfRunning } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { createTestPki, type TestPki } from '../helpers/tls.ts';
import { type Origin, pattern, rawConnect, readUntil, run, startOrigin, wireOf } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';

const CLAIMED = { srcIp: '203.0.113.7', srcPort: 4444, dstIp: '127.0.0.1', dstPort: 8443 };
const CURL_IP = '127.0.0.9';
const HOSTS = [
  { cidr: '203.0.113.0/24', name: 'lb-client', roles: ['any'] },
  { cidr: `${CURL_IP}/32`, name: 'lb-curl', roles: ['any'] },
];

let pki: TestPki;
let echo: TcpOrigin;
let origin: Origin;
let gw: TestGateway;
let httpsPort: number;
const sockets = new Set<Socket>();

beforeAll(async () => {
  pki = await createTestPki({});
  echo = await echoOrigin('127.0.0.1');
  origin = await startOrigin();
  gw = await startTestGateway({
    listen: { https: '127.0.0.1:0' },
    tls: { cert: pki.server.certPath, key: pki.server.keyPath },
    proxyProtocol: { trustedSources: ['127.0.0.1/32'] },
    identity: { hosts: HOSTS },
    limits: { headerTimeoutMs: 1000 },
  });
  httpsPort = Number((gw.https as string).split(':').pop());
});

afterAll(async () => {
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await origin?.close();
  await echo?.close();
  await pki?.cleanup();
});

/** TCP to the HTTPS listener, `prefix` (a PROXY header) first, then TLS on the same connection. */
async function tlsAfter(prefix: Buffer): Promise<TLSSocket> {
  const raw = await rawConnect(httpsPort);
  raw.on('error', () => undefined);
  sockets.add(raw);
  raw.write(prefix);
  const s = tlsConnect({ socket: raw, ca: pki.ca.cert, host: '127.0.0.1' });
  s.on('error', () => undefined);
  await once(s, 'secureConnect');
  return s;
}

describe('PROXY protocol before TLS on the HTTPS listener (trusted 127.0.0.1/32)', () => {
  it('v1 header, then TLS, then CONNECT: the tunnel belongs to the claimed client and its host identity, bytes exact', async () => {
    const s = await tlsAfter(encodeProxyV1(CLAIMED));
    s.write(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${echo.port}\r\n\r\n`);
    expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 Connection Established\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n\r\n$/);
    const payload = randomBytes(32 * 1024);
    const done = readToEnd(s);
    s.end(payload);
    expect((await done).data.equals(payload)).toBe(true);
    const rec = await gw.waitForClosed((r) => r.protocol === 'connect' && r.client.port === CLAIMED.srcPort);
    expect(rec.client).toEqual({ ip: CLAIMED.srcIp, port: CLAIMED.srcPort });
    expect(rec.identity.host).toBe('lb-client');
    expect([rec.bytesOut, rec.bytesIn]).toEqual([payload.length, payload.length]);
  });

  it('v2 header (IPv6 claim), then TLS, then an absolute-URI request', async () => {
    const s = await tlsAfter(encodeProxyV2({ srcIp: '2001:db8::9', srcPort: 4446, dstIp: '::1', dstPort: 8443 }));
    s.write(`GET http://127.0.0.1:${origin.port}/size/300 HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`);
    const { data } = await readToEnd(s);
    expect(data.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(data.subarray(data.indexOf('\r\n\r\n') + 4).equals(pattern(300))).toBe(true);
    const rec = await gw.waitForClosed((r) => r.protocol === 'http' && r.client.port === 4446);
    expect(rec.client).toEqual({ ip: '2001:db8::9', port: 4446 });
    expect(rec.bytesIn).toBe(300);
  });

  it('a trusted peer that starts TLS without a header is closed and logged', async () => {
    const raw = await rawConnect(httpsPort);
    raw.on('error', () => undefined);
    sockets.add(raw);
    const s = tlsConnect({ socket: raw, ca: pki.ca.cert, host: '127.0.0.1' });
    const failed = await new Promise<string>((resolve) => {
      s.once('secureConnect', () => resolve('connected'));
      s.once('error', (err) => resolve(`error: ${err.message}`));
      s.once('close', () => resolve('closed'));
    });
    expect(failed).not.toBe('connected');
    expect(gw.logs.some((l) => l.msg === 'PROXY protocol: connection refused' && l['listener'] === 'https' && l['why'] === 'trusted source sent no PROXY header')).toBe(true);
  });

  // Regression: `client TLS refused` named the balancer (127.0.0.1), not the client its header
  // named: node's TLS socket asks the TCP handle for its peer, and only a finished handshake had the
  // claimed address copied onto it (carryRemoteToTls).
  it('a handshake that fails or times out after the header is logged with the claimed client', async () => {
    const from = gw.logs.length;
    const closed: Array<Promise<unknown>> = [];
    const plain = await rawConnect(httpsPort);
    plain.on('error', () => undefined);
    sockets.add(plain);
    closed.push(once(plain, 'close'));
    plain.write(Buffer.concat([encodeProxyV1({ ...CLAIMED, srcPort: 4445 }), Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n', 'latin1')]));
    const silent = await rawConnect(httpsPort);
    silent.on('error', () => undefined);
    sockets.add(silent);
    closed.push(once(silent, 'close'));
    silent.write(encodeProxyV2({ ...CLAIMED, srcIp: '2001:db8::7', dstIp: '2001:db8::1' }));
    // The HTTP request at once, the silent client at headerTimeoutMs (1 s).
    await Promise.all(closed);
    await until('both refusals logged', () => gw.logs.slice(from).filter((l) => l.msg === 'client TLS refused').length >= 2);
    const refused = gw.logs.slice(from).filter((l) => l.msg === 'client TLS refused').map((l) => [l['client'], l['tls'], l['code']]);
    expect(refused.sort()).toEqual([
      ['2001:db8::7', 'ERR_TLS_HANDSHAKE_TIMEOUT', 'EGW_HEADER_TIMEOUT'],
      [CLAIMED.srcIp, 'ERR_SSL_HTTP_REQUEST', 'EGW_BAD_REQUEST'],
    ]);
  });
});

/**
 * A real load balancer: haproxy in TCP mode with `send-proxy-v2` before the HTTPS listener and
 * `send-proxy` (v1) before the HTTP one. curl talks to haproxy from 127.0.0.9; haproxy reaches the
 * gateway from 127.0.0.1 (the trusted source). The records must name 127.0.0.9 and its host.
 * (curl's own `--haproxy-protocol` cannot stand in here: with an HTTPS proxy, curl 7.88 starts TLS
 * without sending the header first.)
 */
const haveHaproxy = skipNotice(spawnSync('sh', ['-c', 'command -v haproxy']).status === 0, 'PROXY protocol behind haproxy', 'haproxy is not installed');

describe.skipIf(!haveHaproxy)('behind haproxy (send-proxy-v2 / send-proxy)', () => {
  let lb: ChildProcess | null = null;
  let lbHttps = 0;
  let lbHttp = 0;
  beforeAll(async () => {
    // Two ports held together while taken: never the same one twice (haproxy binds with
    // SO_REUSEADDR and SO_REUSEPORT, so both frontends would listen on it and share its connections).
    [lbHttps = 0, lbHttp = 0] = await refusingPorts('127.0.0.1', 2);
    const cfg = join(pki.dir, 'haproxy.cfg');
    writeFileSync(
      cfg,
      [
        'global',
        '  maxconn 200',
        'defaults',
        '  mode tcp',
        '  timeout connect 5s',
        '  timeout client 30s',
        '  timeout server 30s',
        'frontend fe_https',
        `  bind 127.0.0.1:${lbHttps}`,
        '  default_backend be_https',
        'backend be_https',
        `  server gw 127.0.0.1:${httpsPort} send-proxy-v2`,
        'frontend fe_http',
        `  bind 127.0.0.1:${lbHttp}`,
        '  default_backend be_http',
        'backend be_http',
        `  server gw 127.0.0.1:${gw.httpPort} send-proxy`,
        '',
      ].join('\n'),
    );
    lb = spawn('haproxy', ['-f', cfg, '-db'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    lb.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    await waitForPort(lbHttps, () => stderr);
    await waitForPort(lbHttp, () => stderr);
  });
  afterAll(() => killIfRunning(lb));

  const viaLb = (proxy: string, args: string[]) =>
    run('curl', ['-sS', '--noproxy', '', '--interface', CURL_IP, '-x', proxy, '--proxy-cacert', pki.ca.certPath, ...args]);

  it('HTTPS proxy listener: CONNECT and absolute-URI belong to curl\'s address and host identity', async () => {
    const tunnel = await viaLb(`https://127.0.0.1:${lbHttps}`, ['-p', `http://127.0.0.1:${origin.port}/size/4096`]);
    expect(tunnel.code, tunnel.stderr).toBe(0);
    expect(tunnel.stdout.equals(pattern(4096))).toBe(true);
    const c = await gw.waitForClosed((r) => r.protocol === 'connect' && r.client.ip === CURL_IP);
    expect(c.identity.host).toBe('lb-curl');
    // Exactly what the origin's connection wrote (head and body) and read.
    const wire = await wireOf(origin, '/size/4096');
    expect(wire.written).toBeGreaterThan(4096);
    expect(c.bytesIn).toBe(wire.written);
    expect(c.bytesOut).toBe(wire.read);
    const abs = await viaLb(`https://127.0.0.1:${lbHttps}`, [`http://127.0.0.1:${origin.port}/size/700`]);
    expect(abs.code, abs.stderr).toBe(0);
    const h = await gw.waitForClosed((r) => r.protocol === 'http' && r.client.ip === CURL_IP && r.bytesIn === 700);
    expect(h.identity.host).toBe('lb-curl');
  });

  it('plain HTTP listener (send-proxy v1): the same', async () => {
    const r = await viaLb(`http://127.0.0.1:${lbHttp}`, [`http://127.0.0.1:${origin.port}/size/333`]);
    expect(r.code, r.stderr).toBe(0);
    const h = await gw.waitForClosed((x) => x.protocol === 'http' && x.client.ip === CURL_IP && x.bytesIn === 333);
    expect(h.identity.host).toBe('lb-curl');
  });
});

/** Resolves once something accepts on 127.0.0.1:port (haproxy has bound), within 10 s. */
async function waitForPort(port: number, stderr: () => string): Promise<void> {
  const until = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connectTcp(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`haproxy did not listen on ${port}: ${stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
