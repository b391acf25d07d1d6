/**
 * Hostile and malformed SOCKS5 input through the real listener, as raw bytes: each gets the reply
 * RFC 1928/1929 has a place for (or none), a close, a warn log with the reason, and the gateway
 * keeps serving everyone else.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBytes, readToEnd, type SocksGateway, startSocksGateway, startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const h = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');
const NO_AUTH = h('0500');
/** A failure reply: VER REP RSV ATYP=1 0.0.0.0:0. */
const rep = (code: number): Buffer => Buffer.from([5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
const ascii = (s: string): string => Buffer.from(s).toString('hex');

let gw: SocksGateway;
let authGw: SocksGateway;
let slowGw: SocksGateway;
let origin: TcpOrigin;

beforeAll(async () => {
  gw = await startSocksGateway();
  authGw = await startSocksGateway({ identity: { requireAuth: true, users: [{ name: 'bob', password: 'pw', roles: ['any'] }] } });
  slowGw = await startSocksGateway({ limits: { headerTimeoutMs: 1000 } });
  origin = await startTcpOrigin('127.0.0.1', Buffer.from('hi'));
});
afterAll(async () => {
  await Promise.all([gw.stop(), authGw.stop(), slowGw.stop(), origin.close()]);
});

async function exchange(target: SocksGateway, bytes: Buffer): Promise<{ data: Buffer; error: string | null }> {
  const s = connect(target.socksPort, target.socksHost);
  await once(s, 'connect');
  const result = readToEnd(s);
  s.write(bytes);
  return result;
}

/** The gateway still serves a normal CONNECT (with the `socks` client) after the abuse. */
async function stillServes(target: SocksGateway): Promise<void> {
  const { socket } = await SocksClient.createConnection({
    proxy: { host: target.socksHost, port: target.socksPort, type: 5 },
    command: 'connect',
    destination: { host: '127.0.0.1', port: origin.port },
  });
  socket.end('ok');
  expect((await readBytes(socket, 5)).toString()).toBe('hiok');
}

describe('malformed SOCKS5 bytes', () => {
  it.each([
    ['SOCKS4 request (bad version)', h('04 01 0050 7f000001 00'), Buffer.alloc(0)],
    ['HTTP on the SOCKS port', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), Buffer.alloc(0)],
    ['zero methods', h('05 00'), h('05ff')],
    ['only GSSAPI offered', h('05 01 01'), h('05ff')],
    ['garbage after the greeting', Buffer.concat([h('050100'), Buffer.from('GET / HTTP/1.1\r\n')]), Buffer.concat([NO_AUTH, rep(1)])],
    ['BIND', h('050100 05020001 7f000001 0050'), Buffer.concat([NO_AUTH, rep(7)])],
    ['unknown command', h('050100 05090001 7f000001 0050'), Buffer.concat([NO_AUTH, rep(7)])],
    ['unknown address type', h('050100 05010007 7f000001 0050'), Buffer.concat([NO_AUTH, rep(8)])],
    ['empty domain', h('050100 05010003 00 0050'), Buffer.concat([NO_AUTH, rep(1)])],
    ['NUL in the domain', h(`050100 05010003 05 ${ascii('a')}00${ascii('b.c')} 0050`), Buffer.concat([NO_AUTH, rep(1)])],
    ['userinfo in the domain', h(`050100 05010003 09 ${ascii('u@evil.io')} 0050`), Buffer.concat([NO_AUTH, rep(1)])],
    ['oversized domain (255 bytes, over the 253 of DNS)', h(`050100 05010003 ff ${ascii(`${'a'.repeat(63)}.`.repeat(4).slice(0, 255))} 0050`), Buffer.concat([NO_AUTH, rep(1)])],
    ['a 64-byte label', h(`050100 05010003 44 ${ascii(`${'b'.repeat(64)}.com`)} 0050`), Buffer.concat([NO_AUTH, rep(1)])],
    ['request with a bad version', h('050100 04010001 7f000001 0050'), Buffer.concat([NO_AUTH, rep(1)])],
    ['bad auth sub-negotiation version', h(`050102 05 05 ${ascii('alice')} 01 ${ascii('p')}`), h('0502 0101')],
  ])('%s', async (_name, input, expected) => {
    const warnsBefore = gw.logs.length;
    const { data } = await exchange(gw, input);
    expect(data.toString('hex')).toBe(expected.toString('hex'));
    expect(gw.logs.length).toBeGreaterThan(warnsBefore);
    expect(gw.logs[gw.logs.length - 1]).toMatchObject({ level: 'warn', listener: 'socks' });
    expect(gw.flows.activeCount).toBe(0);
  });

  it('a domain that is a spelled-out IPv4 is policed as that address (0x0a.1 = 10.0.0.1, deny-range)', async () => {
    const { data } = await exchange(gw, h(`050100 05010003 06 ${ascii('0x0a.1')} 0050`));
    expect(data.toString('hex')).toBe(Buffer.concat([NO_AUTH, rep(2)]).toString('hex'));
    const rec = await gw.waitForClosed((r) => r.destination.host === '10.0.0.1');
    expect(rec.reason).toBe('deny-range');
  });

  // Regression: port 0 was admitted and dialled (the kernel refused it): 0x05 and a connection-refused
  // record, where HTTP's CONNECT host:0 is 400 before admission.
  it.each([
    ['an IPv4 address', h('05010001 7f000001 0000')],
    ['a name', h(`05010003 0c ${ascii('example.test')} 0000`)],
  ])('CONNECT to port 0 of %s: 0x01 before admission, no flow, no record, its data never dialled', async (_name, request) => {
    const s = connect(gw.socksPort, gw.socksHost);
    await once(s, 'connect');
    const clientPort = s.localPort as number;
    const result = readToEnd(s);
    s.write(Buffer.concat([NO_AUTH.subarray(0, 1), h('0100'), request, Buffer.from('optimistic')]));
    const { data } = await result;
    expect(data.toString('hex')).toBe(Buffer.concat([NO_AUTH, rep(1)]).toString('hex'));
    expect(gw.logs.at(-1)).toMatchObject({ level: 'warn', listener: 'socks', code: 'EGW_BAD_REQUEST' });
    expect(gw.closed.filter((r) => r.client.port === clientPort)).toEqual([]);
    expect(gw.flows.activeCount).toBe(0);
  });

  it('keeps serving others afterwards', async () => {
    await stillServes(gw);
  });
});

describe('authentication', () => {
  it('requireAuth and no username/password method offered: 0xFF and close', async () => {
    const { data } = await exchange(authGw, h('05 01 00'));
    expect(data.toString('hex')).toBe('05ff');
    expect(authGw.logs.at(-1)).toMatchObject({ code: 'EGW_AUTH_REQUIRED' });
  });
  it('wrong password: status 0x01 and close; right one: the request proceeds', async () => {
    const bad = await exchange(authGw, h(`050102 01 03 ${ascii('bob')} 02 ${ascii('no')}`));
    expect(bad.data.toString('hex')).toBe('05020101');
    const s = connect(authGw.socksPort, authGw.socksHost);
    await once(s, 'connect');
    const port = origin.port.toString(16).padStart(4, '0');
    s.write(h(`050102 01 03 ${ascii('bob')} 02 ${ascii('pw')} 05010001 7f000001 ${port}`));
    const head = await readBytes(s, 4 + 10 + 2);
    expect(head.subarray(0, 5).toString('hex')).toBe('0502010005');
    expect(head[5]).toBe(0);
    expect(head.subarray(14).toString()).toBe('hi');
    s.end();
    const rec = await authGw.waitForClosed((r) => r.identity.user === 'bob');
    expect(rec.bytesOut).toBe(0);
    expect(rec.bytesIn).toBe(2);
  });
});

describe('split and pipelined input', () => {
  it('greeting, request and payload one byte at a time', async () => {
    const s = connect(gw.socksPort, gw.socksHost);
    s.setNoDelay(true);
    await once(s, 'connect');
    const received: Buffer[] = [];
    s.on('data', (c: Buffer) => received.push(c));
    const port = origin.port.toString(16).padStart(4, '0');
    const bytes = Buffer.concat([h(`050100 05010001 7f000001 ${port}`), Buffer.from('xyz')]);
    for (const byte of bytes) {
      await new Promise<void>((r) => s.write(Buffer.from([byte]), () => r()));
      await new Promise<void>((r) => setImmediate(r));
    }
    s.end();
    await once(s, 'close');
    const all = Buffer.concat(received);
    expect(all.subarray(0, 3).toString('hex')).toBe('050005');
    expect(all[3]).toBe(0); // succeeded
    expect(all.subarray(12).toString()).toBe('hixyz');
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5' && r.bytesOut === 3);
    expect(rec.bytesIn).toBe(5);
  });

  it('greeting + request + payload in one write (optimistic data reaches the origin, counted once)', async () => {
    const s = connect(gw.socksPort, gw.socksHost);
    await once(s, 'connect');
    const port = origin.port.toString(16).padStart(4, '0');
    const result = readToEnd(s);
    s.end(Buffer.concat([h(`050100 05010001 7f000001 ${port}`), Buffer.from('early-bytes')]));
    const { data } = await result;
    expect(data.subarray(12).toString()).toBe('hiearly-bytes');
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5' && r.bytesOut === 11);
    expect(rec.bytesIn).toBe(13);
  });
});

describe('slow and flooding clients', () => {
  it('a client stuck mid-request is cut off at limits.headerTimeoutMs; others are served meanwhile', async () => {
    const s = connect(slowGw.socksPort, slowGw.socksHost);
    await once(s, 'connect');
    const result = readToEnd(s);
    s.write(h('050100 0501'));
    await stillServes(slowGw);
    const { data } = await result;
    expect(data.toString('hex')).toBe(Buffer.concat([NO_AUTH, rep(1)]).toString('hex'));
    expect(slowGw.logs.some((l) => l.code === 'EGW_HEADER_TIMEOUT')).toBe(true);
  });

  it('a client that never sends a byte is cut off too', async () => {
    const s = connect(slowGw.socksPort, slowGw.socksHost);
    await once(s, 'connect');
    const { data } = await readToEnd(s);
    expect(data.length).toBe(0);
  });

  it('a flood after a bad request: one reply, the rest discarded, the connection closed', async () => {
    const s: Socket = connect(gw.socksPort, gw.socksHost);
    await once(s, 'connect');
    const result = readToEnd(s);
    s.write(h('050100 05010007'));
    const junk = Buffer.alloc(64 * 1024, 0x41);
    for (let i = 0; i < 32 && !s.destroyed; i++) {
      if (!s.write(junk)) await Promise.race([once(s, 'drain'), once(s, 'close')]);
    }
    s.end();
    const { data } = await result;
    expect(data.toString('hex')).toBe(Buffer.concat([NO_AUTH, rep(8)]).toString('hex'));
    await stillServes(gw);
  });
});
