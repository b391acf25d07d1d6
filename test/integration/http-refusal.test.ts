/**
 * Refusals and failures on the HTTP listener (SPEC §4): status, JSON body, the headers that go with
 * each status, and the closed flow record each refusal still leaves behind.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, type Origin, rawConnect, rawExchange, readUntil, run, startOrigin } from './http-harness.ts';
import { closedPort } from '../helpers/closed-port.ts';

let origin: Origin;
let silent: Server;
let silentPort: number;
let deadPort: number;
const silentSockets = new Set<import('node:net').Socket>();

beforeAll(async () => {
  origin = await startOrigin();
  // An origin that accepts and never answers: the response-header timeout (idleTimeoutMs) fires.
  silent = createServer((s) => {
    silentSockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => silentSockets.delete(s));
  });
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  silentPort = (silent.address() as { port: number }).port;
  // A port nobody listens on, and no listener started later is given.
  deadPort = await closedPort();
});

afterAll(async () => {
  await origin?.close();
  for (const s of silentSockets) s.destroy();
  await new Promise<void>((r) => (silent ? silent.close(() => r()) : r()));
});

interface CurlAnswer {
  status: number;
  headers: string;
  body: Record<string, unknown>;
}

async function curlVia(gw: TestGateway, url: string, extra: string[] = []): Promise<CurlAnswer> {
  const r = await run('curl', ['-sS', '-i', '--noproxy', '', '-x', `http://127.0.0.1:${gw.httpPort}`, ...extra, url]);
  const text = r.stdout.toString('latin1');
  const split = text.indexOf('\r\n\r\n');
  const headers = text.slice(0, split);
  return { status: Number(headers.split(' ')[1]), headers, body: JSON.parse(text.slice(split + 4)) as Record<string, unknown> };
}

async function rawConnectRequest(gw: TestGateway, target: string, extra = ''): Promise<{ status: number; raw: string }> {
  const { response } = await rawExchange(gw.httpPort, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${extra}\r\n`);
  return { status: Number(response.split(' ')[1]), raw: response };
}

describe('policy refusals (enforce mode, not allowlisted)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({ mode: 'enforce', roles: { dev: { allow: [{ host: 'allowed.example', ports: [80] }] } }, defaultRoles: ['dev'] });
  });
  afterAll(() => gw?.stop());

  it('absolute-URI: 403, JSON body, X-Egress-Verdict, flow closed with the reason; origin never sees it', async () => {
    const before = origin.seen.length;
    const a = await curlVia(gw, `http://127.0.0.1:${origin.port}/nope`);
    expect(a.status).toBe(403);
    expect(a.headers).toMatch(/\r\nx-egress-verdict: block/i);
    expect(a.headers).toMatch(/\r\ncontent-type: application\/json/i);
    expect(a.body).toMatchObject({ error: 'egress denied', reason: 'not-allowlisted' });
    const rec = await gw.waitForClosed((f) => f.id === a.body.flowId);
    expect(rec).toMatchObject({ protocol: 'http', verdict: 'block', enforced: true, closeReason: 'not-allowlisted', bytesOut: 0, bytesIn: 0 });
    // The address is known (an IP literal) but was never dialled: no flow on the wire to hash.
    expect(rec.destination.ip).toBe('127.0.0.1');
    expect(rec.communityId).toBeNull();
    expect(origin.seen.length).toBe(before);
  });

  it('CONNECT: the same 403 and body on the raw socket, then close', async () => {
    const { status, raw } = await rawConnectRequest(gw, `127.0.0.1:${origin.port}`);
    expect(status).toBe(403);
    expect(raw).toMatch(/\r\nx-egress-verdict: block/i);
    const body = jsonBody(raw);
    expect(body).toMatchObject({ error: 'egress denied', reason: 'not-allowlisted' });
    const rec = await gw.waitForClosed((f) => f.id === body.flowId);
    expect(rec).toMatchObject({ protocol: 'connect', verdict: 'block', closeReason: 'not-allowlisted', bytesOut: 0, bytesIn: 0 });
    expect(rec.destination.ip).toBe('127.0.0.1');
    expect(rec.communityId).toBeNull();
  });
});

describe('deny-range (no allowRanges for loopback)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({ allowRanges: [] });
  });
  afterAll(() => gw?.stop());

  it.each(['http', 'connect'])('%s to 127.0.0.1 is 403 deny-range even in monitor mode', async (kind) => {
    const before = origin.seen.length;
    let body: Record<string, unknown>;
    if (kind === 'http') {
      const a = await curlVia(gw, `http://127.0.0.1:${origin.port}/ssrf`);
      expect(a.status).toBe(403);
      expect(a.headers).toMatch(/x-egress-verdict: block/i);
      body = a.body;
    } else {
      const { status, raw } = await rawConnectRequest(gw, `127.0.0.1:${origin.port}`);
      expect(status).toBe(403);
      body = jsonBody(raw);
    }
    expect(body.reason).toBe('deny-range');
    const rec = await gw.waitForClosed((f) => f.id === body.flowId);
    expect(rec).toMatchObject({ verdict: 'block', closeReason: 'deny-range', bytesOut: 0, bytesIn: 0 });
    expect(rec.destination.ip).toBe('127.0.0.1');
    // Classified, never dialled: Zeek and Suricata saw no such flow, so there is nothing to join.
    expect(rec.communityId).toBeNull();
    expect(origin.seen.length).toBe(before);
  });

  it('an IPv4-mapped IPv6 spelling of loopback is classified the same', async () => {
    const { status, raw } = await rawConnectRequest(gw, `[::ffff:127.0.0.1]:${origin.port}`);
    expect(status).toBe(403);
    expect(jsonBody(raw).reason).toBe('deny-range');
  });
});

describe('upstream failures and limits', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({
      limits: { idleTimeoutMs: 400, connectTimeoutMs: 2000 },
    });
  });
  afterAll(() => gw?.stop());

  it.each(['http', 'connect'])('%s to a closed port: 502 connection-refused, flow closed with the reason', async (kind) => {
    let status: number;
    let body: Record<string, unknown>;
    if (kind === 'http') {
      const a = await curlVia(gw, `http://127.0.0.1:${deadPort}/`);
      status = a.status;
      body = a.body;
      expect(a.headers).not.toMatch(/x-egress-verdict/i);
    } else {
      const r = await rawConnectRequest(gw, `127.0.0.1:${deadPort}`);
      status = r.status;
      body = jsonBody(r.raw);
    }
    expect(status).toBe(502);
    expect(body).toMatchObject({ error: 'destination unreachable', reason: 'connection-refused' });
    const rec = await gw.waitForClosed((f) => f.id === body.flowId);
    expect(rec).toMatchObject({ verdict: 'allow', closeReason: 'connection-refused', bytesOut: 0, bytesIn: 0 });
    // The dial was tried (a SYN answered by a reset: a REJ connection in Zeek), so it has its hash.
    expect(rec.communityId).toMatch(/^1:[A-Za-z0-9+/]{27}=$/);
  });

  it('an origin that never answers its headers: 504 after the idle timeout', async () => {
    const a = await curlVia(gw, `http://127.0.0.1:${silentPort}/hang`);
    expect(a.status).toBe(504);
    expect(a.body).toMatchObject({ error: 'upstream timeout', reason: 'connect-timeout' });
    const rec = await gw.waitForClosed((f) => f.id === a.body.flowId);
    expect(rec.closeReason).toBe('connect-timeout');
    expect(rec.bytesIn).toBe(0);
  });

  it.each(['http', 'connect'])('%s to the gateway itself is 403 deny-range (no proxy loop)', async (kind) => {
    let body: Record<string, unknown>;
    if (kind === 'http') {
      const a = await curlVia(gw, `http://127.0.0.1:${gw.httpPort}/loop`);
      expect(a.status).toBe(403);
      body = a.body;
    } else {
      const r = await rawConnectRequest(gw, `127.0.0.1:${gw.httpPort}`);
      expect(r.status).toBe(403);
      body = jsonBody(r.raw);
    }
    expect(body.reason).toBe('deny-range');
    const rec = await gw.waitForClosed((f) => f.id === body.flowId);
    expect(rec).toMatchObject({ verdict: 'block', closeReason: 'deny-range' });
    expect(rec.communityId).toBeNull();
  });

  it('a name that does not resolve: 502 dns-failed', async () => {
    const a = await curlVia(gw, 'http://no-such-host.invalid/');
    expect(a.status).toBe(502);
    expect(a.body.reason).toBe('dns-failed');
    const rec = await gw.waitForClosed((f) => f.id === a.body.flowId);
    expect(rec).toMatchObject({ closeReason: 'dns-failed', destination: { host: 'no-such-host.invalid', ip: null } });
  });
});

describe('per-identity limits', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    // The default idle timeout keeps the held tunnel open however slow the machine is.
    gw = await startTestGateway({ limits: { maxFlowsPerIdentity: 1 }, identity: { users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] } });
  });
  afterAll(() => gw?.stop());

  it('over maxFlowsPerIdentity: 429 with Retry-After, reason rate-limit', async () => {
    // Hold one tunnel open for alice, then ask for a second flow as alice.
    const auth = `Proxy-Authorization: Basic ${Buffer.from('alice:wonder').toString('base64')}\r\n`;
    const held = await rawConnect(gw.httpPort);
    held.write(`CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: x\r\n${auth}\r\n`);
    await readUntil(held, '\r\n\r\n');
    try {
      const a = await curlVia(gw, `http://127.0.0.1:${origin.port}/second`, ['--proxy-user', 'alice:wonder']);
      expect(a.status).toBe(429);
      expect(a.headers).toMatch(/\r\nretry-after: \d+/i);
      expect(a.body.reason).toBe('rate-limit');
      const rec = await gw.waitForClosed((f) => f.id === a.body.flowId);
      expect(rec.closeReason).toBe('rate-limit');
    } finally {
      held.destroy();
    }
  });

});

describe('authentication required', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({ identity: { requireAuth: true, users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] } });
  });
  afterAll(() => gw?.stop());

  it.each([
    ['no credentials', [] as string[]],
    ['a wrong password', ['--proxy-user', 'alice:nope']],
  ])('%s: 407 with Proxy-Authenticate, flow closed auth-required', async (_, extra) => {
    const a = await curlVia(gw, `http://127.0.0.1:${origin.port}/auth`, extra);
    expect(a.status).toBe(407);
    expect(a.headers).toMatch(/\r\nproxy-authenticate: Basic realm="egressgate"/i);
    expect(a.body.reason).toBe('auth-required');
    const rec = await gw.waitForClosed((f) => f.id === a.body.flowId);
    expect(rec.closeReason).toBe('auth-required');
  });

  it('the right password passes and the origin never sees Proxy-Authorization', async () => {
    const r = await run('curl', ['-sS', '--noproxy', '', '-x', `http://127.0.0.1:${gw.httpPort}`, '--proxy-user', 'alice:wonder', `http://127.0.0.1:${origin.port}/authed`]);
    expect(r.stdout.toString()).toBe('echo:GET:0');
    expect(origin.seen.find((s) => s.url === '/authed')?.headers['proxy-authorization']).toBeUndefined();
    const rec = await gw.waitForClosed((f) => f.identity.user === 'alice' && f.bytesIn === 'echo:GET:0'.length);
    expect(rec.closeReason).toBe('closed');
  });
});
