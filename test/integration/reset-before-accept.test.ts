/**
 * A client that sends its request and resets the connection before the gateway accepts it. The
 * kernel still hands the connection over, but no longer knows its peer: the gateway must not judge
 * or forward it as a client without an address. Before, the HTTP listener judged it with an empty
 * address: the host inventory (which would have given this source a narrow role) did not apply,
 * `defaultRoles` did, and the tunnelled payload reached a destination the source may not reach.
 *
 * The gateway runs in this process, so blocking this thread (spawnSync) holds its accept loop while
 * a python client connects, writes and resets: the same as a busy event loop or a GC pause.
 */
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
let origin: Server;
let originPort: number;
const received: Buffer[] = [];
const sockets = new Set<Socket>();

beforeAll(async () => {
  origin = createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    s.on('data', (d: Buffer) => received.push(d));
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  gw = await startTestGateway({
    mode: 'enforce',
    identity: { hosts: [{ cidr: '127.0.0.0/8', name: 'ci-runner', roles: ['ci'] }] },
    // This source's own role reaches nothing; the default role (for clients no inventory names) reaches everything.
    roles: { ci: { allow: [{ cidr: '192.0.2.1/32' }] }, web: { allow: [{ cidr: '0.0.0.0/0' }] } },
    defaultRoles: ['web'],
  });
});

afterAll(async () => {
  await gw?.stop();
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

/** Connect, write `payload`, reset (SO_LINGER 0), while this thread — and the gateway's loop — is blocked. */
function sendAndResetWhileBlocked(port: number, payload: string | Buffer): void {
  const script = [
    'import socket, struct, sys',
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))",
    's.sendall(bytes.fromhex(sys.argv[2]))',
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))",
    's.close()',
  ].join('\n');
  const r = spawnSync('python3', ['-c', script, String(port), Buffer.from(payload).toString('hex')], { encoding: 'utf8', timeout: 10_000 });
  expect(r.status, r.stderr).toBe(0);
}

it('the source is judged by its inventory role: a normal CONNECT to the origin is refused', async () => {
  const { rawExchange } = await import('./http-harness.ts');
  const { response } = await rawExchange(gw.httpPort, `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\n\r\n`);
  expect(response).toMatch(/^HTTP\/1\.1 403 /);
});

it('a CONNECT with a payload, reset before accept: nothing reaches the origin, no flow is judged without an address', async () => {
  const before = gw.closed.length;
  for (let i = 0; i < 5; i++) {
    sendAndResetWhileBlocked(gw.httpPort, `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\n\r\nPOST /exfil HTTP/1.1\r\nContent-Length: 6\r\n\r\nsecret`);
  }
  // Let the gateway accept and handle all five, then a normal request as a marker that it has.
  await new Promise((r) => setTimeout(r, 300));
  const { rawExchange } = await import('./http-harness.ts');
  await rawExchange(gw.httpPort, `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\n\r\n`);
  await new Promise((r) => setTimeout(r, 200));
  expect(Buffer.concat(received).toString('latin1')).toBe('');
  const later = gw.closed.slice(before);
  expect(later.filter((r) => r.client.ip === '')).toEqual([]);
  expect(later.filter((r) => r.verdict === 'allow')).toEqual([]);
});

it('the same on the SOCKS listener (which already dropped it)', async () => {
  received.length = 0;
  const before = gw.closed.length;
  const port = Buffer.alloc(2);
  port.writeUInt16BE(originPort);
  const request = Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1]), port, Buffer.from('secret')]);
  sendAndResetWhileBlocked(gw.socksPort, request);
  await new Promise((r) => setTimeout(r, 300));
  expect(Buffer.concat(received).toString('latin1')).toBe('');
  expect(gw.closed.slice(before).filter((r) => r.verdict === 'allow' || r.client.ip === '')).toEqual([]);
});
