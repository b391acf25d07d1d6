/**
 * `Upgrade` (websocket-style) through the absolute-URI listener with raw sockets: the 101 head is
 * relayed (Via added, Proxy-Authorization and identity headers gone), then both ways are a tunnel.
 * bytesOut / bytesIn count everything after the handshake.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { pattern, rawConnect, readUntil } from './http-harness.ts';

let gw: TestGateway;
let origin: Server;
let port: number;
const seen: IncomingMessage[] = [];
const sockets = new Set<Socket>();
/** Origin sides of /silent upgrades. */
const silent: Socket[] = [];
const HELLO = Buffer.from('server-hello-frame');
/** Ends of the origin's connections kept alive after a declined answer (/decline-keepalive, /decline-204). */
const kept: Array<Promise<unknown>> = [];
/** Plain (not upgrade) requests the origin answered. */
const plain: IncomingMessage[] = [];

beforeAll(async () => {
  origin = createServer((req, res) => {
    plain.push(req);
    if (req.url?.startsWith('/as-plain')) {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 12 });
      res.end('plain answer');
      return;
    }
    res.writeHead(400, { 'content-type': 'text/plain', 'content-length': 11 });
    res.end('no upgrade!');
  });
  origin.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    seen.push(req);
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    if (req.url === '/decline') {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nnot you!');
      return;
    }
    if (req.url === '/decline-keepalive' || req.url === '/decline-204') {
      // An HTTP/1.1 server that declines with a framed answer and keeps its connection for the next
      // request (as node:http, nginx and most do), plus bytes past the body that are not its.
      socket.write(req.url === '/decline-204' ? 'HTTP/1.1 204 No Content\r\n\r\n' : 'HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot here!');
      setTimeout(() => socket.write('EXTRA'), 50);
      // Closed when the gateway closes its side (node:http hands an upgraded socket over half-open).
      socket.once('end', () => socket.end());
      kept.push(new Promise((r) => socket.once('close', r)));
      return;
    }
    if (req.url === '/decline-1.0') {
      // An HTTP/1.0 server: its answer is received as 1.0, whatever the gateway sends the client.
      socket.end('HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nnope');
      return;
    }
    if (req.url === '/silent') {
      // Accepts the connection and never answers (nor reads).
      silent.push(socket);
      return;
    }
    if (req.url === '/decline-stall') {
      // Declines, sends 3 of the 100 body bytes it announces, then stays silent.
      socket.write('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 100\r\nConnection: close\r\n\r\nabc');
      silent.push(socket);
      return;
    }
    if (req.url === '/decline-late') {
      // Declines after 100 ms, whatever the client did meanwhile.
      setTimeout(() => socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nnot you!'), 100);
      return;
    }
    if (req.url === '/garbage') {
      socket.end('SSH-2.0-OpenSSH_9.2\r\n\r\n');
      return;
    }
    if (req.url === '/latin1') {
      // A field byte above 0x7f (latin1 0xE9) each way: it must pass through as that one byte.
      socket.write(Buffer.from('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Note: caf\xe9\r\n\r\n', 'latin1'));
      return;
    }
    // The 101 and the first server frame in one write: the gateway must pass both through.
    socket.write(Buffer.concat([Buffer.from('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Origin: yes\r\n\r\n'), HELLO]));
    if (head.length > 0) socket.write(head);
    socket.pipe(socket);
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway({ identity: { users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] } });
});

