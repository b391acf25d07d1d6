/**
 * IPv6 literal destinations through the HTTP listener: `http://[::1]:port/` (absolute-URI) and
 * `CONNECT [::1]:port`. Skipped on a host without IPv6 loopback.
 */
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { pattern, rawConnect, readUntil, run } from './http-harness.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';

let gw: TestGateway;
let origin: Server | null = null;
let port = 0;
const sockets = new Set<Socket>();

beforeAll(async () => {
  const srv = createServer((req, res) => {
    const n = Number(/^\/size\/(\d+)/.exec(req.url ?? '')?.[1] ?? 0);
    res.writeHead(200, { 'content-length': n, 'x-host-seen': req.headers.host ?? '' });
    res.end(pattern(n));
  });
  srv.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const ok = await new Promise<boolean>((resolve) => {
    srv.once('error', () => resolve(false));
    srv.listen(0, '::1', () => resolve(true));
  });
  if (ok) {
    origin = srv;
    port = (srv.address() as { port: number }).port;
  }
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  for (const s of sockets) s.destroy();
  if (origin) await new Promise<void>((r) => origin?.close(() => r()));
});

/** Can this host listen on ::1? (Containers without IPv6 cannot.) */
const hasIpv6Loopback = await ipv6LoopbackAvailable();

describe.skipIf(!skipNotice(hasIpv6Loopback, 'http-ipv6', 'needs IPv6 loopback (::1)'))('IPv6 literal destinations', () => {
  it('absolute-URI http://[::1]:port/ — Host keeps the brackets, the flow records ::1', async () => {
    const r = await run('curl', ['-sS', '-g', '-D', '-', '--noproxy', '', '-x', `http://127.0.0.1:${gw.httpPort}`, `http://[::1]:${port}/size/321`]);
    expect(r.code).toBe(0);
    const text = r.stdout.toString('latin1');
    expect(text).toMatch(new RegExp(`\\r\\nx-host-seen: \\[::1\\]:${port}`, 'i'));
    const rec = await gw.waitForClosed((f) => f.destination.port === port && f.protocol === 'http');
    expect(rec.destination).toMatchObject({ host: '::1', ip: '::1' });
    expect(rec.bytesIn).toBe(321);
  });

  it('CONNECT [::1]:port', async () => {
    const s = await rawConnect(gw.httpPort);
    s.write(`CONNECT [::1]:${port} HTTP/1.1\r\nHost: [::1]:${port}\r\n\r\nGET /size/55 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    const got = await readUntil(s, pattern(55).toString());
    s.destroy();
    expect(got.toString('latin1')).toMatch(/^HTTP\/1\.1 200 Connection Established\r\ndate: [^\r]+ GMT\r\n\r\nHTTP\/1\.1 200/);
    const rec = await gw.waitForClosed((f) => f.destination.port === port && f.protocol === 'connect');
    expect(rec.destination).toMatchObject({ host: '::1', ip: '::1' });
    expect(rec.bytesOut).toBe('GET /size/55 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'.length);
  });
});
