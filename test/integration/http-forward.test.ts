/**
 * Absolute-URI forwarding through the real HTTP listener with curl (other clients: http-clients.test.ts).
 * Every test checks the flow record's byte counts against exactly what the test sent and received.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pattern, rawConnect, readUntil, run, startOrigin } from './http-harness.ts';

let gw: TestGateway;
let origin: Origin;
let proxy: string;
let base: string;
let dir: string;

beforeAll(async () => {
  origin = await startOrigin();
  gw = await startTestGateway({ identity: { users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] } });
  proxy = `http://127.0.0.1:${gw.httpPort}`;
  base = `http://127.0.0.1:${origin.port}`;
  dir = mkdtempSync(join(tmpdir(), 'egw-http-'));
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const curl = (args: string[]) => run('curl', ['-sS', '--noproxy', '', '-x', proxy, ...args]);

describe('absolute-URI HTTP through the proxy', () => {
  it('GET with curl: body streamed back, flow record counts exactly the response body', async () => {
    const r = await curl([`${base}/size/5000`]);
    expect(r.code).toBe(0);
    expect(r.stdout.equals(pattern(5000))).toBe(true);
    const rec = await gw.waitForClosed((f) => f.protocol === 'http' && f.destination.port === origin.port && f.closeReason === 'closed');
    expect(rec.bytesIn).toBe(5000);
    expect(rec.bytesOut).toBe(0);
    expect(rec.verdict).toBe('allow');
    expect(rec.destination).toMatchObject({ host: '127.0.0.1', ip: '127.0.0.1', port: origin.port });
    expect(origin.seen.at(-1)?.url).toBe('/size/5000');
  });

  it.each([
    ['POST', 200_003, ['--data-binary', '@FILE']],
    ['PUT', 200_011, ['-T', 'FILE']],
  ] as const)('%s with a Content-Length body: origin gets every byte, bytesOut matches', async (method, size, args) => {
    const body = pattern(size);
    const file = join(dir, `${method}.bin`);
    writeFileSync(file, body);
    const path = `/${method.toLowerCase()}-cl`;
    const r = await curl(['-X', method, ...args.map((a) => a.replace('FILE', file)), `${base}${path}`]);
    expect(r.code).toBe(0);
    const expected = `echo:${method}:${body.length}`;
    expect(r.stdout.toString()).toBe(expected);
    const seen = origin.seen.find((s) => s.url === path);
    expect(seen?.body.equals(body)).toBe(true);
    expect(seen?.headers['content-length']).toBe(String(body.length));
    const rec = await gw.waitForClosed((f) => f.protocol === 'http' && f.closeReason === 'closed' && f.bytesOut === body.length);
    expect(rec.bytesIn).toBe(expected.length);
  });

  it('chunked upload is streamed chunked to the origin; bytesOut counts payload, not chunk framing', async () => {
    const body = pattern(300_001);
    const file = join(dir, 'chunked.bin');
    writeFileSync(file, body);
    const r = await curl(['-H', 'Transfer-Encoding: chunked', '--data-binary', `@${file}`, `${base}/chunked-up`]);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe(`echo:POST:${body.length}`);
    const seen = origin.seen.find((s) => s.url === '/chunked-up');
    expect(seen?.headers['transfer-encoding']).toBe('chunked');
    expect(seen?.body.equals(body)).toBe(true);
    const rec = await gw.waitForClosed((f) => f.closeReason === 'closed' && f.bytesOut === body.length);
    expect(rec.bytesIn).toBe(`echo:POST:${body.length}`.length);
  });

  it('a chunked 1 MiB response arrives whole; bytesIn is the de-chunked body size', async () => {
    const n = 1024 * 1024 + 7;
    const r = await curl([`${base}/chunked/${n}`]);
    expect(r.code).toBe(0);
    expect(r.stdout.equals(pattern(n))).toBe(true);
    const rec = await gw.waitForClosed((f) => f.closeReason === 'closed' && f.bytesIn === n);
    expect(rec.bytesOut).toBe(0);
  });

  it('keep-alive: two requests on one client connection are two flow records, one origin connection', async () => {
    const before = gw.closed.length;
    const r = await curl(['-v', `${base}/size/10`, `${base}/size/20`]);
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(30);
    expect(r.stderr).toMatch(/Re-using existing connection/);
    await gw.waitForClosed((f) => f.bytesIn === 20 && gw.closed.indexOf(f) >= before);
    const recs = gw.closed.slice(before).filter((f) => f.protocol === 'http');
    expect(recs.map((f) => f.bytesIn)).toEqual([10, 20]);
    expect(recs[0]?.client.port).toBe(recs[1]?.client.port);
    expect(recs[0]?.id).not.toBe(recs[1]?.id);
    const seen = origin.seen.filter((s) => s.url === '/size/10' || s.url === '/size/20');
    expect(seen.at(-1)?.clientPort).toBe(seen.at(-2)?.clientPort);
  });

  it('pipelined requests on one raw connection: answered in order, one flow record each with exact counts', async () => {
    const before = gw.closed.length;
    const s = await rawConnect(gw.httpPort);
    const get = (p: string): string => `GET ${base}${p} HTTP/1.1\r\nHost: x\r\n\r\n`;
    s.write(`${get('/size/3000')}${get('/size/5')}POST ${base}/pipelined HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd`);
    const got = (await readUntil(s, 'echo:POST:4')).toString('latin1');
    s.destroy();
    const statuses = got.match(/HTTP\/1\.1 \d{3}/g);
    expect(statuses).toEqual(['HTTP/1.1 200', 'HTTP/1.1 200', 'HTTP/1.1 200']);
    expect(got.indexOf(pattern(3000).toString())).toBeLessThan(got.indexOf('echo:POST:4'));
    await gw.waitForClosed((f) => f.bytesOut === 4 && gw.closed.indexOf(f) >= before);
    const recs = gw.closed.slice(before).filter((f) => f.protocol === 'http');
    expect(recs.map((f) => [f.bytesOut, f.bytesIn, f.closeReason])).toEqual([
      [0, 3000, 'closed'],
      [0, 5, 'closed'],
      [4, 'echo:POST:4'.length, 'closed'],
    ]);
  });

  it('strips hop-by-hop fields, Proxy-Authorization and identity headers both ways; adds Via; rebuilds Host', async () => {
    const r = await curl([
      '-i',
      '--proxy-user', 'alice:wonder',
      '-H', 'Connection: X-Hop-Req',
      '-H', 'X-Hop-Req: 1',
      '-H', 'Keep-Alive: timeout=1',
      '-H', 'TE: trailers',
      '-H', 'Proxy-Connection: keep-alive',
      '-H', 'X-Egress-User: mallory',
      '-H', 'X-Egress-Host: forged',
      '-H', 'Host: elsewhere.example',
      '-H', 'X-End-To-End: yes',
      `${base}/hop`,
    ]);
    expect(r.code).toBe(0);
    const seen = origin.seen.find((s) => s.url === '/hop');
    expect(seen).toBeDefined();
    const h = seen?.headers ?? {};
    for (const name of ['x-hop-req', 'keep-alive', 'te', 'proxy-connection', 'proxy-authorization', 'x-egress-user', 'x-egress-host']) {
      expect(h[name], name).toBeUndefined();
    }
    // Connection on the gateway→origin hop is the gateway's own (undici's keep-alive), not the client's.
    expect(h.connection).toBe('keep-alive');
    expect(h.via).toBe(gw.ctx.via.value);
    expect(h.host).toBe(`127.0.0.1:${origin.port}`);
    expect(h['x-end-to-end']).toBe('yes');
    const head = r.stdout.toString('latin1').split('\r\n\r\n')[0] ?? '';
    expect(head).toMatch(/^HTTP\/1\.1 200/);
    expect(head).toMatch(new RegExp(`\\r\\nvia: 1\\.1 ${gw.ctx.via.pseudonym}(\\r\\n|$)`, 'i'));
    expect(head).toMatch(/\r\nX-End-To-End: kept/i);
    expect(head).not.toMatch(/X-Hop-Resp|Proxy-Authenticate/i);
    // The origin's Keep-Alive is dropped; the only one left is node's own for the client hop.
    expect(head.match(/keep-alive: timeout=/gi)?.length ?? 0).toBeLessThanOrEqual(1);
    const rec = await gw.waitForClosed((f) => f.identity.user === 'alice' && f.bytesIn === 2);
    expect(rec.bytesOut).toBe(0);
  });

  // Regression: an HTTP/1.0 request reached the origin with `Via: 1.1 egressgate`; RFC 9110 §7.6.3
  // makes the received-protocol the version of the message as received.
  it('Via names the version the request was received in: 1.0 for HTTP/1.0, one packet or split, 1.1 otherwise', async () => {
    const r = await curl(['--http1.0', `${base}/via-curl-1.0`]);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe('echo:GET:0');
    /** One request on a raw connection, its head whole in one write or split in two (node:http then). */
    const raw = async (path: string, version: string, isSplit: boolean): Promise<string> => {
      const s = await rawConnect(gw.httpPort);
      const head = `GET ${base}${path} HTTP/${version}\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`;
      if (isSplit) {
        s.write(head.slice(0, 20));
        await new Promise((res) => setTimeout(res, 50));
        s.write(head.slice(20));
      } else s.write(head);
      const got = await readUntil(s, 'echo:GET:0');
      s.destroy();
      return got.toString('latin1');
    };
    for (const [version, isSplit] of [['1.0', false], ['1.0', true], ['1.1', false], ['1.1', true]] as const) {
      const answer = await raw(`/via-${version}-${isSplit ? 'split' : 'whole'}`, version, isSplit);
      // The origin answered in HTTP/1.1: the response's entry says 1.1 whatever the request's version.
      expect(answer.match(/\r\nvia: [^\r]*/gi)).toEqual([`\r\nvia: 1.1 ${gw.ctx.via.pseudonym}`]);
    }
    const via = (path: string): unknown => origin.seen.find((x) => x.url === path)?.headers.via;
    expect(via('/via-curl-1.0')).toBe(`1.0 ${gw.ctx.via.pseudonym}`);
    expect(via('/via-1.0-whole')).toBe(`1.0 ${gw.ctx.via.pseudonym}`);
    expect(via('/via-1.0-split')).toBe(`1.0 ${gw.ctx.via.pseudonym}`);
    expect(via('/via-1.1-whole')).toBe(gw.ctx.via.value);
    expect(via('/via-1.1-split')).toBe(gw.ctx.via.value);
  });

  it('HEAD, DELETE, OPTIONS and PATCH pass with their method', async () => {
    for (const method of ['HEAD', 'DELETE', 'OPTIONS', 'PATCH']) {
      const args = method === 'HEAD' ? ['-I'] : ['-X', method];
      const r = await curl([...args, `${base}/m-${method}`]);
      expect(r.code, method).toBe(0);
      expect(origin.seen.find((s) => s.url === `/m-${method}`)?.method).toBe(method);
    }
    const head = await gw.waitForClosed((f) => f.closeReason === 'closed' && f.destination.port === origin.port && f.bytesIn === 0 && f.bytesOut === 0);
    expect(head.state).toBe('closed');
  });

  // Regression: TRACE and OPTIONS went to the origin with Max-Forwards unchanged, also at 0, where an
  // intermediary must not forward them but answer itself (RFC 9110 §7.6.2).
  it('Max-Forwards on TRACE and OPTIONS: 0 is answered by the gateway (TRACE reflected, less secrets), more is passed on one less', async () => {
    const before = origin.seen.length;
    const recordsBefore = gw.closed.length;
    const trace = await curl(['-i', '-X', 'TRACE', '-H', 'Max-Forwards: 0', '-H', 'Cookie: session=s3cr3t', '-H', 'X-Trace-Me: yes', '--proxy-user', 'alice:wonder', `${base}/mf-trace`]);
    expect(trace.code).toBe(0);
    const text = trace.stdout.toString('latin1');
    const split = text.indexOf('\r\n\r\n');
    expect(text.slice(0, split)).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(text.slice(0, split)).toMatch(/\r\ncontent-type: message\/http\r\n/i);
    const echoed = text.slice(split + 4);
    expect(echoed).toMatch(new RegExp(`^TRACE ${base}/mf-trace HTTP/1\\.1\r\n`));
    expect(echoed).toMatch(/\r\nX-Trace-Me: yes\r\n/);
    expect(echoed).toMatch(/\r\nMax-Forwards: 0\r\n/);
    expect(echoed).not.toMatch(/cookie|s3cr3t|proxy-authorization/i);
    const options = await curl(['-i', '-X', 'OPTIONS', '-H', 'Max-Forwards: 0', `${base}/mf-options`]);
    expect(options.stdout.toString('latin1')).toMatch(/^HTTP\/1\.1 200 OK\r\n(?:[^\r]+\r\n)*content-length: 0\r\n/i);
    // Admitted and recorded like any request, but nothing reached the origin.
    expect(origin.seen.length).toBe(before);
    const recs = gw.closed.slice(recordsBefore);
    // Nothing was dialled: no connection to the destination, no TCP flow for a Community ID to name.
    expect(recs.map((f) => [f.identity.user, f.protocol, f.verdict, f.closeReason, f.bytesOut, f.bytesIn, f.connected, f.communityId])).toEqual([
      ['alice', 'http', 'allow', 'closed', 0, 0, false, null],
      [null, 'http', 'allow', 'closed', 0, 0, false, null],
    ]);
    for (const [method, sent, expected] of [['OPTIONS', '2', '1'], ['TRACE', '1', '0'], ['GET', '0', '0']] as const) {
      const r = await curl(['-X', method, '-H', `Max-Forwards: ${sent}`, `${base}/mf-${method}-${sent}`]);
      expect(r.code, method).toBe(0);
      expect(origin.seen.find((q) => q.url === `/mf-${method}-${sent}`)?.headers['max-forwards'], method).toBe(expected);
    }
  });

});
