/**
 * The CONNECT the gateway sends an http parent for a client's CONNECT names, in our Via entry, the
 * version the client's CONNECT was received in (RFC 9110 §7.6.3, received-protocol), as the
 * absolute-URI and Upgrade paths do: `CONNECT host:port HTTP/1.0` (curl `--proxy1.0`) is passed on
 * with `Via: 1.0 egressgate-…`. Before, it said `1.1` whatever the client's version. Real gateway, real
 * curl and raw clients, a real parent relaying to a real origin.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent } from '../helpers/parent-proxy.ts';
import { type Origin, rawExchange, run, startOrigin } from './http-harness.ts';

let origin: Origin;
let parent: ParentProxy;
let gw: TestGateway;
let o: string;

beforeAll(async () => {
  origin = await startOrigin();
  o = `127.0.0.1:${origin.port}`;
  parent = await startHttpParent();
  gw = await startTestGateway({ upstream: parent.url() });
});

afterAll(async () => {
  await gw?.stop();
  await parent?.close();
  await origin?.close();
});

/** The Via of the next CONNECT the parent reads for our origin, after `act`. */
async function viaOnParent(act: () => Promise<unknown>): Promise<string | undefined> {
  const before = parent.seen.length;
  await act();
  const heads = parent.seen.slice(before).map((s) => s.head ?? '');
  expect(heads).toHaveLength(1);
  return /^via: (.*)$/im.exec(heads[0] as string)?.[1];
}

describe('the Via on the CONNECT to an http parent', () => {
  it('says 1.0 for a client CONNECT in HTTP/1.0 (curl --proxy1.0), and the tunnel works', async () => {
    let body = '';
    const via = await viaOnParent(async () => {
      const got = await run('curl', ['-s', '--proxy1.0', `127.0.0.1:${gw.httpPort}`, '-p', `http://${o}/size/5`]);
      expect(got.code).toBe(0);
      body = got.stdout.toString('latin1');
    });
    expect(body).toBe('abcde');
    expect(via).toMatch(/^1\.0 egressgate-[0-9a-f]{12}$/);
  });

  it('says 1.1 for a client CONNECT in HTTP/1.1 (curl -p), as before', async () => {
    const via = await viaOnParent(() => run('curl', ['-s', '-x', `127.0.0.1:${gw.httpPort}`, '-p', `http://${o}/size/5`]));
    expect(via).toMatch(/^1\.1 egressgate-[0-9a-f]{12}$/);
  });

  it('says 1.0 after the Via entries the HTTP/1.0 CONNECT carried', async () => {
    const via = await viaOnParent(() => rawExchange(gw.httpPort, `CONNECT ${o} HTTP/1.0\r\nVia: 1.0 edge\r\n\r\nGET /x HTTP/1.0\r\n\r\n`, 5000));
    expect(via).toMatch(/^1\.0 edge, 1\.0 egressgate-[0-9a-f]{12}$/);
  });
});
