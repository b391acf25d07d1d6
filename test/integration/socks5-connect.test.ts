/**
 * SOCKS5 CONNECT through the real listener with real clients (the `socks` package, curl), against
 * loopback origins; every flow record's byte counts checked against what the origin saw.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBytes, type SocksGateway, startSocksGateway, startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';
import { closedPort } from '../helpers/closed-port.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { adminGet, startTestGateway, until } from '../helpers/gateway.ts';
import { heldResolver } from '../helpers/socks-udp.ts';

const GREETING = Buffer.from('hello from origin\n');

let gw: SocksGateway;
let origin4: TcpOrigin;
let origin6: TcpOrigin | null = null;

beforeAll(async () => {
  gw = await startSocksGateway({
    identity: { users: [{ name: 'alice', password: 's3cret', roles: ['any'] }] },
    resolver: { hosts: { 'files.example.test': '127.0.0.1' } },
  });
  origin4 = await startTcpOrigin('127.0.0.1', GREETING);
  try {
    origin6 = await startTcpOrigin('::1', GREETING);
  } catch {
    origin6 = null; // no IPv6 loopback on this machine
  }
});

afterAll(async () => {
  await gw.stop();
  await origin4.close();
  await origin6?.close();
});

/** Send `payload` through an established tunnel, half-close, read the whole answer. */
async function roundTrip(socket: Socket, payload: Buffer): Promise<Buffer> {
  socket.end(payload);
  return readBytes(socket, GREETING.length + payload.length + 1);
}

describe('SOCKS5 CONNECT with the socks client', () => {
  it.each([
    ['ipv4', '127.0.0.1'],
    ['domain via resolver.hosts', 'files.example.test'],
  ])('%s: bytes both ways and an exact flow record', async (_name, host) => {
    const before = origin4.done.length;
    const { socket } = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
      command: 'connect',
      destination: { host, port: origin4.port },
    });
    const payload = Buffer.alloc(100_000, 0x61);
    const answer = await roundTrip(socket, payload);
    expect(answer.length).toBe(GREETING.length + payload.length);
    expect(answer.subarray(0, GREETING.length)).toEqual(GREETING);
    const rec = await gw.waitForClosed((r) => r.destination.port === origin4.port && r.destination.host === host);
    const [seen] = (await origin4.waitDone(before + 1)).slice(before);
    expect(rec.protocol).toBe('socks5');
    expect(rec.destination).toEqual({ host, ip: '127.0.0.1', port: origin4.port });
    expect(rec.bytesOut).toBe(payload.length);
    expect(rec.bytesIn).toBe(GREETING.length + payload.length);
    expect(seen).toEqual({ bytesRead: rec.bytesOut, bytesWritten: rec.bytesIn });
    expect(rec.verdict).toBe('allow');
    expect(rec.communityId).toMatch(/^1:/);
  });

  it('ipv6 literal', async (tctx) => {
    if (!skipNotice(origin6 !== null && origin6 !== undefined, 'socks5 ipv6 literal', 'needs IPv6 loopback (::1)')) tctx.skip();
    const o6 = origin6 as TcpOrigin;
    const { socket } = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '::1', port: o6.port },
    });
    const payload = Buffer.from('over v6');
    const answer = await roundTrip(socket, payload);
    expect(answer.toString()).toBe(GREETING.toString() + 'over v6');
    const rec = await gw.waitForClosed((r) => r.destination.port === o6.port);
    expect(rec.destination.ip).toBe('::1');
    expect(rec.bytesOut).toBe(payload.length);
    expect(rec.bytesIn).toBe(GREETING.length + payload.length);
  });

  it('the success reply carries the bound address of the upstream socket', async () => {
    const before = origin4.done.length;
    const info = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: origin4.port },
    });
    // The origin sees the gateway's upstream socket; the reply named the same local port.
    const remote = info.remoteHost as { host: string; port: number };
    expect(remote.host).toBe('127.0.0.1');
    expect(remote.port).toBeGreaterThan(0);
    info.socket.end();
    await readBytes(info.socket, GREETING.length + 1);
    await origin4.waitDone(before + 1);
  });

  it('username/password: right credentials name the user; wrong ones get status 0x01', async () => {
    const { socket } = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5, userId: 'alice', password: 's3cret' },
      command: 'connect',
      destination: { host: '127.0.0.1', port: origin4.port },
    });
    const answer = await roundTrip(socket, Buffer.from('hi'));
    expect(answer.length).toBe(GREETING.length + 2);
    const rec = await gw.waitForClosed((r) => r.identity.user === 'alice');
    expect(rec.bytesOut).toBe(2);
    expect(rec.bytesIn).toBe(GREETING.length + 2);

    await expect(
      SocksClient.createConnection({
        proxy: { host: gw.socksHost, port: gw.socksPort, type: 5, userId: 'alice', password: 'wrong' },
        command: 'connect',
        destination: { host: '127.0.0.1', port: origin4.port },
      }),
    ).rejects.toThrow(/auth/i);
  });

  it('refusals carry the mapped reply byte: refused 0x05, deny-range 0x02', async () => {
    // A port nothing listens on, below the ephemeral range (no listener started later takes it).
    const deadPort = await closedPort();
    await expect(
      SocksClient.createConnection({
        proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
        command: 'connect',
        destination: { host: '127.0.0.1', port: deadPort },
      }),
    ).rejects.toThrow(/ConnectionRefused/);
    const rec = await gw.waitForClosed((r) => r.destination.port === deadPort);
    expect(rec.closeReason).toBe('connection-refused');
    expect(rec.bytesOut).toBe(0);
    // 10.0.0.1 is RFC 1918: denied after resolution whatever the role allows.
    await expect(
      SocksClient.createConnection({
        proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
        command: 'connect',
        destination: { host: '10.0.0.1', port: 80 },
      }),
    ).rejects.toThrow(/NotAllowed/);
    const denied = await gw.waitForClosed((r) => r.destination.host === '10.0.0.1');
    expect(denied.reason).toBe('deny-range');
    expect(denied.verdict).toBe('block');
  });

  it('a name that does not resolve: host unreachable 0x04, reason dns-failed', async () => {
    await expect(
      SocksClient.createConnection({
        proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
        command: 'connect',
        destination: { host: 'nowhere.invalid', port: 80 },
      }),
    ).rejects.toThrow(/HostUnreachable/);
    const rec = await gw.waitForClosed((r) => r.destination.host === 'nowhere.invalid');
    expect(rec.closeReason).toBe('dns-failed');
  });

  it('the gateway never dials its own listener', async () => {
    await expect(
      SocksClient.createConnection({
        proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
        command: 'connect',
        destination: { host: '127.0.0.1', port: gw.socksPort },
      }),
    ).rejects.toThrow(/NotAllowed/);
  });
});

