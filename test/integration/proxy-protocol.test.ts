/**
 * PROXY protocol behind a TCP load balancer (SPEC §8), through the real gateway: a trusted peer's
 * v1/v2 header becomes the flow's client address (and so its host-inventory identity); a trusted
 * peer without a header, or with a late one, is closed; an untrusted peer's header is refused and
 * never believed, while its ordinary traffic passes through unchanged. Bytes are checked exactly.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV1, encodeProxyV2 } from '../../gateway/protocol/proxy-protocol.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pattern, rawConnect, readUntil, run, startOrigin } from './http-harness.ts';
import { readBytes, readToEnd } from './socks5-harness.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';

const CLAIMED = { srcIp: '203.0.113.7', srcPort: 4444, dstIp: '127.0.0.1', dstPort: 8080 };
const HOSTS = [{ cidr: '203.0.113.0/24', name: 'lb-client', roles: ['any'] }];
const HEADER_TIMEOUT_MS = 1000;

let echo: Server;
let echoPort: number;
let origin: Origin;
const originSockets = new Set<Socket>();
const clientSockets = new Set<Socket>();

/** A raw client socket, destroyed in afterAll whatever the test did with it. */
async function client(port: number, host = '127.0.0.1'): Promise<Socket> {
  const s = await rawConnect(port, host);
  s.on('error', () => undefined);
  clientSockets.add(s);
  s.once('close', () => clientSockets.delete(s));
  return s;
}

/** Everything the gateway sends until it closes; the socket is cut after 5 s so a hang fails fast. */
async function readAll(s: Socket, timeoutMs = 5000): Promise<{ data: Buffer; error: string | null }> {
  const guard = setTimeout(() => s.destroy(), timeoutMs);
  try {
    return await readToEnd(s);
  } finally {
    clearTimeout(guard);
  }
}

function connectHead(port: number): Buffer {
  return Buffer.from(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
}

function socksConnect(port: number): Buffer {
  return Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]);
}

/** Send `payload` through an open tunnel, half-close, and return everything echoed back. */
async function echoThrough(s: Socket, payload: Buffer): Promise<Buffer> {
  const done = readAll(s);
  s.end(payload);
  const { data } = await done;
  return data;
}

/** A CONNECT tunnel opened after `prefix` (a PROXY header, or nothing) on the HTTP listener. */
async function httpTunnel(gw: TestGateway, prefix: Buffer, split = false): Promise<Socket> {
  const s = await client(gw.httpPort);
  const head = connectHead(echoPort);
  if (split) {
    s.write(prefix);
    s.write(head);
  } else s.write(Buffer.concat([prefix, head]));
  const got = await readUntil(s, '\r\n\r\n');
  expect(got.toString('latin1')).toMatch(/^HTTP\/1\.1 200 Connection Established\r\ndate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n\r\n$/);
  return s;
}

/** A SOCKS5 CONNECT tunnel opened after `prefix`, the greeting sent in the same write. */
async function socksTunnel(gw: TestGateway, prefix: Buffer): Promise<Socket> {
  const s = await client(gw.socksPort);
  s.write(Buffer.concat([prefix, Buffer.from([5, 1, 0])]));
  expect([...(await readBytes(s, 2))]).toEqual([5, 0]);
  s.write(socksConnect(echoPort));
  const reply = await readBytes(s, 10);
  expect(reply.length).toBe(10);
  expect(reply[1]).toBe(0);
  return s;
}

function refusals(gw: TestGateway): Array<Record<string, unknown>> {
  return gw.logs.filter((l) => l.msg === 'PROXY protocol: connection refused');
}

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (s) => {
    originSockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => originSockets.delete(s));
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as { port: number }).port;
  origin = await startOrigin();
});

afterAll(async () => {
  for (const s of clientSockets) s.destroy();
  for (const s of originSockets) s.destroy();
  await origin?.close();
  await new Promise<void>((r) => (echo ? echo.close(() => r()) : r()));
});

