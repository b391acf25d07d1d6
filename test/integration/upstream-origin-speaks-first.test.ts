/**
 * An absolute-URI request through a parent proxy to a destination that speaks first (an SSH banner):
 * the parent's CONNECT answer or SOCKS5 reply comes in one segment with the destination's first
 * bytes, so the socket the dial hands undici already holds bytes sent before any request.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent, startSocksParent } from '../helpers/parent-proxy.ts';
import { jsonBody, rawConnect, rawExchange, readUntil } from './http-harness.ts';
import { startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const BANNER = Buffer.from('SSH-2.0-OpenSSH_9.6\r\n');

let origin: TcpOrigin;
let httpParent: ParentProxy;
let socksParent: ParentProxy;
let gw: TestGateway | null = null;

beforeAll(async () => {
  origin = await startTcpOrigin('127.0.0.1', BANNER);
  httpParent = await startHttpParent();
  socksParent = await startSocksParent('child:s3cret');
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});
afterAll(async () => {
  await httpParent.close();
  await socksParent.close();
  await origin.close();
});

// Regression: undici, handed a socket that already held the destination's banner, failed that
// connection as a bad response without failing the request and dialled again at once, for ever: one
// GET made 10,212 connections through the parent in 3 s, and the client was answered nothing (no
// record either). Now the request is 502 upstream-bad-response after one connection.
describe('an absolute-URI request through a parent to a destination that speaks first', () => {
  const cases: Array<[string, () => ParentProxy, string]> = [
    ['http', () => httpParent, ''],
    ['socks5', () => socksParent, 'child:s3cret'],
  ];
  it.each(cases)('%s parent: 502 upstream-bad-response after one connection; a CONNECT tunnel to it still gets the banner', async (_name, parentOf, login) => {
    const parent = parentOf();
    parent.mode = { kind: 'relay', withFirstBytes: true };
    parent.seen.length = 0;
    gw = await startTestGateway({ upstream: parent.url(login || undefined) });
    const target = `127.0.0.1:${origin.port}`;

    const { response } = await rawExchange(gw.httpPort, `GET http://${target}/ HTTP/1.1\r\nHost: ${target}\r\nConnection: close\r\n\r\n`, 5000);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    expect(jsonBody(response).reason).toBe('upstream-bad-response');
    const rec = await gw.waitForClosed((r) => r.destination.port === origin.port);
    expect(rec.closeReason).toBe('upstream-bad-response');
    expect([rec.bytesIn, rec.bytesOut]).toEqual([0, 0]);
    expect(parent.seen.length).toBe(1);

    // The gateway goes on serving: a tunnel to the same destination gets the banner, counted exactly.
    const c = await rawConnect(gw.httpPort);
    c.on('error', () => {});
    c.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    const got = await readUntil(c, BANNER.toString('latin1'), 5000);
    expect(got.toString('latin1').startsWith('HTTP/1.1 200 ')).toBe(true);
    c.end();
    const tunnel = await gw.waitForClosed((r) => r.destination.port === origin.port && r.closeReason !== 'upstream-bad-response');
    expect([tunnel.bytesIn, tunnel.bytesOut, tunnel.closeReason]).toEqual([BANNER.length, 0, 'closed']);
    expect(parent.seen.length).toBe(2);
  });
});