describe('curl --socks5-hostname --proxy-user', () => {
  let http: HttpServer;
  let httpPort: number;
  const seen: Array<{ bytesRead: number; bytesWritten: number }> = [];
  beforeAll(async () => {
    http = createHttpServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.setHeader('connection', 'close');
        res.end('x'.repeat(4321));
      });
    });
    http.on('connection', (s: Socket) =>
      s.once('close', () => {
        seen.push({ bytesRead: s.bytesRead, bytesWritten: s.bytesWritten });
        http.emit('conn-done');
      }),
    );
    http.listen(0, '127.0.0.1');
    await once(http, 'listening');
    httpPort = (http.address() as AddressInfo).port;
  });
  afterAll(async () => {
    http.closeAllConnections();
    await new Promise<void>((r) => http.close(() => r()));
  });

  it('fetches through the gateway, record matches the origin socket byte for byte', async () => {
    const out = await new Promise<{ stdout: string; code: number | null }>((resolve) => {
      execFile(
        'curl',
        ['-sS', '--max-time', '15', '--socks5-hostname', `${gw.socksHost}:${gw.socksPort}`, '--proxy-user', 'alice:s3cret', `http://files.example.test:${httpPort}/x`],
        (err, stdout) => resolve({ stdout, code: err ? ((err as { code?: number }).code ?? 1) : 0 }),
      );
    });
    expect(out.code).toBe(0);
    expect(out.stdout).toBe('x'.repeat(4321));
    const rec = await gw.waitForClosed((r) => r.destination.port === httpPort);
    expect(rec.identity.user).toBe('alice');
    expect(rec.destination.host).toBe('files.example.test');
    if (seen.length === 0) await once(http, 'conn-done');
    expect(seen[0]).toEqual({ bytesRead: rec.bytesOut, bytesWritten: rec.bytesIn });
  });
});

describe('dial timeout', () => {
  it('a destination that never answers the SYN: TTL expired 0x06, reason connect-timeout', async () => {
    // A listener that never accepts, its one-slot accept queue filled: further SYNs are dropped.
    // The system interpreter directly: a pyenv shim in front of it costs seconds.
    const py = spawn(existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3', [
      '-c',
      'import socket,sys\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()',
    ]);
    const fillers: Socket[] = [];
    const slow = await startSocksGateway({ limits: { connectTimeoutMs: 300 } });
    try {
      const [line] = (await once(py.stdout, 'data')) as [Buffer];
      const port = Number(line.toString().trim());
      for (let i = 0; i < 3; i++) {
        const f = connect(port, '127.0.0.1');
        f.on('error', () => {});
        fillers.push(f);
      }
      await once(fillers[0] as Socket, 'connect');
      await expect(
        SocksClient.createConnection({
          proxy: { host: slow.socksHost, port: slow.socksPort, type: 5 },
          command: 'connect',
          destination: { host: '127.0.0.1', port },
          timeout: 10_000,
        }),
      ).rejects.toThrow(/TTLExpired/);
      const rec = await slow.waitForClosed((r) => r.destination.port === port);
      expect(rec.closeReason).toBe('connect-timeout');
    } finally {
      for (const f of fillers) f.destroy();
      py.kill();
      await slow.stop();
    }
  });
});

describe('a client that leaves while its CONNECT is being admitted', () => {
  // Regression: recorded closeReason 'client-closed', a value no other flow has (an HTTP CONNECT
  // whose client leaves while it is dialled says client-reset, as docs/spec-notes.md lists).
  it('is recorded client-reset, and the destination is never dialled', async () => {
    const dns = heldResolver((h) => h === 'slow.example.test');
    const held = await startTestGateway({}, { resolver: dns.resolver });
    try {
      const before = origin4.done.length;
      const s = connect({ host: held.socksHost, port: held.socksPort });
      s.on('error', () => {});
      await once(s, 'connect');
      const name = Buffer.from('slow.example.test');
      s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x03, name.length]), name, Buffer.from([origin4.port >> 8, origin4.port & 0xff])]));
      await until('the lookup under way', () => dns.waiting.length === 1);
      s.resetAndDestroy();
      await until('the gateway saw the client go', async () => /gw_downstream_cx_active\{listener="socks"\} 0\b/.test((await adminGet(held, '/metrics')).text));
      dns.waiting[0]?.answer('127.0.0.1');
      const rec = await held.waitForClosed((r) => r.destination.host === 'slow.example.test');
      expect([rec.protocol, rec.closeReason, rec.bytesOut, rec.bytesIn]).toEqual(['socks5', 'client-reset', 0, 0]);
      expect(origin4.done.length).toBe(before);
    } finally {
      dns.failAll();
      await held.stop();
    }
  });
});