describe('trusted load balancer (127.0.0.1/32)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({
      proxyProtocol: { trustedSources: ['127.0.0.1/32'] },
      identity: { hosts: HOSTS },
      limits: { headerTimeoutMs: HEADER_TIMEOUT_MS },
    });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it('v1 header + CONNECT in one write: the flow belongs to the claimed client, its host identity, bytes exact', async () => {
    const s = await httpTunnel(gw, encodeProxyV1(CLAIMED));
    const payload = randomBytes(64 * 1024);
    expect((await echoThrough(s, payload)).equals(payload)).toBe(true);
    const rec = await gw.waitForClosed((r) => r.client.port === 4444 && r.protocol === 'connect');
    expect(rec.client).toEqual({ ip: '203.0.113.7', port: 4444 });
    expect(rec.identity.host).toBe('lb-client');
    expect(rec.bytesOut).toBe(payload.length);
    expect(rec.bytesIn).toBe(payload.length);
  });

  it('v1 header and CONNECT in separate writes (TCP6 claim)', async () => {
    const s = await httpTunnel(gw, encodeProxyV1({ ...CLAIMED, srcIp: '2001:db8::7', srcPort: 4445, dstIp: '::1' }), true);
    const payload = Buffer.from('hello over a v1 TCP6 header');
    expect((await echoThrough(s, payload)).toString()).toBe(payload.toString());
    const rec = await gw.waitForClosed((r) => r.client.port === 4445);
    expect(rec.client).toEqual({ ip: '2001:db8::7', port: 4445 });
    expect(rec.identity.host).toBeNull();
    expect(rec.bytesOut).toBe(payload.length);
  });

  it('v1 header + absolute-URI request', async () => {
    const s = await client(gw.httpPort);
    const done = readAll(s);
    s.write(
      Buffer.concat([
        encodeProxyV1({ ...CLAIMED, srcPort: 4446 }),
        Buffer.from(`GET http://127.0.0.1:${origin.port}/size/3000 HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`),
      ]),
    );
    const { data } = await done;
    const text = data.toString('latin1');
    expect(text.startsWith('HTTP/1.1 200')).toBe(true);
    expect(data.subarray(data.indexOf('\r\n\r\n') + 4).equals(pattern(3000))).toBe(true);
    const rec = await gw.waitForClosed((r) => r.client.port === 4446);
    expect(rec).toMatchObject({ protocol: 'http', client: { ip: '203.0.113.7', port: 4446 } });
    expect(rec.identity.host).toBe('lb-client');
  });

  it('v2 header + SOCKS5 CONNECT: claimed client, host identity, bytes exact', async () => {
    const s = await socksTunnel(gw, encodeProxyV2({ ...CLAIMED, srcPort: 4447 }));
    const payload = randomBytes(32 * 1024);
    expect((await echoThrough(s, payload)).equals(payload)).toBe(true);
    const rec = await gw.waitForClosed((r) => r.client.port === 4447);
    expect(rec).toMatchObject({ protocol: 'socks5', client: { ip: '203.0.113.7', port: 4447 } });
    expect(rec.identity.host).toBe('lb-client');
    expect(rec.bytesOut).toBe(payload.length);
    expect(rec.bytesIn).toBe(payload.length);
  });

  it('v2 IPv6 header with TLVs + SOCKS5', async () => {
    const tlvs = Buffer.from([0x01, 0x00, 0x02, 0x68, 0x32]); // ALPN "h2": skipped
    const s = await socksTunnel(gw, encodeProxyV2({ srcIp: '2001:db8::42', srcPort: 4448, dstIp: '::1', dstPort: 1080 }, tlvs));
    expect((await echoThrough(s, Buffer.from('v6'))).toString()).toBe('v6');
    const rec = await gw.waitForClosed((r) => r.client.port === 4448);
    expect(rec.client).toEqual({ ip: '2001:db8::42', port: 4448 });
  });

  it('v2 LOCAL keeps the real peer', async () => {
    const s = await socksTunnel(gw, encodeProxyV2(null));
    const localPort = s.localPort;
    expect((await echoThrough(s, Buffer.from('local'))).toString()).toBe('local');
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec.client.ip).toBe('127.0.0.1');
    expect(rec.identity.host).toBeNull();
  });

  it('v2 LOCAL with a family byte and no address block (the spec: discard the block, family included) keeps the real peer', async () => {
    const local = encodeProxyV2(null);
    local[13] = 0x11; // TCP over IPv4, length still 0
    const s = await socksTunnel(gw, local);
    const localPort = s.localPort;
    const payload = randomBytes(4096);
    expect((await echoThrough(s, payload)).equals(payload)).toBe(true);
    const rec = await gw.waitForClosed((r) => r.client.port === localPort);
    expect(rec.client.ip).toBe('127.0.0.1');
    expect(rec.bytesOut).toBe(payload.length);
    expect(rec.bytesIn).toBe(payload.length);
    expect(gw.closed.filter((r) => r.client.port === localPort).length).toBe(1);
  });

  it.each([
    ['IPv4 with an UNSPEC protocol', 0x10],
    ['UNSPEC with STREAM', 0x01],
  ])('v2 PROXY with a family/protocol pair the spec does not define (%s) is refused, logged, not believed', async (_name, famProto) => {
    const before = gw.closed.length;
    const header = encodeProxyV2({ ...CLAIMED, srcPort: 4451 });
    header[13] = famProto;
    const s = await client(gw.httpPort);
    const port = s.localPort;
    const done = readAll(s);
    s.write(Buffer.concat([header, connectHead(echoPort)]));
    expect((await done).data.length).toBe(0);
    expect(refusals(gw)).toContainEqual(expect.objectContaining({ listener: 'http', client: `127.0.0.1:${port}`, trusted: true, code: 'unsupported' }));
    expect(gw.closed.length).toBe(before);
  });

  // Regression: a PROXY header saying UDP (DGRAM) on this TCP connection was believed: the CONNECT
  // was answered 200 and the flow was 203.0.113.7's.
  it.each([
    ['UDP over IPv4 (0x12)', 0x12, CLAIMED],
    ['UDP over IPv6 (0x22)', 0x22, { ...CLAIMED, srcIp: '2001:db8::7', dstIp: '::1' }],
  ])('v2 PROXY claiming a DGRAM transport on a TCP connection (%s) is refused, logged, not believed', async (_name, famProto, addr) => {
    const before = gw.closed.length;
    const header = encodeProxyV2({ ...addr, srcPort: 4452 });
    header[13] = famProto;
    const s = await client(gw.httpPort);
    const port = s.localPort;
    const done = readAll(s);
    s.write(Buffer.concat([header, connectHead(echoPort)]));
    expect((await done).data.length).toBe(0);
    expect(refusals(gw)).toContainEqual(
      expect.objectContaining({ listener: 'http', client: `127.0.0.1:${port}`, trusted: true, code: 'malformed', why: expect.stringMatching(/DGRAM/) }),
    );
    expect(gw.closed.length).toBe(before);
    expect(gw.closed.some((r) => r.client.port === 4452)).toBe(false);
  });

  it.each([
    ['HTTP', 'http'],
    ['SOCKS5', 'socks'],
  ])('%s: a trusted peer with no header is closed without an answer, and logged', async (_name, listener) => {
    const before = gw.closed.length;
    const s = await client(listener === 'http' ? gw.httpPort : gw.socksPort);
    const port = s.localPort;
    const done = readAll(s);
    s.write(listener === 'http' ? connectHead(echoPort) : Buffer.from([5, 1, 0]));
    const { data } = await done;
    expect(data.length).toBe(0);
    expect(refusals(gw)).toContainEqual(expect.objectContaining({ listener, client: `127.0.0.1:${port}`, trusted: true, code: 'no-signature' }));
    expect(gw.closed.length).toBe(before);
  });

  it('a malformed header from a trusted peer is closed and logged', async () => {
    const s = await client(gw.httpPort);
    const port = s.localPort;
    const done = readAll(s);
    s.write('PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n');
    s.write(connectHead(echoPort));
    expect((await done).data.length).toBe(0);
    expect(refusals(gw)).toContainEqual(expect.objectContaining({ client: `127.0.0.1:${port}`, code: 'malformed' }));
  });

  it('an incomplete header is cut off after limits.headerTimeoutMs', async () => {
    const s = await client(gw.socksPort);
    const port = s.localPort;
    const started = Date.now();
    const done = readAll(s);
    s.write('PROXY TCP4 203.0.113.7');
    expect((await done).data.length).toBe(0);
    expect(Date.now() - started).toBeGreaterThanOrEqual(HEADER_TIMEOUT_MS - 50);
    expect(refusals(gw)).toContainEqual(expect.objectContaining({ listener: 'socks', client: `127.0.0.1:${port}`, code: 'timeout' }));
  });

  it("after a good header the listener's own header timeout still applies (node:http tracking started through the front)", async () => {
    const s = await client(gw.httpPort);
    const done = readAll(s);
    s.write(Buffer.concat([encodeProxyV1({ ...CLAIMED, srcPort: 4449 }), Buffer.from('CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n')]));
    const text = (await done).data.toString('latin1');
    expect(text.startsWith('HTTP/1.1 408')).toBe(true);
    expect(gw.logs).toContainEqual(expect.objectContaining({ msg: 'client request refused', client: '203.0.113.7', code: 'EGW_HEADER_TIMEOUT' }));
  });

  it('curl --haproxy-protocol (a real client sending v1 with its own address)', async () => {
    const r = await run('curl', ['-sS', '--haproxy-protocol', '--noproxy', '', '-x', `http://127.0.0.1:${gw.httpPort}`, `http://127.0.0.1:${origin.port}/size/100`]);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe(pattern(100).toString());
    const rec = await gw.waitForClosed((x) => x.protocol === 'http' && x.destination.port === origin.port && x.client.ip === '127.0.0.1');
    expect(rec.identity.host).toBeNull();
  });
});

