/**
 * The admin listener's own limits, through the real listener (startGateway, real sockets):
 * - an address that keeps presenting bad tokens is locked out (429 with Retry-After, no token
 *   checked, a good one neither) while other addresses are served, and is let back in after
 *   admin.authLockoutSec;
 * - at most admin.maxConnectionsPerSource connections open per address (429 in the error shape and
 *   closed), other addresses unaffected, a closed connection frees its place;
 * - alert streams (SSE) capped per token and in all (429 in the error shape);
 * - the Host name checked on every route, the token-free ones too (421), loopback names and IP
 *   literals accepted, admin.allowedHosts names accepted and the PAC file served to them;
 * each counted on /metrics.
 */
import { once } from 'node:events';
import { type IncomingMessage, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { adminGet, type DeepPartial, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import type { Config } from '../../policy/config.ts';

const READ_TOKEN = 'read-token-for-limits-0123';
let gw: TestGateway | null = null;
const sockets = new Set<Socket>();
const responses = new Set<IncomingMessage>();

afterEach(async () => {
  for (const r of responses) r.destroy();
  responses.clear();
  for (const s of sockets) s.destroy();
  sockets.clear();
  await gw?.stop();
  gw = null;
});

async function start(admin: DeepPartial<Config['admin']>): Promise<TestGateway> {
  gw = await startTestGateway({ admin: { tokens: [{ name: 'soc', token: READ_TOKEN, scope: 'read' }], ...admin } });
  return gw;
}

function adminPort(g: TestGateway): number {
  return Number(g.admin.slice(g.admin.lastIndexOf(':') + 1));
}

interface Answer {
  status: number;
  headers: IncomingMessage['headers'];
  body: string;
}

/** One request on its own connection from `from`; `keepOpen` returns at the head (SSE). */
function get(g: TestGateway, path: string, opts: { from?: string; token?: string; host?: string; keepOpen?: boolean } = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (opts.token) headers['authorization'] = `Bearer ${opts.token}`;
  if (opts.host) headers['host'] = opts.host;
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: adminPort(g), path, headers, agent: false, localAddress: opts.from ?? '127.0.0.1' }, (res) => {
      if (opts.keepOpen && res.statusCode === 200) {
        responses.add(res);
        resolve({ status: 200, headers: res.headers, body: '' });
        return;
      }
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer to ${path}`)));
    req.end();
  });
}

async function metric(g: TestGateway, name: string): Promise<number> {
  const { text } = await adminGet(g, '/metrics');
  const m = new RegExp(`^${name.replace(/[{}"=]/g, (c) => `\\${c}`)} (\\d+)$`, 'm').exec(text);
  if (!m) throw new Error(`${name} not in /metrics`);
  return Number(m[1]);
}

describe('bad tokens from one address', () => {
  it('lock the address out for admin.authLockoutSec: 429 unchecked, other addresses served', async () => {
    const g = await start({ maxAuthFailuresPerSource: 4, authLockoutSec: 2 });
    const guesser = '127.0.0.20';
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await get(g, '/v1/policy', { from: guesser, token: `guess-${i}` })).status);
    expect(statuses).toEqual([401, 401, 401, 401]);

    // In parallel, as a guesser would: every one refused before any token is looked at.
    const burst = await Promise.all(Array.from({ length: 30 }, (_, i) => get(g, '/v1/policy', { from: guesser, token: `guess-b${i}` })));
    expect(burst.map((a) => a.status)).toEqual(Array(30).fill(429));
    const retry = Number(burst[0]?.headers['retry-after']);
    expect(retry).toBeGreaterThanOrEqual(1);
    expect(retry).toBeLessThanOrEqual(2);
    expect(JSON.parse(burst[0]?.body ?? '{}')).toMatchObject({ error: 'too-many-requests' });
    // The right token from that address is not checked either; from another address it works.
    expect((await get(g, '/v1/policy', { from: guesser, token: g.adminToken })).status).toBe(429);
    expect((await get(g, '/v1/policy', { from: '127.0.0.21', token: g.adminToken })).status).toBe(200);
    expect((await get(g, '/healthz', { from: guesser })).status).toBe(200);

    expect(await metric(g, 'gw_admin_auth_failures_total')).toBe(4);
    expect(await metric(g, 'gw_admin_auth_locked_out_total')).toBe(31);
    expect(await metric(g, 'gw_admin_auth_lockouts_total')).toBe(1);

    await new Promise((r) => setTimeout(r, 2_100));
    expect((await get(g, '/v1/policy', { from: guesser, token: g.adminToken })).status).toBe(200);
  });

  it('requests without a token do not lock the address out', async () => {
    const g = await start({ maxAuthFailuresPerSource: 2, authLockoutSec: 60 });
    for (let i = 0; i < 4; i++) expect((await get(g, '/v1/mode', { from: '127.0.0.22' })).status).toBe(401);
    expect((await get(g, '/v1/mode', { from: '127.0.0.22', token: READ_TOKEN })).status).toBe(200);
  });
});

describe('connections per source', () => {
  /** A connection from `from`, established. */
  async function open(g: TestGateway, from: string): Promise<Socket> {
    const s = connect({ host: '127.0.0.1', port: adminPort(g), localAddress: from });
    sockets.add(s);
    s.on('error', () => undefined);
    await once(s, 'connect');
    return s;
  }

  /** Everything the server sends until it closes (or 3 s). */
  function readAll(s: Socket): Promise<string> {
    return new Promise((resolve) => {
      let text = '';
      const timer = setTimeout(() => resolve(text), 3_000);
      s.setEncoding('utf8');
      s.on('data', (c: string) => {
        text += c;
      });
      s.once('close', () => {
        clearTimeout(timer);
        resolve(text);
      });
    });
  }

  it('over admin.maxConnectionsPerSource: 429 in the error shape and closed; others served', async () => {
    const g = await start({ maxConnectionsPerSource: 3 });
    const flooder = '127.0.0.30';
    const held = [await open(g, flooder), await open(g, flooder), await open(g, flooder)];
    const extra = await open(g, flooder);
    extra.write(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`);
    const text = await readAll(extra);
    expect(text).toMatch(/^HTTP\/1\.1 429 /);
    expect(text).toMatch(/\r\nretry-after: 1\r\n/i);
    // Regression: this answer, written as text, had no nosniff (every other admin answer does).
    expect(text).toMatch(/\r\ncache-control: no-store\r\n/i);
    expect(text).toMatch(/\r\nx-content-type-options: nosniff\r\n/i);
    // Regression: this answer, written as text, had no Date (RFC 9110 §6.6.1).
    expect(text).toMatch(/\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n/i);
    const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as { error: string; message: string };
    expect(body.error).toBe('too-many-requests');
    expect(body.message).toContain('admin.maxConnectionsPerSource');
    expect(extra.destroyed || extra.readableEnded).toBe(true);

    // The held ones still work, another address is served, and a closed one frees its place.
    held[0]?.write(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`);
    const [chunk] = (await once(held[0] as Socket, 'data')) as [Buffer];
    expect(chunk.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect((await get(g, '/healthz', { from: '127.0.0.31' })).status).toBe(200);
    held[1]?.destroy();
    await until('the closed connection is released', async () => (await get(g, '/healthz', { from: flooder })).status === 200);
    expect(await metric(g, 'gw_admin_cx_source_limited_total')).toBeGreaterThanOrEqual(1);
  });

  // node's own header timeout applied here (60 s, checked every 30 s): idle connections held their
  // place in admin.maxConnectionsPerSource for up to 90 s whatever limits.headerTimeoutMs said.
  it('that send nothing, or half a request head, get 408 and are closed at limits.headerTimeoutMs; their places free', async () => {
    gw = await startTestGateway({ limits: { headerTimeoutMs: 300 }, admin: { tokens: [{ name: 'soc', token: READ_TOKEN, scope: 'read' }], maxConnectionsPerSource: 2 } });
    const g = gw;
    const from = '127.0.0.32';
    const silent = await open(g, from);
    const half = await open(g, from);
    half.write('GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n');
    for (const text of await Promise.all([readAll(silent), readAll(half)])) expect(text).toMatch(/^HTTP\/1\.1 408 /);
    expect(silent.destroyed || silent.readableEnded).toBe(true);
    expect(half.destroyed || half.readableEnded).toBe(true);
    // Their places are free: the same address is served.
    await until('the timed-out connections are released', async () => (await get(g, '/healthz', { from })).status === 200);
  });

  // fastify's keepAliveTimeout (72 s) applied: an idle keep-alive connection stayed open 73 s after
  // its answer, holding its place in admin.maxConnectionsPerSource all that time.
  it('idle after an answer on a keep-alive connection are closed by the server', async () => {
    const g = await start({ maxConnectionsPerSource: 1 });
    const from = '127.0.0.33';
    const s = await open(g, from);
    const closed = once(s, 'close');
    let text = '';
    s.setEncoding('utf8');
    s.on('data', (c: string) => {
      text += c;
    });
    s.write(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`);
    await until('the answer', () => text.includes('\r\n\r\n') && text.endsWith('}'));
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text).toMatch(/\r\nconnection: keep-alive\r\n/i);
    // Only a guard: the test asserts that the server closes it, not how soon.
    const guard = new Promise<'still open'>((r) => setTimeout(() => r('still open'), 25_000).unref());
    expect(await Promise.race([closed.then(() => 'closed' as const), guard])).toBe('closed');
    // Nothing else was sent, and its place is free.
    expect(text.match(/HTTP\/1\.1 /g)).toHaveLength(1);
    expect((await get(g, '/healthz', { from })).status).toBe(200);
  });

  // The admin listener was left out of the connection counters: always 0 there, whatever came.
  it('are counted in gw_downstream_cx_total / _active{listener="admin"}', async () => {
    const g = await start({});
    const total = 'gw_downstream_cx_total{listener="admin"}';
    const active = 'gw_downstream_cx_active{listener="admin"}';
    const [t0, a0] = [await metric(g, total), await metric(g, active)];
    const held = [await open(g, '127.0.0.40'), await open(g, '127.0.0.40'), await open(g, '127.0.0.41')];
    for (const s of held) {
      s.write(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`);
      const [chunk] = (await once(s, 'data')) as [Buffer];
      expect(chunk.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    }
    expect((await metric(g, total)) - t0).toBeGreaterThanOrEqual(3);
    expect((await metric(g, active)) - a0).toBeGreaterThanOrEqual(3);
    for (const s of held) s.destroy();
    await until('the closed connections leave the active count', async () => (await metric(g, active)) <= a0);
  });
});

describe('alert streams', () => {
  it('capped per token (admin.maxStreamsPerToken) and in all (admin.maxStreams)', async () => {
    const g = await start({ maxStreamsPerToken: 2, maxStreams: 3 });
    const from = '127.0.0.40';
    const a = await get(g, '/v1/alerts/stream', { from, token: READ_TOKEN, keepOpen: true });
    const b = await get(g, '/v1/alerts/stream', { from, token: READ_TOKEN, keepOpen: true });
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(a.headers['content-type']).toContain('text/event-stream');

    const third = await get(g, '/v1/alerts/stream', { from, token: READ_TOKEN, keepOpen: true });
    expect(third.status).toBe(429);
    expect(third.headers['retry-after']).toBe('5');
    expect(third.headers['content-type']).toContain('application/json');
    expect(JSON.parse(third.body)).toMatchObject({ error: 'too-many-requests', message: expect.stringContaining('admin.maxStreamsPerToken') });

    // Another token still has its own budget, up to the total.
    expect((await get(g, '/v1/alerts/stream', { from, token: g.adminToken, keepOpen: true })).status).toBe(200);
    const overTotal = await get(g, '/v1/alerts/stream', { from, token: g.adminToken, keepOpen: true });
    expect(overTotal.status).toBe(429);
    expect(JSON.parse(overTotal.body)).toMatchObject({ error: 'too-many-requests', message: expect.stringContaining('admin.maxStreams)') });
    expect(await metric(g, 'gw_admin_streams_active')).toBe(3);
    expect(await metric(g, 'gw_admin_streams_refused_total{limit="token"}')).toBe(1);
    expect(await metric(g, 'gw_admin_streams_refused_total{limit="total"}')).toBe(1);

    // A stream that ends gives its place back.
    [...responses][0]?.destroy();
    await until('the ended stream is released', async () => (await metric(g, 'gw_admin_streams_active')) === 2);
    expect((await get(g, '/v1/alerts/stream', { from, token: READ_TOKEN, keepOpen: true })).status).toBe(200);
  });
});

describe('Host header', () => {
  it('on a loopback listener: loopback names and IP literals only, on token-free routes too', async () => {
    const g = await start({});
    const port = adminPort(g);
    for (const path of ['/healthz', '/readyz', '/proxy.pac']) {
      const a = await get(g, path, { host: `rebound.attacker.example:${port}` });
      expect(a.status, path).toBe(421);
      expect(JSON.parse(a.body)).toMatchObject({ error: 'misdirected-request' });
    }
    expect((await get(g, '/v1/mode', { host: `rebound.attacker.example:${port}`, token: g.adminToken })).status).toBe(421);
    for (const host of [`localhost:${port}`, `LOCALHOST.:${port}`, `dash.localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`, '127.0.0.1']) {
      expect((await get(g, '/healthz', { host })).status, host).toBe(200);
    }
    const pac = await get(g, '/proxy.pac', { host: `localhost:${port}` });
    expect(pac.status).toBe(200);
    expect(pac.body).toContain(`PROXY 127.0.0.1:${g.httpPort}`);
    expect(await metric(g, 'gw_admin_host_refused_total')).toBe(4);
  });

  it('admin.allowedHosts names are answered (the PAC file by the name clients use), others not', async () => {
    const g = await start({ allowedHosts: ['gw.corp.example', '*.egress.example'] });
    const port = adminPort(g);
    const pac = await get(g, '/proxy.pac', { host: `gw.corp.example:${port}` });
    expect(pac.status).toBe(200);
    expect(pac.headers['content-type']).toContain('application/x-ns-proxy-autoconfig');
    expect(pac.body).toContain(`PROXY 127.0.0.1:${g.httpPort}`);
    expect((await get(g, '/v1/mode', { host: `a.egress.example:${port}`, token: g.adminToken })).status).toBe(200);
    expect((await get(g, '/proxy.pac', { host: `egress.example:${port}` })).status).toBe(421);
    expect((await get(g, '/proxy.pac', { host: `localhost:${port}` })).status).toBe(200);
  });
});