afterAll(async () => {
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

/** The origin's side of the next /silent or /decline-stall upgrade, read from now on only to see it end. */
async function nextSilent(): Promise<{ socket: Socket; ended: Promise<unknown> }> {
  const deadline = Date.now() + 10_000;
  while (silent.length === 0) {
    if (Date.now() > deadline) throw new Error('the upgrade never reached the origin');
    await new Promise((r) => setTimeout(r, 10));
  }
  const socket = silent.shift() as Socket;
  const ended = new Promise((r) => {
    socket.once('end', r);
    socket.once('close', r);
  });
  socket.resume();
  return { socket, ended };
}

function upgradeHead(path: string): string {
  return [
    `GET http://127.0.0.1:${port}${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    'Connection: Upgrade',
    'Upgrade: websocket',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    'Sec-WebSocket-Version: 13',
    `Proxy-Authorization: Basic ${Buffer.from('alice:wonder').toString('base64')}`,
    'X-Egress-User: mallory',
    '',
    '',
  ].join('\r\n');
}

describe('Upgrade through the proxy', () => {
  it('101 relayed with Via, then an echo tunnel; exact counts after the handshake', async () => {
    const s = await rawConnect(gw.httpPort);
    s.write(upgradeHead('/chat'));
    const got = await readUntil(s, HELLO.toString());
    const end = got.indexOf('\r\n\r\n');
    const head = got.subarray(0, end).toString('latin1');
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    expect(head).toMatch(/\r\nupgrade: websocket/i);
    expect(head).toMatch(/\r\nconnection: upgrade/i);
    expect(head).toMatch(new RegExp(`\\r\\nvia: 1\\.1 ${gw.ctx.via.pseudonym}(\\r\\n|$)`, 'i'));
    expect(head).toMatch(/\r\nX-Origin: yes/);
    expect(got.subarray(end + 4).equals(HELLO)).toBe(true);

    const req = seen.at(-1);
    expect(req?.url).toBe('/chat');
    expect(req?.headers.upgrade).toBe('websocket');
    expect(req?.headers['proxy-authorization']).toBeUndefined();
    expect(req?.headers['x-egress-user']).toBeUndefined();
    expect(req?.headers.via).toBe(`1.1 ${gw.ctx.via.pseudonym}`);
    expect(req?.headers['sec-websocket-key']).toBe('dGhlIHNhbXBsZSBub25jZQ==');

    const payload = pattern(100_000);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const ended = once(s, 'end');
    s.end(payload);
    await ended;
    expect(Buffer.concat(chunks).equals(payload)).toBe(true);
    const rec = await gw.waitForClosed((f) => f.destination.port === port && f.bytesOut === payload.length);
    expect(rec).toMatchObject({ protocol: 'http', bytesIn: HELLO.length + payload.length, closeReason: 'closed' });
    expect(rec.identity.user).toBe('alice');
  });

  it('field bytes above 0x7f pass through as sent, in the request head and in the 101', async () => {
    const s = await rawConnect(gw.httpPort);
    s.write(Buffer.from(upgradeHead('/latin1').replace('\r\n\r\n', '\r\nX-Note: caf\xe9\r\n\r\n'), 'latin1'));
    const got = await readUntil(s, '\r\n\r\n');
    expect(got.includes(Buffer.from('\r\nX-Note: caf\xe9\r\n', 'latin1'))).toBe(true);
    // node's parser reads field values as latin1: one byte 0xE9 is "\u00e9".
    expect(seen.at(-1)?.headers['x-note']).toBe('caf\u00e9');
    s.destroy();
  });

  it('an origin whose answer is not HTTP: 502 upstream-bad-response, and the record says so', async () => {
    const s = await rawConnect(gw.httpPort);
    s.write(upgradeHead('/garbage'));
    const got = (await readUntil(s, '"}')).toString('latin1');
    expect(got).toMatch(/^HTTP\/1\.1 502 /);
    expect(got).toContain('"reason":"upstream-bad-response"');
    expect(got).not.toContain('SSH-2.0');
    const rec = await gw.waitForClosed((f) => f.destination.port === port && f.closeReason === 'upstream-bad-response');
    expect(rec.bytesIn).toBe(0);
    s.destroy();
  });

  it('an origin that declines: its answer reaches the client, then the connection closes', async () => {
    const s = await rawConnect(gw.httpPort);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const closed = once(s, 'close');
    s.write(upgradeHead('/decline'));
    await closed;
    const text = Buffer.concat(chunks).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 403 /);
    expect(text).toMatch(new RegExp(`\\r\\nvia: 1\\.1 ${gw.ctx.via.pseudonym}(\\r\\n|$)`, 'i'));
    expect(text.endsWith('\r\n\r\nnot you!')).toBe(true);
    const rec = await gw.waitForClosed((f) => f.destination.port === port && f.bytesIn === 8);
    expect(rec.bytesOut).toBe(0);
  });

  // Regression: a declined answer was relayed until the origin closed its connection, so an origin
  // that keeps it alive after a framed answer left the client waiting and the flow live until the
  // idle timeout (or the client's FIN: client-reset), though the whole answer had been delivered.
  for (const [path, status, body] of [
    ['/decline-keepalive', '404', 'not here!'],
    ['/decline-204', '204', ''],
  ] as const) {
    it(`an origin that declines with a framed ${status} and keeps its connection: the client gets the answer and its close, the record says closed`, async () => {
      const s = await rawConnect(gw.httpPort);
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      const closed = new Promise((r) => s.once('close', r));
      const before = kept.length;
      s.write(upgradeHead(path));
      await closed;
      await until('the origin connection', () => kept.length > before);
      await kept[before];
      const text = Buffer.concat(chunks).toString('latin1');
      expect(text).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      expect(text.endsWith(`\r\n\r\n${body}`)).toBe(true);
      const rec = await gw.waitForClosed((f) => f.destination.port === port && f.closeReason === 'closed' && f.bytesIn === body.length);
      expect(rec).toMatchObject({ protocol: 'http', bytesOut: 0, bytesIn: body.length });
    });
  }

  /** Everything the gateway answers `head` with, until it closes the connection. */
  const answer = async (head: string): Promise<string> => {
    const s = await rawConnect(gw.httpPort);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const closed = once(s, 'close');
    s.write(head);
    await closed;
    return Buffer.concat(chunks).toString('latin1');
  };

  // Regression: Via said 1.1 whatever version the message came in (RFC 9110 §7.6.3: the received-protocol).
  it('Via names the version each message was received in: an HTTP/1.0 answer and an HTTP/1.0 request say 1.0', async () => {
    const from10 = await answer(upgradeHead('/decline-1.0'));
    expect(from10).toMatch(/^HTTP\/1\.1 404 /);
    expect(from10.match(/\r\nvia: [^\r]*/gi)).toEqual([`\r\nvia: 1.0 ${gw.ctx.via.pseudonym}`]);
    expect(from10.endsWith('\r\n\r\nnope')).toBe(true);
    // The same client request answered as 1.1: 1.1.
    const from11 = await answer(upgradeHead('/decline'));
    expect(from11.match(/\r\nvia: [^\r]*/gi)).toEqual([`\r\nvia: 1.1 ${gw.ctx.via.pseudonym}`]);
    expect(seen.find((r) => r.url === '/decline')?.headers.via).toBe(`1.1 ${gw.ctx.via.pseudonym}`);
    // An HTTP/1.0 request (forwarded as a plain request: its Upgrade is ignored): the origin is told it came in as 1.0.
    await answer(upgradeHead('/as-plain-via').replace(' HTTP/1.1\r\n', ' HTTP/1.0\r\n'));
    expect(plain.find((r) => r.url === '/as-plain-via')?.headers.via).toBe(`1.0 ${gw.ctx.via.pseudonym}`);
  });

  // Regression: an HTTP/1.0 request carrying Upgrade was forwarded as an upgrade: the origin saw
  // `Upgrade: websocket`, answered 101, and the 1.0 client got a 101 and a tunnel. RFC 9110 §7.8: a
  // server must ignore Upgrade in an HTTP/1.0 request; the gateway forwards it as a plain request.
  it('an HTTP/1.0 request with Upgrade is forwarded as a plain request: no Upgrade reaches the origin, its answer reaches the client', async () => {
    const upgradesBefore = seen.length;
    const text = await answer(upgradeHead('/as-plain-1.0').replace(' HTTP/1.1\r\n', ' HTTP/1.0\r\n'));
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text).not.toMatch(/\r\nupgrade:/i);
    expect(text.endsWith('\r\n\r\nplain answer')).toBe(true);
    expect(seen.length).toBe(upgradesBefore);
    const req = plain.find((r) => r.url === '/as-plain-1.0');
    expect(req?.headers.upgrade).toBeUndefined();
    expect(req?.headers.connection ?? '').not.toMatch(/upgrade/i);
    expect(req?.headers['proxy-authorization']).toBeUndefined();
    expect(req?.headers['x-egress-user']).toBeUndefined();
    expect(req?.headers.via).toBe(`1.0 ${gw.ctx.via.pseudonym}`);
    const rec = await gw.waitForClosed((f) => f.destination.port === port && f.bytesIn === 12);
    expect(rec).toMatchObject({ protocol: 'http', bytesOut: 0, closeReason: 'closed' });
    expect(rec.identity.user).toBe('alice');
  });

  // Regression: a client that left while the origin had not answered the upgrade went unnoticed;
  // the flow stayed live (interim records and all) for limits.idleTimeoutMs, then was recorded
  // `connect-timeout`, its origin connection open all that time.
  it('a client that resets while the origin is silent: the flow ends client-reset and the origin connection is closed', async () => {
    const before = gw.closed.length;
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    s.write(upgradeHead('/silent'));
    const upstream = await nextSilent();
    s.resetAndDestroy();
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before && f.destination.port === port);
    expect(rec.closeReason).toBe('client-reset');
    expect(rec.protocol).toBe('http');
    await upstream.ended;
  });
});

// Regression: a client's FIN (it half-closes: no reset, no close) while the origin was silent went
// unnoticed: node:http stops watching the socket at the upgrade, and a half-open socket never emits
// 'close'. The flow stayed active (and counted against maxFlowsPerIdentity), its origin connection
// open, until limits.idleTimeoutMs (6 s here before the fix: connect-timeout, or idle-timeout in a
// declined Upgrade's relay). Now the origin has min(connectTimeoutMs, idleTimeoutMs) after the FIN,
// and a client that half-closes and reads still gets an answer that comes within it.
describe("Upgrade: the client's FIN while the origin is silent", () => {
  let finGw: TestGateway;
  const GRACE_MS = 1000;

  beforeAll(async () => {
    finGw = await startTestGateway({
      identity: { users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] },
      limits: { connectTimeoutMs: GRACE_MS, idleTimeoutMs: 60_000 },
    });
  });

  afterAll(async () => {
    await finGw?.stop();
  });

  /** Send the Upgrade request; `fin()` half-closes (the client keeps reading) and says when. */
  async function sendUpgrade(path: string): Promise<{ got: () => string; closed: Promise<unknown>; fin: () => number }> {
    const s = await rawConnect(finGw.httpPort);
    s.on('error', () => undefined);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const closed = once(s, 'close');
    s.write(upgradeHead(path));
    const fin = (): number => {
      s.end();
      return Date.now();
    };
    return { got: () => Buffer.concat(chunks).toString('latin1'), closed, fin };
  }

  async function activeFlows(): Promise<number> {
    const res = await adminGet(finGw, '/v1/flows?state=active');
    return (JSON.parse(res.text) as { count: number }).count;
  }

  it('no answer yet: the flow ends client-reset about the grace after the FIN, the origin connection closed', async () => {
    const before = finGw.closed.length;
    const client = await sendUpgrade('/silent');
    const upstream = await nextSilent();
    const finAt = client.fin();
    expect(await activeFlows()).toBe(1);
    const rec = await finGw.waitForClosed((f) => finGw.closed.indexOf(f) >= before && f.destination.port === port);
    const after = Date.now() - finAt;
    expect(rec).toMatchObject({ protocol: 'http', closeReason: 'client-reset', bytesOut: 0, bytesIn: 0 });
    expect(after).toBeGreaterThanOrEqual(GRACE_MS - 100);
    expect(after).toBeLessThan(GRACE_MS + 4000);
    expect(await activeFlows()).toBe(0);
    await upstream.ended;
    await client.closed;
    expect(client.got()).toBe('');
  });

  it("a declined Upgrade's relay: the origin stalls mid-body, the flow ends client-reset with the body bytes relayed", async () => {
    const before = finGw.closed.length;
    const client = await sendUpgrade('/decline-stall');
    const upstream = await nextSilent();
    await until('the declined head and 3 body bytes', () => client.got().endsWith('\r\n\r\nabc'));
    const finAt = client.fin();
    const rec = await finGw.waitForClosed((f) => finGw.closed.indexOf(f) >= before && f.destination.port === port);
    expect(rec).toMatchObject({ protocol: 'http', closeReason: 'client-reset', bytesOut: 0, bytesIn: 3 });
    expect(Date.now() - finAt).toBeLessThan(GRACE_MS + 4000);
    expect(await activeFlows()).toBe(0);
    await upstream.ended;
    await client.closed;
    expect(client.got()).toMatch(/^HTTP\/1\.1 403 [\s\S]*\r\n\r\nabc$/);
  });

  it('a client that half-closes and reads gets an answer that comes within the grace, and the record is complete', async () => {
    const before = finGw.closed.length;
    const client = await sendUpgrade('/decline-late');
    client.fin();
    await client.closed;
    expect(client.got()).toMatch(/^HTTP\/1\.1 403 [\s\S]*\r\nconnection: close\r\n\r\nnot you!$/i);
    const rec = await finGw.waitForClosed((f) => finGw.closed.indexOf(f) >= before && f.destination.port === port);
    expect(rec).toMatchObject({ protocol: 'http', closeReason: 'closed', bytesOut: 0, bytesIn: 8 });
  });

  it('a 101 after the FIN: the tunnel passes the FIN on and carries what the origin sends', async () => {
    const before = finGw.closed.length;
    const client = await sendUpgrade('/chat');
    client.fin();
    await client.closed;
    expect(client.got()).toMatch(/^HTTP\/1\.1 101 /);
    expect(client.got().endsWith(`\r\n\r\n${HELLO.toString()}`)).toBe(true);
    const rec = await finGw.waitForClosed((f) => finGw.closed.indexOf(f) >= before && f.destination.port === port);
    expect(rec).toMatchObject({ protocol: 'http', closeReason: 'closed', bytesOut: 0, bytesIn: HELLO.length });
  });
});

describe('Upgrade pipelined behind another request (node:http path)', () => {
  it('the earlier request is answered first, then the Upgrade (here a refused one)', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const closed = once(s, 'close');
    // The GET (the origin answers 400 'no upgrade!'), then an Upgrade to a metadata address, in one write.
    const auth = `Proxy-Authorization: Basic ${Buffer.from('alice:wonder').toString('base64')}\r\n`;
    s.write(
      `GET http://127.0.0.1:${port}/plain HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}\r\n` +
        `GET http://169.254.169.254/ws HTTP/1.1\r\nHost: 169.254.169.254\r\n${auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    );
    await closed;
    const text = Buffer.concat(chunks).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    const second = text.indexOf('\r\n\r\nno upgrade!') + 15;
    expect(text.slice(second)).toMatch(/^HTTP\/1\.1 403 /);
  });
});
