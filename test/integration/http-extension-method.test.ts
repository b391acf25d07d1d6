/**
 * Extension methods on the absolute-URI path (RFC 9110 §9.1, §16.1): a request whose method is a
 * token node's parser does not know (`BREW`, `FOO`, RTSP's `PLAY`) is forwarded as any other
 * request — admitted, its body framed by Content-Length or chunked, hop-by-hop fields and
 * Proxy-Authorization removed, Via added, its answer relayed, its flow record exact — instead of
 * 400. A method that is not a token, and the smuggling shapes, stay 400. Raw sockets and undici,
 * through the real listener, to a real origin on loopback.
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { hasOpenssl } from '../helpers/tls.ts';
import { type LocalGateway, rawConnect, rawExchange, run, startLocalGateway } from './http-harness.ts';

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: Buffer;
}

interface RawOrigin {
  port: number;
  seen: Seen[];
  close(): Promise<void>;
}

/**
 * An origin that takes any method (node:http, like the gateway's parser before, refuses BREW):
 * requests framed by Content-Length or chunked, each answered `echo:<METHOD>:<body length>` with
 * Content-Length, keep-alive. Only what this file sends; anything else closes the connection.
 */
async function startRawOrigin(): Promise<RawOrigin> {
  const seen: Seen[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        const taken = takeRequest(buf);
        if (taken === null) return;
        if (taken === 'bad') {
          s.destroy();
          return;
        }
        buf = buf.subarray(taken.end);
        seen.push(taken.seen);
        const answer = `echo:${taken.seen.method}:${taken.seen.body.length}`;
        s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${answer.length}\r\n\r\n${answer}`);
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as { port: number }).port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** One whole request at the start of `buf`, 'bad', or null (more to come). */
function takeRequest(buf: Buffer): { seen: Seen; end: number } | 'bad' | null {
  const blank = buf.indexOf('\r\n\r\n');
  if (blank < 0) return null;
  const [line = '', ...fields] = buf.toString('latin1', 0, blank).split('\r\n');
  const [method = '', url = ''] = line.split(' ');
  const headers: Record<string, string> = {};
  for (const f of fields) {
    const colon = f.indexOf(':');
    headers[f.slice(0, colon).toLowerCase()] = f.slice(colon + 1).trim();
  }
  let at = blank + 4;
  const parts: Buffer[] = [];
  if (headers['transfer-encoding'] === 'chunked') {
    for (;;) {
      const lineEnd = buf.indexOf('\r\n', at);
      if (lineEnd < 0) return null;
      const size = Number.parseInt(buf.toString('latin1', at, lineEnd), 16);
      if (!Number.isFinite(size)) return 'bad';
      if (size === 0) {
        // No trailers are sent here: the last chunk's line, then the empty line.
        if (buf.length < lineEnd + 4) return null;
        at = lineEnd + 4;
        break;
      }
      if (buf.length < lineEnd + 2 + size + 2) return null;
      parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
  } else {
    const length = Number(headers['content-length'] ?? 0);
    if (buf.length < at + length) return null;
    parts.push(buf.subarray(at, at + length));
    at += length;
  }
  return { seen: { method, url, headers, body: Buffer.from(Buffer.concat(parts)) }, end: at };
}

let gw: TestGateway;
let origin: RawOrigin;
let base: string;

beforeAll(async () => {
  origin = await startRawOrigin();
  gw = await startTestGateway({ identity: { users: [{ name: 'alice', password: 'wonder', roles: ['any'] }] } });
  base = `http://127.0.0.1:${origin.port}`;
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

const AUTH = `Proxy-Authorization: Basic ${Buffer.from('alice:wonder').toString('base64')}\r\n`;

/** Read from `s` until `n` whole responses (Content-Length framed, as the origin answers) are in; bounded. */
function readResponses(s: Socket, n: number, timeoutMs = 10_000): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => done(new Error(`timed out: ${JSON.stringify(text)}`)), timeoutMs);
    const onData = (c: Buffer): void => {
      text += c.toString('latin1');
      const out: string[] = [];
      let rest = text;
      while (out.length < n) {
        const blank = rest.indexOf('\r\n\r\n');
        if (blank < 0) return;
        const length = /\r\ncontent-length: (\d+)/i.exec(rest.slice(0, blank));
        const end = blank + 4 + Number(length?.[1] ?? 0);
        if (rest.length < end) return;
        out.push(rest.slice(0, end));
        rest = rest.slice(end);
      }
      done(null, out);
    };
    const onClose = (): void => done(new Error(`closed after: ${JSON.stringify(text)}`));
    function done(err: Error | null, out?: string[]): void {
      clearTimeout(timer);
      s.removeListener('data', onData);
      s.removeListener('close', onClose);
      if (err) reject(err);
      else resolve(out ?? []);
    }
    s.on('data', onData);
    s.on('close', onClose);
  });
}

