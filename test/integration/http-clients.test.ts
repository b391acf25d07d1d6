/**
 * Absolute-URI and CONNECT through the real HTTP listener with the other real clients: wget
 * (http_proxy), python3 urllib (ProxyHandler), undici ProxyAgent (proxyTunnel:false and default).
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, type Origin, rawExchange, run, startOrigin, wireOf } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
let proxy: string;
let base: string;
let dir: string;

beforeAll(async () => {
  origin = await startOrigin();
  gw = await startTestGateway();
  proxy = `http://127.0.0.1:${gw.httpPort}`;
  base = `http://127.0.0.1:${origin.port}`;
  dir = mkdtempSync(join(tmpdir(), 'egw-clients-'));
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('other real clients through the HTTP listener', () => {
  it('wget with http_proxy', async () => {
    const out = join(dir, 'wget.out');
    const r = await run('wget', ['-q', '-O', out, `${base}/size/7777`], { env: { ...process.env, http_proxy: proxy, no_proxy: '' } });
    expect(r.code).toBe(0);
    // What wget saved is what the record says came in; a GET sends no body.
    expect(statSync(out).size).toBe(7777);
    const rec = await gw.waitForClosed((f) => f.bytesIn === 7777);
    expect(rec.protocol).toBe('http');
    expect(rec.bytesOut).toBe(0);
    expect(origin.seen.find((s) => s.url === '/size/7777')?.headers['user-agent']).toMatch(/Wget/);
  });

  it('python3 urllib with a ProxyHandler, POST body', async () => {
    const script = [
      'import sys, urllib.request',
      `opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": "${proxy}"}))`,
      `r = opener.open(urllib.request.Request("${base}/py", data=b"x" * 4321, method="POST"))`,
      'sys.stdout.write(r.read().decode())',
    ].join('\n');
    const r = await run('python3', ['-c', script]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.toString()).toBe('echo:POST:4321');
    const rec = await gw.waitForClosed((f) => f.bytesOut === 4321);
    expect(rec.bytesIn).toBe('echo:POST:4321'.length);
  });

  it('undici ProxyAgent with proxyTunnel:false uses the absolute-URI path', async () => {
    const agent = new ProxyAgent({ uri: proxy, proxyTunnel: false });
    try {
      const res = await request(`${base}/size/3333`, { dispatcher: agent });
      const body = Buffer.from(await res.body.arrayBuffer());
      expect(res.statusCode).toBe(200);
      expect(res.headers.via).toBe(gw.ctx.via.value);
      expect(body.length).toBe(3333);
    } finally {
      await agent.close();
    }
    const rec = await gw.waitForClosed((f) => f.bytesIn === 3333);
    expect(rec.protocol).toBe('http');
  });

  it('undici ProxyAgent default tunnels with CONNECT', async () => {
    const agent = new ProxyAgent({ uri: proxy });
    let received = 0;
    try {
      const res = await request(`${base}/size/4444`, { dispatcher: agent });
      received = Buffer.from(await res.body.arrayBuffer()).length;
      expect(res.statusCode).toBe(200);
      expect(res.headers.via).toBeUndefined();
    } finally {
      await agent.close();
    }
    expect(received).toBe(4444);
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect' && f.destination.port === origin.port);
    // The tunnel carries the whole HTTP exchange: request head out, response head + body in,
    // exactly what the origin's connection read and wrote.
    const wire = await wireOf(origin, '/size/4444');
    expect(wire.written).toBeGreaterThan(4444);
    expect(rec.bytesIn).toBe(wire.written);
    expect(rec.bytesOut).toBe(wire.read);
  });
});

// Regression: `http://host:/path` (an empty port: the default, RFC 3986 §3.2.3) was refused 400
// bad-request without a flow; python3 urllib sends the URL as written (curl and wget drop the colon).
describe('an absolute URI with an empty port', () => {
  let own: TestGateway;
  beforeAll(async () => {
    // Loopback is denied here, so the request is judged and recorded but never dialled (no port 80 needed).
    own = await startTestGateway({ allowRanges: [], resolver: { hosts: { 'empty-port.example': '127.0.0.1' } } });
  });
  afterAll(() => own?.stop());

  it('python3 urllib: judged as port 80 (403 deny-range and its record), not 400; CONNECT still needs a port', async () => {
    const script = [
      'import sys, urllib.request, urllib.error',
      `opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": "http://127.0.0.1:${own.httpPort}"}))`,
      'try:',
      '    opener.open("http://empty-port.example:/x")',
      'except urllib.error.HTTPError as e:',
      '    sys.stdout.write(str(e.code) + " " + e.read().decode())',
    ].join('\n');
    const r = await run('python3', ['-c', script]);
    expect(r.code, r.stderr).toBe(0);
    const text = r.stdout.toString();
    expect(text.slice(0, 4)).toBe('403 ');
    const body = JSON.parse(text.slice(4)) as Record<string, unknown>;
    expect(body).toMatchObject({ error: 'egress denied', reason: 'deny-range' });
    const rec = await own.waitForClosed((f) => f.id === body.flowId);
    expect(rec).toMatchObject({ protocol: 'http', destination: { host: 'empty-port.example', ip: '127.0.0.1', port: 80 }, closeReason: 'deny-range' });
    const connect = await rawExchange(own.httpPort, 'CONNECT empty-port.example: HTTP/1.1\r\nHost: empty-port.example\r\n\r\n');
    expect(connect.response).toMatch(/^HTTP\/1\.1 400 /);
    expect(jsonBody(connect.response)).toMatchObject({ reason: 'bad-request', flowId: null });
  });
});
