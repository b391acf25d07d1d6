/**
 * The CONNECT fast path of the HTTP listener (gateway/listeners/http-connect-front.ts), through the
 * real gateway: a CONNECT head in one packet is taken by the front, one that arrives byte by byte
 * goes to node:http — both must give the same tunnel and the same record. Credentials are checked
 * on the fast path (curl --proxytunnel --proxy-user), a silent client gets its 408 after
 * limits.headerTimeoutMs, every connection is counted in /metrics, and draining closes clients
 * that never sent a byte.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, rawConnect, readUntil, run, startOrigin } from './http-harness.ts';
import { startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const HEADER_TIMEOUT_MS = 600;
let gw: TestGateway;
let origin: Origin;
let echo: TcpOrigin;
let echoPort: number;

beforeAll(async () => {
  origin = await startOrigin();
  // Echoes everything and ends its side when the client ends its side.
  echo = await startTcpOrigin();
  echoPort = echo.port;
  gw = await startTestGateway({
    limits: { headerTimeoutMs: HEADER_TIMEOUT_MS },
    identity: { users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] },
  });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
  await echo?.close();
});

/** Send `head` (in one write, or one byte per write), then `payload`; read the echo; half-close. */
async function tunnelOnce(head: string, payload: string, byteByByte: boolean): Promise<{ reply: string; echoed: string }> {
  const s = await rawConnect(gw.httpPort);
  if (byteByByte) {
    for (const ch of head) {
      s.write(ch);
      await new Promise((r) => setTimeout(r, 2));
    }
  } else s.write(head);
  const got = await readUntil(s, '\r\n\r\n');
  const reply = got.toString('latin1');
  const headEnd = reply.indexOf('\r\n\r\n') + 4;
  let echoed = reply.slice(headEnd);
  s.write(payload);
  s.end();
  s.on('data', (c: Buffer) => {
    echoed += c.toString('latin1');
  });
  await once(s, 'close');
  return { reply: reply.slice(0, headEnd), echoed };
}

describe('CONNECT fast path', () => {
  it.each([
    ['in one packet (the fast path)', false],
    ['byte by byte (handed to node:http)', true],
  ])('a CONNECT head %s gives the same tunnel and an exact record', async (_what, byteByByte) => {
    const payload = `payload-${byteByByte ? 'slow' : 'fast'}-${'x'.repeat(1000)}`;
    const head = `CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\nUser-Agent: test\r\n\r\n`;
    const { reply, echoed } = await tunnelOnce(head, payload, byteByByte);
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(echoed).toBe(payload);
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect' && f.bytesOut === payload.length && f.bytesIn === payload.length);
    expect(rec.closeReason).toBe('closed');
    expect(rec.destination).toMatchObject({ host: '127.0.0.1', port: echoPort });
  });

  it('bytes sent with the head are tunnelled and counted', async () => {
    const early = 'early-bytes-in-the-same-packet';
    const s = await rawConnect(gw.httpPort);
    s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: x\r\n\r\n${early}`);
    const got = await readUntil(s, early);
    expect(got.toString('latin1')).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\nearly-bytes-in-the-same-packet$/);
    s.end();
    await once(s, 'close');
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect' && f.bytesOut === early.length);
    expect(rec.bytesIn).toBe(early.length);
  });

  it('checks Proxy-Authorization on the fast path: curl --proxytunnel --proxy-user names the user, a wrong password gets 407', async () => {
    const via = (user: string): Promise<{ stdout: Buffer }> =>
      run('curl', ['-sS', '--noproxy', '', '-p', '-x', `http://127.0.0.1:${gw.httpPort}`, '--proxy-user', user, '-o', '/dev/null', '-w', '%{http_connect} %{http_code}', `http://127.0.0.1:${origin.port}/tunnelled`], { timeoutMs: 5000 });
    const ok = await via('alice:wonder');
    expect(ok.stdout.toString()).toBe('200 200');
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect' && f.identity.user === 'alice');
    expect(rec.verdict).toBe('allow');
    expect(origin.seen.find((r) => r.url === '/tunnelled')?.headers['proxy-authorization']).toBeUndefined();
    const bad = await via('alice:nope');
    expect(bad.stdout.toString()).toMatch(/^407 /);
  });

  it('a client that sends nothing gets 408 after limits.headerTimeoutMs while others are served', async () => {
    const logsBefore = gw.logs.length;
    const silent = await rawConnect(gw.httpPort);
    const chunks: Buffer[] = [];
    silent.on('data', (c: Buffer) => chunks.push(c));
    const closed = once(silent, 'close');
    const t0 = Date.now();
    const { reply } = await tunnelOnce(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\n\r\n`, 'meanwhile', false);
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    await closed;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(HEADER_TIMEOUT_MS - 50);
    const answer = Buffer.concat(chunks).toString('latin1');
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(answer).toMatch(/"reason":"header-timeout"/);
    expect(gw.logs.slice(logsBefore).some((l) => l.code === 'EGW_HEADER_TIMEOUT')).toBe(true);
  });

  it('counts every connection in /metrics, whichever path served it', async () => {
    const metric = async (): Promise<number> => {
      const res = await fetch(`${gw.adminUrl}/metrics`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
      const m = /^gw_downstream_cx_total\{listener="http"\} (\d+)$/m.exec(await res.text());
      return Number(m?.[1] ?? Number.NaN);
    };
    const before = await metric();
    await tunnelOnce(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\n\r\n`, 'a', false);
    await tunnelOnce(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\n\r\n`, 'b', true);
    const r = await run('curl', ['-sS', '--noproxy', '', '-x', `http://127.0.0.1:${gw.httpPort}`, '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${echoPort}/`], { timeoutMs: 5000 });
    expect(r.code).not.toBeNull();
    expect(await metric()).toBe(before + 3);
  });
});

describe('CONNECT fast path while draining', () => {
  it('a client that never sent a byte is closed when the gateway drains', async () => {
    const g = await startTestGateway({ limits: { headerTimeoutMs: 30_000 } });
    const silent = await rawConnect(g.httpPort);
    silent.on('error', () => undefined);
    const closed = once(silent, 'close');
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    await g.stop();
    await closed;
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});