/** The closed records of the connection from client port `port`, once `n` of them are in (bounded). */
async function recordsOf(port: number | undefined, n: number): Promise<FlowRecord[]> {
  await gw.waitForClosed(() => gw.closed.filter((r) => r.client.port === port).length >= n, 10_000);
  return gw.closed.filter((r) => r.client.port === port);
}

const seenAt = (path: string): Seen[] => origin.seen.filter((r) => r.url === path);

describe('extension methods through the absolute-URI path', () => {
  it('BREW with a Content-Length body after a GET served by the fast path: forwarded, answered, the connection ends', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    try {
      s.write(`GET ${base}/before HTTP/1.1\r\nHost: x\r\n\r\n`);
      const [first] = await readResponses(s, 1);
      expect(first).toMatch(/^HTTP\/1\.1 200 /);
      const port = s.localPort;
      const closed = once(s, 'close');
      s.write(`BREW ${base}/brew HTTP/1.1\r\nHost: x\r\n${AUTH}Connection: keep-alive, x-hop\r\nX-Hop: 1\r\nX-Kept: 2\r\nContent-Length: 11\r\n\r\nhello world`);
      const [brewed = ''] = await readResponses(s, 1);
      expect(brewed).toMatch(/^HTTP\/1\.1 200 /);
      expect(brewed.endsWith('\r\n\r\necho:BREW:11')).toBe(true);
      expect(brewed).toMatch(/\r\nvia: /i);
      expect(brewed).toMatch(/\r\nconnection: close\r\n/i);
      s.end();
      await closed;
      const [seen] = seenAt('/brew');
      expect(seen?.method).toBe('BREW');
      expect(seen?.body.toString()).toBe('hello world');
      expect(seen?.headers['proxy-authorization']).toBeUndefined();
      expect(seen?.headers['x-hop']).toBeUndefined();
      expect(seen?.headers['x-kept']).toBe('2');
      expect(seen?.headers.via).toBeDefined();
      expect(seen?.headers.host).toBe(`127.0.0.1:${origin.port}`);
      const records = await recordsOf(port, 2);
      expect(records.map((r) => [r.closeReason, r.bytesOut, r.bytesIn])).toEqual([
        ['closed', 0, 'echo:GET:0'.length],
        ['closed', 11, 'echo:BREW:11'.length],
      ]);
      expect(records[1]?.identity.user).toBe('alice');
    } finally {
      s.destroy();
    }
  });

  it('FOO with a chunked body: the origin gets the payload, bytesOut counts it without framing', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    try {
      s.write(`FOO ${base}/foo-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n`);
      const [answer] = await readResponses(s, 1);
      expect(answer?.endsWith('echo:FOO:11')).toBe(true);
      expect(seenAt('/foo-chunked')[0]?.body.toString()).toBe('hello world');
      expect(seenAt('/foo-chunked')[0]?.method).toBe('FOO');
      const [record] = await recordsOf(s.localPort, 1);
      expect([record?.closeReason, record?.bytesOut, record?.bytesIn]).toEqual(['closed', 11, 'echo:FOO:11'.length]);
    } finally {
      s.destroy();
    }
  });

  it.each([
    ['a token llhttp does not know at all', 'FOO', '/foo-none'],
    ['a known method and more', 'GETX', '/getx'],
    ['a lower-case spelling (methods are case-sensitive)', 'get', '/lower'],
    ['an RTSP method (HPE_INVALID_CONSTANT)', 'PLAY', '/play'],
    ['a token with tchar punctuation', "X-Y.Z!#$%&'*+^_`|~1", '/punct'],
  ])('no body, %s: forwarded as sent', async (_what, method, path) => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    try {
      s.write(`${method} ${base}${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
      const [answer = ''] = await readResponses(s, 1);
      expect(answer.endsWith(`echo:${method}:0`)).toBe(true);
      expect(seenAt(path)[0]?.method).toBe(method);
      const [record] = await recordsOf(s.localPort, 1);
      expect([record?.closeReason, record?.bytesOut, record?.bytesIn]).toEqual(['closed', 0, `echo:${method}:0`.length]);
    } finally {
      s.destroy();
    }
  });

  it.each([
    ['refused at its first byte (no method starts with x)', 'xBREW', 1, '/split-x'],
    ['refused at its first byte, after empty lines', 'zz', 3, '/split-crlf'],
    ['refused inside the first packet, the method going on in the next', 'BREWING', 4, '/split-brew'],
  ])('a head split inside the method, %s: the method is read whole, forwarded', async (_what, method, at, path) => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    try {
      const head = `${path === '/split-crlf' ? '\r\n' : ''}${method} ${base}${path} HTTP/1.1\r\nHost: x\r\n\r\n`;
      s.write(head.slice(0, at));
      await new Promise((r) => setTimeout(r, 100));
      s.write(head.slice(at));
      const [answer = ''] = await readResponses(s, 1);
      expect(answer.endsWith(`echo:${method}:0`)).toBe(true);
      expect(seenAt(path).map((r) => r.method)).toEqual([method]);
    } finally {
      s.destroy();
    }
  });

  it.each([
    ['PROP', 'FOO', '/split-propfoo'],
    ['GE', 'TX', '/split-getx'],
    ['PL', 'AY', '/split-play'],
  ])('a head split after %s (a known method\'s start) and %s…: 400, never read as the second part alone', async (first, rest, path) => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    const closed = once(s, 'close');
    const guard = setTimeout(() => s.destroy(), 10_000);
    s.write(first);
    await new Promise((r) => setTimeout(r, 100));
    s.write(`${rest} ${base}${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await closed;
    clearTimeout(guard);
    expect(Buffer.concat(chunks).toString('latin1')).toMatch(/^HTTP\/1\.1 400 /);
    expect(seenAt(path)).toEqual([]);
  });

  it('undici request with method FOO through the proxy (absolute-URI), with and without a body', async () => {
    const agent = new ProxyAgent({ uri: `http://127.0.0.1:${gw.httpPort}`, proxyTunnel: false });
    try {
      const withBody = await request(`${base}/undici-foo`, { method: 'FOO', body: 'twelve bytes', dispatcher: agent });
      expect(withBody.statusCode).toBe(200);
      expect(await withBody.body.text()).toBe('echo:FOO:12');
      const bare = await request(`${base}/undici-bare`, { method: 'FOO', dispatcher: agent });
      expect(await bare.body.text()).toBe('echo:FOO:0');
      expect(seenAt('/undici-foo')[0]?.body.toString()).toBe('twelve bytes');
      const record = await gw.waitForClosed((r) => r.closeReason === 'closed' && r.bytesOut === 12 && r.bytesIn === 'echo:FOO:12'.length);
      expect(record.verdict).toBe('allow');
    } finally {
      await agent.close();
    }
  });

  it.each([
    ['a method that is not a token', `G@T ${base}/bad-token HTTP/1.1\r\nHost: x\r\n\r\n`, '/bad-token'],
    ['a method with a quote', `FO"O ${base}/bad-quote HTTP/1.1\r\nHost: x\r\n\r\n`, '/bad-quote'],
    ['Content-Length with Transfer-Encoding', `FOO ${base}/cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, '/cl-te'],
    ['two Content-Lengths', `FOO ${base}/cl-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd`, '/cl-cl'],
    ['an origin-form target', 'BREW /origin-form HTTP/1.1\r\nHost: x\r\n\r\n', '/origin-form'],
  ])('%s: 400, nothing reaches the origin', async (_what, bytes, path) => {
    const { response } = await rawExchange(gw.httpPort, bytes);
    expect(response).toMatch(/^HTTP\/1\.1 400 /);
    expect(seenAt(path)).toEqual([]);
  });

  it('a client waiting inside a split method does not hold up the next client on the listener', async () => {
    const slow = await rawConnect(gw.httpPort);
    slow.on('error', () => undefined);
    try {
      slow.write('BR');
      await new Promise((r) => setTimeout(r, 50));
      const other = await rawConnect(gw.httpPort);
      other.on('error', () => undefined);
      try {
        other.write(`PUT ${base}/other HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok`);
        const [answer] = await readResponses(other, 1);
        expect(answer?.endsWith('echo:PUT:2')).toBe(true);
      } finally {
        other.destroy();
      }
      slow.write(`EW ${base}/slow-brew HTTP/1.1\r\nHost: x\r\n\r\n`);
      const [brewed = ''] = await readResponses(slow, 1);
      expect(brewed.endsWith('echo:BREW:0')).toBe(true);
    } finally {
      slow.destroy();
    }
  });

  it('behind a request node:http served on the connection (a body): 400 as before, where it begins is not known there', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    try {
      s.write(`PUT ${base}/put-first HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok`);
      const [put = ''] = await readResponses(s, 1);
      expect(put.endsWith('echo:PUT:2')).toBe(true);
      const closed = once(s, 'close');
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      // Had the client split `PROPFOO` after `PROP`, node's parser would refuse this very packet.
      s.write(`FOO ${base}/behind-put HTTP/1.1\r\nHost: x\r\n\r\n`);
      const guard = setTimeout(() => s.destroy(), 10_000);
      await closed;
      clearTimeout(guard);
      expect(Buffer.concat(chunks).toString('latin1')).toMatch(/^HTTP\/1\.1 400 /);
      expect(seenAt('/behind-put')).toEqual([]);
    } finally {
      s.destroy();
    }
  });

  it('a request line that never ends its method is cut at the header timeout (408)', async () => {
    const local = await startTestGateway({ limits: { headerTimeoutMs: 300 } });
    try {
      const s = await rawConnect(local.httpPort);
      s.on('error', () => undefined);
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      const closed = once(s, 'close');
      const guard = setTimeout(() => s.destroy(), 10_000);
      // Past the front's first-bytes wait, into node:http, then a method that never ends.
      s.write('XYZ');
      await closed;
      clearTimeout(guard);
      expect(Buffer.concat(chunks).toString('latin1')).toMatch(/^HTTP\/1\.1 408 /);
    } finally {
      await local.stop();
    }
  });
});

describe.runIf(skipNotice(hasOpenssl(), 'extension methods on the HTTPS listener', 'openssl is not installed'))('extension methods on the HTTPS listener', () => {
  let tlsGw: LocalGateway;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egw-ext-tls-'));
    const made = await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1',
      '-subj', '/CN=egressgate-test', '-addext', 'subjectAltName=IP:127.0.0.1',
    ]);
    expect(made.code).toBe(0);
    tlsGw = await startLocalGateway({}, { tls: { cert: readFileSync(join(dir, 'cert.pem')), key: readFileSync(join(dir, 'key.pem')) } });
  });

  afterAll(async () => {
    await tlsGw?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.each([0, 1])('BREW with a body over TLS (split after %i bytes): forwarded, record exact', async (at) => {
    const s = tlsConnect({ host: '127.0.0.1', port: tlsGw.httpPort, ca: readFileSync(join(dir, 'cert.pem')) });
    s.on('error', () => undefined);
    await once(s, 'secureConnect');
    try {
      const path = `/tls-brew-${at}`;
      const request = `xBREW ${base}${path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody`;
      if (at > 0) {
        s.write(request.slice(0, at));
        await new Promise((r) => setTimeout(r, 100));
      }
      s.write(request.slice(at));
      const [answer = ''] = await readResponses(s as unknown as Socket, 1);
      expect(answer.endsWith('echo:xBREW:4')).toBe(true);
      expect(seenAt(path).map((r) => [r.method, r.body.toString()])).toEqual([['xBREW', 'body']]);
      const record = await tlsGw.waitForClosed((r) => r.closeReason === 'closed' && r.bytesOut === 4, 10_000);
      expect(record.bytesIn).toBe('echo:xBREW:4'.length);
    } finally {
      s.destroy();
    }
  });
});
