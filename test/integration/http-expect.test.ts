/**
 * `Expect: 100-continue` on the absolute-URI path (RFC 9110 §10.1.1). The gateway decides before it
 * asks for the body: an admitted request gets `100 Continue`, then its final answer from the origin;
 * a refused one gets its final 403 at once, so the client never uploads to a destination it may not
 * reach. The Expect field itself is never passed on (the origin sees a plain request with the body).
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, rawConnect, readUntil, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let allowed: Origin;
let denied: Server;
let deniedPort = 0;
let deniedHits = 0;

beforeAll(async () => {
  allowed = await startOrigin();
  // A second origin on 127.0.0.2, which the policy does not allowlist.
  denied = createServer((_req, res) => {
    deniedHits++;
    res.end('should never be reached');
  });
  denied.listen(0, '127.0.0.2');
  await once(denied, 'listening');
  deniedPort = (denied.address() as { port: number }).port;
  gw = await startTestGateway({ mode: 'enforce', roles: { any: { allow: [{ cidr: '127.0.0.1/32' }] } } });
});

afterAll(async () => {
  await gw?.stop();
  await allowed?.close();
  await new Promise<void>((r) => (denied ? denied.close(() => r()) : r()));
});

function head(host: string, length: number): string {
  return `POST http://${host}/upload HTTP/1.1\r\nHost: ${host}\r\nContent-Length: ${length}\r\nExpect: 100-continue\r\n\r\n`;
}

describe('Expect: 100-continue', () => {
  it('admitted: 100 Continue first, then the body goes through and the origin never sees Expect', async () => {
    const host = `127.0.0.1:${allowed.port}`;
    const s = await rawConnect(gw.httpPort);
    s.write(head(host, 5));
    const interim = await readUntil(s, '\r\n\r\n');
    expect(interim.toString('latin1')).toBe('HTTP/1.1 100 Continue\r\n\r\n');
    const final = readUntil(s, 'echo:POST:5');
    s.write('hello');
    expect((await final).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    s.destroy();
    const seen = allowed.seen.at(-1);
    expect(seen?.body.toString()).toBe('hello');
    expect(seen?.headers.expect).toBeUndefined();
    const rec = await gw.waitForClosed((r) => r.destination.port === allowed.port && r.protocol === 'http');
    expect(rec.bytesOut).toBe(5);
  });

  it('refused: the final 403 comes without 100 Continue, and nothing reaches the origin', async () => {
    const host = `127.0.0.2:${deniedPort}`;
    const s = await rawConnect(gw.httpPort);
    s.write(head(host, 1_000_000));
    const answer = await readUntil(s, '\r\n\r\n');
    expect(answer.toString('latin1')).toMatch(/^HTTP\/1\.1 403 /);
    expect(answer.toString('latin1')).not.toContain('100 Continue');
    s.destroy();
    expect(deniedHits).toBe(0);
    const rec = await gw.waitForClosed((r) => r.destination.port === deniedPort);
    expect(rec).toMatchObject({ verdict: 'block', reason: 'not-allowlisted', bytesOut: 0 });
  });
});