describe('untrusted peer (trustedSources 10.9.9.9/32, connecting from 127.0.0.1)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({ proxyProtocol: { trustedSources: ['10.9.9.9/32'] }, identity: { hosts: HOSTS } });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it.each([
    ['v1 on HTTP', 'http', () => Buffer.concat([encodeProxyV1(CLAIMED), connectHead(echoPort)])],
    ['v2 on HTTP', 'http', () => Buffer.concat([encodeProxyV2(CLAIMED), connectHead(echoPort)])],
    ['v1 on SOCKS5', 'socks', () => Buffer.concat([encodeProxyV1(CLAIMED), Buffer.from([5, 1, 0])])],
    ['v2 on SOCKS5', 'socks', () => Buffer.concat([encodeProxyV2(CLAIMED), Buffer.from([5, 1, 0])])],
  ])('%s: refused, logged, never believed', async (_name, listener, bytes) => {
    const s = await client(listener === 'http' ? gw.httpPort : gw.socksPort);
    const port = s.localPort;
    const done = readAll(s);
    s.write(bytes());
    expect((await done).data.length).toBe(0);
    expect(refusals(gw)).toContainEqual(expect.objectContaining({ listener, client: `127.0.0.1:${port}`, trusted: false, code: 'untrusted-header' }));
    expect(gw.closed.some((r) => r.client.ip === '203.0.113.7')).toBe(false);
  });

  it('ordinary HTTP and SOCKS5 traffic passes through unchanged, with the real address', async () => {
    const h = await httpTunnel(gw, Buffer.alloc(0));
    const hPort = h.localPort;
    const payload = randomBytes(20_000);
    expect((await echoThrough(h, payload)).equals(payload)).toBe(true);
    const recH = await gw.waitForClosed((r) => r.client.port === hPort);
    expect(recH.client.ip).toBe('127.0.0.1');
    expect(recH.bytesOut).toBe(payload.length);
    const s = await socksTunnel(gw, Buffer.alloc(0));
    const sPort = s.localPort;
    expect((await echoThrough(s, payload)).equals(payload)).toBe(true);
    const recS = await gw.waitForClosed((r) => r.client.port === sPort);
    expect(recS.client.ip).toBe('127.0.0.1');
    expect(recS.identity.host).toBeNull();
    expect(gw.closed.some((r) => r.client.ip === '203.0.113.7')).toBe(false);
  });

  it('HTTP that starts like "P…" but is not a header (POST) passes through', async () => {
    const s = await client(gw.httpPort);
    const done = readAll(s);
    s.write(`POST http://127.0.0.1:${origin.port}/ HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc`);
    const text = (await done).data.toString('latin1');
    expect(text.startsWith('HTTP/1.1 200')).toBe(true);
    expect(text.endsWith('echo:POST:3')).toBe(true);
  });
});

