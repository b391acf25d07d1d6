/**
 * The absolute-URI path's pooled connections through a parent proxy when a reload stops naming it:
 * one undici Agent is kept per parent URL (credentials included), so rotating the parent's
 * credentials (PUT /v1/policy, SIGHUP) leaves the Agent of the old URL and its pooled connections
 * to the parent, logged in with the old credentials. A reload closes the Agents it no longer names,
 * gracefully: a request in flight on one finishes, the next one goes through the new URL.
 */
import { once } from 'node:events';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminPut, runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent, startSocksParent } from '../helpers/parent-proxy.ts';
import { type Origin, startOrigin } from './http-harness.ts';

let origin: Origin;
/** Answers on /slow/<n> are held until the test lets them go (release). */
const held: Array<() => void> = [];

beforeAll(async () => {
  // `Keep-Alive: timeout=600`: undici keeps an idle pooled connection for its longest
  // (ORIGIN_KEEPALIVE_MAX_MS less its 2 s threshold, 8 s), so nothing here closes on its own meanwhile.
  origin = await startOrigin((req, res) => {
    const answer = (): void => {
      res.writeHead(200, { 'content-length': 2, 'keep-alive': 'timeout=600' });
      res.end('ok');
    };
    if (req.url?.startsWith('/slow/')) held.push(answer);
    else answer();
    return true;
  });
});

afterAll(async () => {
  await origin?.close();
});

/** An absolute-URI GET through the gateway's HTTP listener, on a connection of its own: status and body. */
async function get(gw: TestGateway, path: string): Promise<{ status: number; body: string }> {
  const req = request({ host: gw.httpHost, port: gw.httpPort, path: `http://127.0.0.1:${origin.port}${path}`, agent: false, timeout: 10_000 });
  req.on('timeout', () => req.destroy(new Error(`no answer to ${path} within 10 s`)));
  req.end();
  const [res] = (await once(req, 'response')) as [import('node:http').IncomingMessage];
  let body = '';
  res.setEncoding('latin1');
  res.on('data', (d: string) => {
    body += d;
  });
  await once(res, 'end');
  return { status: res.statusCode ?? 0, body };
}

async function rotateTo(gw: TestGateway, upstream: string): Promise<void> {
  expect(await adminPut(gw, '/v1/policy', { ...(await runningConfig(gw)), upstream })).toBe(200);
}

describe.each([
  ['http', startHttpParent],
  ['socks5', () => startSocksParent('*')],
] as const)('a reload that no longer names a %s parent URL', (_scheme, start) => {
  let parent: ParentProxy;
  let gw: TestGateway;

  beforeAll(async () => {
    parent = await start();
    gw = await startTestGateway({ upstream: parent.url('rot0:pw0') });
  });

  afterAll(async () => {
    await gw?.stop();
    await parent?.close();
  });

  it('closes its pooled connections to the parent at once; requests go through the new URL', async () => {
    expect(await get(gw, '/first')).toEqual({ status: 200, body: 'ok' });
    const rotations = 4;
    for (let i = 1; i <= rotations; i++) {
      // The old URL's connection is pooled, idle, open at the parent.
      expect(parent.openLogins()).toContain(`rot${i - 1}:pw${i - 1}`);
      await rotateTo(gw, parent.url(`rot${i}:pw${i}`));
      // Closed by the reload, well before its keep-alive (8 s) would close it.
      await until(`the pooled connection logged in as rot${i - 1} to close`, () => !parent.openLogins().includes(`rot${i - 1}:pw${i - 1}`), 4000);
      expect(await get(gw, `/after/${i}`)).toEqual({ status: 200, body: 'ok' });
      expect(parent.seen.at(-1)?.login).toBe(`rot${i}:pw${i}`);
    }
    expect(parent.openLogins()).toEqual([`rot${rotations}:pw${rotations}`]);
  });

  it('lets a request in flight on the old URL finish, and sends the next one through the new URL', async () => {
    const before = parent.seen.length;
    const inFlight = get(gw, '/slow/1');
    // Awaited below; a failure before that must not be an unhandled rejection.
    inFlight.catch(() => undefined);
    await until('the held request to reach the origin', () => held.length === 1, 5000);
    const oldLogin = parent.seen.at(-1)?.login ?? null;
    await rotateTo(gw, parent.url('next:pw'));
    expect(await get(gw, '/after-next')).toEqual({ status: 200, body: 'ok' });
    expect(parent.seen.at(-1)?.login).toBe('next:pw');
    // The old connection is still open: its request has not been answered yet.
    expect(parent.openLogins()).toContain(oldLogin);
    held.shift()?.();
    expect(await inFlight).toEqual({ status: 200, body: 'ok' });
    await until('the old connection to close once its request finished', () => !parent.openLogins().includes(oldLogin), 4000);
    expect(parent.seen.length).toBeGreaterThan(before);
  });
});
