import { once } from 'node:events';
import { createServer, type Server, type Socket, connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Flow } from '../../../gateway/flow/flow.ts';
import type { Identity, ProcessInfo } from '../../../policy/types.ts';
import { bearer, type Harness, makeHarness, TOKENS } from './harness.ts';

const proc = (name: string): ProcessInfo => ({
  pid: 4242,
  name,
  exe: `/usr/bin/${name}`,
  cmdline: name,
  user: 'alice',
  uid: 1000,
  loginuid: 1000,
  ppid: 1,
  parentName: 'bash',
  parentExe: '/bin/bash',
});

const identity = (user: string | null, host: string | null, process: ProcessInfo | null = null): Identity => ({ user, host, roles: ['developer'], process });

/** A real downstream socket pair: the flow's abort destroys the server side, so the client sees close. */
async function socketPair(server: Server): Promise<{ client: Socket; accepted: Socket }> {
  const addr = server.address();
  if (!addr || typeof addr === 'string') throw new Error('no address');
  const acceptedP = once(server, 'connection') as Promise<[Socket]>;
  const client = connect({ host: '127.0.0.1', port: addr.port });
  await once(client, 'connect');
  const [accepted] = await acceptedP;
  return { client, accepted };
}

describe('flow routes with a real FlowTable and real sockets', () => {
  let h: Harness;
  let server: Server;
  const sockets: Socket[] = [];
  let live: Flow;
  let livePair: { client: Socket; accepted: Socket };
  let blocked: Flow;

  beforeAll(async () => {
    h = await makeHarness();
    server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    livePair = await socketPair(server);
    sockets.push(livePair.client, livePair.accepted);
    live = h.flows.open({
      protocol: 'connect',
      listener: 'http',
      client: { ip: '127.0.0.1', port: livePair.client.localPort ?? 0 },
      identity: identity('alice', 'ws-17', proc('curl')),
      destination: { host: 'api.example.com', ip: '93.184.216.34', port: 443 },
    });
    h.flows.decide(live, { verdict: 'allow', reason: 'allowed', detector: null, mode: 'monitor', matchedRule: { role: 'developer', index: 0, entry: 'host=*.example.com ports=443' }, reasons: ['ok'] }, false);
    live.bytesOut = 1234;
    live.abort = () => {
      livePair.accepted.resetAndDestroy();
    };
    blocked = h.flows.open({
      protocol: 'socks5',
      listener: 'socks',
      client: { ip: '127.0.0.1', port: 1 },
      identity: identity('bob', null),
      destination: { host: 'evil.test', ip: null, port: 443 },
    });
    h.flows.decide(blocked, { verdict: 'would-block', reason: 'not-allowlisted', detector: 'policy.deny', mode: 'monitor', matchedRule: null, reasons: [] }, false);
    h.flows.close(blocked, 'policy');
  });

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    server.close();
    await h.close();
  });

  it('lists live and closed flows, newest live first', async () => {
    const res = await h.app.inject({ url: '/v1/flows', headers: bearer(TOKENS.read) });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body.count).toBe(2);
    expect(body.flows.map((f: { id: string }) => f.id)).toEqual([live.id, blocked.id]);
    expect(body.flows[0]).toMatchObject({
      id: live.id,
      protocol: 'connect',
      state: 'active',
      verdict: 'allow',
      bytesOut: 1234,
      identity: { user: 'alice', host: 'ws-17', process: { name: 'curl', pid: 4242 } },
      destination: { host: 'api.example.com', port: 443 },
      matchedRule: { role: 'developer', index: 0 },
    });
  });

  it('filters: state, user, host, process, destination, verdict; limit and offset', async () => {
    const q = async (qs: string): Promise<string[]> =>
      (await h.app.inject({ url: `/v1/flows?${qs}`, headers: bearer(TOKENS.read) })).json().flows.map((f: { id: string }) => f.id);
    expect(await q('state=active')).toEqual([live.id]);
    expect(await q('state=closed')).toEqual([blocked.id]);
    expect(await q('user=bob')).toEqual([blocked.id]);
    expect(await q('host=ws-17')).toEqual([live.id]);
    expect(await q('process=curl')).toEqual([live.id]);
    expect(await q('destination=evil.test')).toEqual([blocked.id]);
    expect(await q('destination=93.184.216.34')).toEqual([live.id]);
    expect(await q('verdict=would-block')).toEqual([blocked.id]);
    expect(await q('limit=1')).toEqual([live.id]);
    expect(await q('limit=1&offset=1')).toEqual([blocked.id]);
    expect(await q('user=nobody')).toEqual([]);
  });

  it('bad filters are 400 with the parameter path', async () => {
    for (const qs of ['state=dead', 'limit=0', 'limit=abc', 'verdict=maybe', 'offset=-1']) {
      const res = await h.app.inject({ url: `/v1/flows?${qs}`, headers: bearer(TOKENS.read) });
      expect(res.statusCode, qs).toBe(400);
      expect(res.json().details[0].path, qs).toMatch(/^querystring\./);
    }
  });

  it('GET /v1/flows/:id: the flow, or 404', async () => {
    const one = await h.app.inject({ url: `/v1/flows/${live.id}`, headers: bearer(TOKENS.read) });
    expect(one.statusCode).toBe(200);
    expect(one.json()).toMatchObject({ id: live.id, state: 'active' });
    const none = await h.app.inject({ url: '/v1/flows/does-not-exist', headers: bearer(TOKENS.read) });
    expect(none.statusCode).toBe(404);
    expect(none.json()).toMatchObject({ error: 'not-found' });
  });

  it('DELETE kills the live flow: the client socket closes, the record says closeReason admin, audited', async () => {
    // The reset surfaces as ECONNRESET on the client, then 'close' (events.once would reject on the error).
    livePair.client.on('error', () => {});
    const clientClosed = new Promise<void>((resolve) => livePair.client.once('close', () => resolve()));
    const res = await h.app.inject({ method: 'DELETE', url: `/v1/flows/${live.id}`, headers: bearer(TOKENS.admin) });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ killed: true, flow: { id: live.id, state: 'closed', closeReason: 'admin' } });
    await clientClosed;
    expect(h.closed.find((r) => r.id === live.id)).toMatchObject({ closeReason: 'admin', state: 'closed' });
    const again = await h.app.inject({ method: 'DELETE', url: `/v1/flows/${live.id}`, headers: bearer(TOKENS.admin) });
    expect(again.statusCode).toBe(404);
    expect(again.json().message).toContain('not live');
    const unknown = await h.app.inject({ method: 'DELETE', url: '/v1/flows/zzz', headers: bearer(TOKENS.admin) });
    expect(unknown.statusCode).toBe(404);
    const audit = h.audit.list();
    expect(audit.map((a) => [a.route, a.path, a.status, a.detail])).toEqual([
      ['/v1/flows/:id', '/v1/flows/zzz', 404, 'flow zzz'],
      ['/v1/flows/:id', `/v1/flows/${live.id}`, 404, `flow ${live.id}`],
      ['/v1/flows/:id', `/v1/flows/${live.id}`, 200, `flow ${live.id}`],
    ]);
  });
  it('shows every field the flow log has: unattributed and attributedLate too', async () => {
    const unnamed = h.flows.open({
      protocol: 'connect',
      listener: 'http',
      client: { ip: '127.0.0.9', port: 40_001 },
      identity: identity('carol', 'ws-9'),
      destination: { host: 'cdn.example.com', ip: '93.184.216.35', port: 443 },
    });
    const late = h.flows.open({
      protocol: 'connect',
      listener: 'http',
      client: { ip: '127.0.0.9', port: 40_002 },
      identity: identity('carol', 'ws-9'),
      destination: { host: 'cdn.example.com', ip: '93.184.216.35', port: 443 },
    });
    try {
      unnamed.isUnattributed = true;
      h.flows.attributeLate(late, proc('wget'));
      for (const flow of [unnamed, late]) {
        const res = await h.app.inject({ url: `/v1/flows/${flow.id}`, headers: bearer(TOKENS.read) });
        expect(res.statusCode).toBe(200);
        // The admin view of a flow is its record as the flow log writes it, field for field (the
        // duration and last activity move on between the two reads).
        const { durationMs: _a, lastActivityAt: _b, ...view } = res.json();
        const { durationMs: _c, lastActivityAt: _d, ...logged } = JSON.parse(flow.toJsonLine(h.flows.now()));
        expect(view).toEqual(logged);
      }
      const list = (await h.app.inject({ url: '/v1/flows?user=carol', headers: bearer(TOKENS.read) })).json();
      expect(list.flows.find((f: { id: string }) => f.id === unnamed.id)).toMatchObject({ unattributed: true });
      expect(list.flows.find((f: { id: string }) => f.id === late.id)).toMatchObject({ attributedLate: true, identity: { process: { name: 'wget' } } });
    } finally {
      h.flows.close(unnamed, 'closed');
      h.flows.close(late, 'closed');
    }
  });
});
