/**
 * What a socks5 parent answers, byte for byte, and what the gateway makes of it: a raw parent
 * scripted per case answers our greeting, our RFC 1929 login and our CONNECT request with the bytes
 * the case gives, then stays open (or, after a successful reply, sends `hi` and closes, standing in
 * for the destination). Clients go through the gateway's HTTP CONNECT (the SOCKS5 listener and the
 * absolute-URI path dial the parent the same way, gateway/upstream/dial.ts).
 */
import { once } from 'node:events';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawExchange } from './http-harness.ts';

/**
 * What the parent answers: `method` to the greeting; `login` to an RFC 1929 login (only read when
 * given); `reply` to the CONNECT request, its pieces written 20 ms apart; then `hi` and a FIN when
 * `thenHi`, else nothing more (the connection left open).
 */
interface Script {
  method: number[];
  login?: number[];
  reply?: number[][];
  thenHi?: boolean;
}

let script: Script = { method: [5, 0] };
let server: Server;
let port: number;
const sockets = new Set<Socket>();
let gw: TestGateway | null = null;

/** Bytes a request takes at the start of `buf` in `stage`, or 0 while it is incomplete. */
function requestLength(stage: 'greeting' | 'login' | 'request', buf: Buffer): number {
  if (stage === 'greeting') return buf.length >= 2 && buf.length >= 2 + (buf[1] as number) ? 2 + (buf[1] as number) : 0;
  if (stage === 'login') {
    const ul = buf[1];
    if (ul === undefined || buf.length < 3 + ul) return 0;
    const n = 3 + ul + (buf[2 + ul] as number);
    return buf.length >= n ? n : 0;
  }
  // Our CONNECT request for 127.0.0.1:9: VER CMD RSV ATYP(1) 4 bytes, 2 bytes of port.
  return buf.length >= 10 ? 10 : 0;
}

beforeAll(async () => {
  server = createServer((s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => {});
    const { method, login, reply, thenHi } = script;
    let stage: 'greeting' | 'login' | 'request' | 'done' = 'greeting';
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (stage === 'done') return;
        const n = requestLength(stage, buf);
        if (n === 0) return;
        buf = buf.subarray(n);
        if (stage === 'greeting') {
          s.write(Buffer.from(method));
          stage = login ? 'login' : 'request';
        } else if (stage === 'login') {
          s.write(Buffer.from(login as number[]));
          stage = 'request';
        } else {
          stage = 'done';
          const pieces = reply ?? [];
          pieces.forEach((piece, i) => {
            setTimeout(() => {
              if (s.destroyed) return;
              s.write(Buffer.from(piece));
              if (thenHi && i === pieces.length - 1) s.end('hi');
            }, 20 * i);
          });
        }
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as AddressInfo).port;
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
  for (const s of sockets) s.destroy();
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
});

