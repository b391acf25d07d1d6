/**
 * HEAD /v1/alerts/stream through the real gateway's admin listener, over a raw socket. fastify
 * answers HEAD with the GET route, which opened a stream: node sends a HEAD's head only when the
 * response ends, so nothing at all came back (curl -I timed out with 0 bytes), the connection was
 * held until the client gave up, a request pipelined behind it was never answered, and the open
 * stream counted in gw_admin_streams_active and admin.maxStreamsPerToken. Now a HEAD gets the
 * stream's head at once and ends; no stream is opened.
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway, TEST_ADMIN_TOKEN } from '../helpers/gateway.ts';
import { readUntil } from './http-harness.ts';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function adminSocket(gw: TestGateway): Promise<Socket> {
  const at = gw.admin.lastIndexOf(':');
  const s = connect(Number(gw.admin.slice(at + 1)), gw.admin.slice(0, at));
  s.on('error', () => undefined);
  cleanups.push(() => s.destroy());
  await new Promise<void>((resolve) => s.once('connect', () => resolve()));
  return s;
}

/** The value of gw_admin_streams_active. */
async function streamsActive(gw: TestGateway): Promise<number> {
  const m = /^gw_admin_streams_active (\d+)$/m.exec((await adminGet(gw, '/metrics')).text);
  return Number(m?.[1]);
}

describe('HEAD /v1/alerts/stream', () => {
  it('answers the head at once, opens no stream, and the connection serves the next request', async () => {
    const gw = await startTestGateway({ admin: { maxStreamsPerToken: 2 } });
    cleanups.push(() => gw.stop());
    const s = await adminSocket(gw);
    const head = `HEAD /v1/alerts/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TEST_ADMIN_TOKEN}\r\n\r\n`;
    // Three HEADs (one more than the token's stream limit) and a GET pipelined behind them.
    s.write(`${head}${head}${head}GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
    const got = (await readUntil(s, '{"status":"ok"}')).toString('latin1');
    const heads = got.split('HTTP/1.1 ').slice(1);
    expect(heads).toHaveLength(4);
    for (const h of heads.slice(0, 3)) {
      expect(h).toMatch(/^200 /);
      expect(h).toMatch(/\r\ncontent-type: text\/event-stream; charset=utf-8\r\n/i);
      expect(h).toMatch(/\r\ncache-control: no-store, no-transform\r\n/i);
      expect(h).toMatch(/\r\nx-content-type-options: nosniff\r\n/i);
      // No body, no event: a HEAD.
      expect(h).not.toMatch(/retry:|: connected/);
    }
    expect(heads[3]).toMatch(/^200 /);
    expect(await streamsActive(gw)).toBe(0);

    // A real stream still opens (the HEADs took no place in admin.maxStreamsPerToken) and is counted.
    const g = await adminSocket(gw);
    g.write(`GET /v1/alerts/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TEST_ADMIN_TOKEN}\r\n\r\n`);
    expect((await readUntil(g, ': connected')).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(await streamsActive(gw)).toBe(1);
  });

  it('without a token is 401, as the GET', async () => {
    const gw = await startTestGateway();
    cleanups.push(() => gw.stop());
    const s = await adminSocket(gw);
    s.write('HEAD /v1/alerts/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const got = (await readUntil(s, '{"status":"ok"}')).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 401 /);
  });
});