/** Can this host listen on ::1? (Containers without IPv6 cannot.) */
const hasIpv6Loopback = await ipv6LoopbackAvailable();

describe.skipIf(!skipNotice(hasIpv6Loopback, 'proxy-protocol IPv6', 'needs IPv6 loopback (::1)'))('trusted IPv6 load balancer (::1/128)', () => {
  it('a v1 TCP4 header from [::1] on the SOCKS listener names an IPv4 client', async () => {
    const gw = await startTestGateway({ proxyProtocol: { trustedSources: ['::1/128'] }, identity: { hosts: HOSTS } }, { socks: '[::1]:0' });
    try {
      const s = await client(gw.socksPort, '::1');
      s.write(Buffer.concat([encodeProxyV1({ ...CLAIMED, srcPort: 4450 }), Buffer.from([5, 1, 0])]));
      expect([...(await readBytes(s, 2))]).toEqual([5, 0]);
      s.write(socksConnect(echoPort));
      expect((await readBytes(s, 10))[1]).toBe(0);
      expect((await echoThrough(s, Buffer.from('via ::1'))).toString()).toBe('via ::1');
      const rec = await gw.waitForClosed((r) => r.client.port === 4450);
      expect(rec.client.ip).toBe('203.0.113.7');
      expect(rec.identity.host).toBe('lb-client');
    } finally {
      await gw.stop();
    }
  });
});

describe('lifecycle', () => {
  it('drain closes the fronts: both ports refuse new connections afterwards', async () => {
    const gw = await startTestGateway({ proxyProtocol: { trustedSources: ['127.0.0.1/32'] } });
    await gw.stop();
    for (const port of [gw.httpPort, gw.socksPort]) {
      const s = connect({ host: '127.0.0.1', port });
      const [err] = (await once(s, 'error').catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
      expect(err.code).toBe('ECONNREFUSED');
      s.destroy();
    }
  });

  it('without trustedSources there is no front: a PROXY header is just a bad request to the listener', async () => {
    const gw = await startTestGateway();
    try {
      const s = await client(gw.httpPort);
      const done = readAll(s);
      s.write(Buffer.concat([encodeProxyV1(CLAIMED), connectHead(echoPort)]));
      const text = (await done).data.toString('latin1');
      expect(text.startsWith('HTTP/1.1 400')).toBe(true);
      expect(gw.logs.some((l) => l.msg === 'PROXY protocol: connection refused')).toBe(false);
    } finally {
      await gw.stop();
    }
  });
});