/** A gateway whose parent is the scripted one (with `user:pass` when `withLogin`), and a CONNECT through it: the response and the flow's record. */
async function connectThrough(withLogin: boolean): Promise<{ response: string; rec: Awaited<ReturnType<TestGateway['waitForClosed']>> }> {
  // A limit far past the bound the client waits: an answer at all means the parent was judged.
  gw = await startTestGateway({ upstream: `socks5://${withLogin ? 'pu:s3cret@' : ''}127.0.0.1:${port}`, limits: { connectTimeoutMs: 20_000 } });
  const { response } = await rawExchange(gw.httpPort, 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n', 5000);
  const rec = await gw.waitForClosed((r) => r.protocol === 'connect');
  return { response, rec };
}

/** The `err` of the CONNECT's dial failure warning. */
function dialError(): unknown {
  return gw?.logs.find((l) => l.msg === 'CONNECT dial failed')?.err;
}

// Regression: a parent's answer was judged only once it had as many bytes as the answer takes (5 of
// a CONNECT reply, 2 of a method choice). A parent that answered our CONNECT with fewer, none of
// them SOCKS5 (`04 5b 00 00`, `NO\r\n`), and then said nothing was waited on until connectTimeoutMs:
// with 1,500 ms, 504 connect-timeout at 1,553 ms, logged "did not answer in time", and recorded as
// the destination's timeout (a failed attempt for an0081.scan). One byte not 0x05 to our greeting
// was 504 upstream-proxy at the deadline, "did not answer its SOCKS5 greeting in time".
describe('a socks5 parent whose answer is not SOCKS5 and too short to be one, then silent', () => {
  const cases: Array<[string, Script, string]> = [
    ['a SOCKS4 reply cut short to the CONNECT', { method: [5, 0], reply: [[0x04, 0x5b, 0x00, 0x00]] }, 'sent a malformed reply'],
    ['an error line to the CONNECT', { method: [5, 0], reply: [[...Buffer.from('NO\r\n')]] }, 'sent a malformed reply'],
    ['one byte, not 0x05, to the greeting', { method: [0x04] }, 'answered with another protocol'],
  ];
  it.each(cases)('%s: 502 upstream-proxy at once, one record, the log says what it sent', async (_name, what, said) => {
    script = what;
    const { response, rec } = await connectThrough(false);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    expect(jsonBody(response).reason).toBe('upstream-proxy');
    expect([rec.closeReason, rec.upstream, rec.bytesIn, rec.bytesOut]).toEqual(['upstream-proxy', `socks5://127.0.0.1:${port}`, 0, 0]);
    expect(gw?.closed).toHaveLength(1);
    expect(dialError()).toBe(`parent proxy socks5://127.0.0.1:${port} ${said}`);
  });
});

// Regression: a method choice we did not offer (RFC 1928 §3: the parent picks among ours) was
// logged as a want of credentials: GSSAPI 0x01 to a URL without a login, "wants credentials and its
// URL has none"; 0x80 to one with, "accepts none of our login methods". The client's 502 was right.
describe('a socks5 parent that chooses a method we did not offer', () => {
  const cases: Array<[string, number, boolean, string]> = [
    ['GSSAPI 0x01, no login in the URL', 0x01, false, 'chose method 0x01, which we did not offer'],
    ['a private method 0x80, a login in the URL', 0x80, true, 'chose method 0x80, which we did not offer'],
    // Unchanged: what RFC 1928 lets the parent say.
    ['0xFF, no login in the URL', 0xff, false, 'wants credentials and its URL has none'],
    ['0xFF, a login in the URL', 0xff, true, 'accepts none of our login methods'],
    ['0x02, no login in the URL (not offered either)', 0x02, false, 'wants credentials and its URL has none'],
  ];
  it.each(cases)('%s: 502 upstream-proxy, one record, the log names the method', async (_name, method, withLogin, said) => {
    script = { method: [5, method] };
    const { response, rec } = await connectThrough(withLogin);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    expect(jsonBody(response).reason).toBe('upstream-proxy');
    expect([rec.closeReason, rec.bytesIn, rec.bytesOut]).toEqual(['upstream-proxy', 0, 0]);
    expect(gw?.closed).toHaveLength(1);
    expect(dialError()).toBe(`parent proxy socks5://127.0.0.1:${port} ${said}`);
  });
});

// Not defects, pinned so they stay decided:
// - the RFC 1929 answer's VER is not read, only its STATUS: RFC 1929 §2 makes it 0x01, but servers
//   answering 0x05 are common enough that curl ignores it and tinyproxy, proxychains-ng and
//   microsocks accept both (dante's client refuses a mismatch). The CONNECT reply after it is read
//   in full, so a parent that is no SOCKS5 server still fails there.
// - a CONNECT reply is read however it is cut, a domain BND.ADDR by its length byte, RSV not read
//   (curl's reading too); an unknown ATYP is malformed.
describe('a socks5 parent whose answers are odd but readable', () => {
  const ok = (reply: number[][], login?: number[]): Script => ({ method: login ? [5, 2] : [5, 0], login, reply, thenHi: true });
  const success: Array<[string, Script, boolean]> = [
    ['the login answered VER 0x05 STATUS 0x00', ok([[5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38]], [5, 0]), true],
    ['the login answered VER 0x01 STATUS 0x00', ok([[5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38]], [1, 0]), true],
    ['a domain BND.ADDR, the reply one byte per write', ok([5, 0, 0, 3, 3, 0x61, 0x62, 0x63, 0x04, 0x38].map((b) => [b])), false],
    ['RSV 0x07', ok([[5, 0, 7, 1, 127, 0, 0, 1, 0x04, 0x38]]), false],
  ];
  it.each(success)('%s: the tunnel opens and carries what follows the reply', async (_name, what, withLogin) => {
    script = what;
    const { response, rec } = await connectThrough(withLogin);
    expect(response).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\nhi$/);
    expect([rec.closeReason, rec.bytesIn, rec.bytesOut]).toEqual(['closed', 2, 0]);
  });

  const refused: Array<[string, Script, boolean, string, string]> = [
    ['the login answered STATUS 0x01', { method: [5, 2], login: [1, 1] }, true, 'upstream-proxy', 'refused our credentials'],
    ['ATYP 0x05', { method: [5, 0], reply: [[5, 0, 0, 5, 0, 0, 0, 0, 0, 0]] }, false, 'upstream-proxy', 'sent a malformed reply'],
    ['REP 0x05 in a reply cut after VER', { method: [5, 0], reply: [[5], [5, 0, 1, 0, 0, 0, 0, 0, 0]] }, false, 'connection-refused', 'answered 0x05'],
  ];
  it.each(refused)('%s: refused, one record', async (_name, what, withLogin, reason, said) => {
    script = what;
    const { response, rec } = await connectThrough(withLogin);
    expect(response.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    expect(jsonBody(response).reason).toBe(reason);
    expect([rec.closeReason, rec.bytesIn, rec.bytesOut]).toEqual([reason, 0, 0]);
    expect(gw?.closed).toHaveLength(1);
    expect(dialError()).toBe(`parent proxy socks5://127.0.0.1:${port} ${said}`);
  });
});
