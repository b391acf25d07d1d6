/**
 * An Expect field holding a member other than `100-continue` (RFC 9110 §10.1.1: a server MAY answer
 * 417) is the gateway's own 417 on every path, before admission: absolute-URI (node:http's path;
 * the fast path hands an Expect to it), Upgrade and CONNECT (the CONNECT front's heads and node:http's
 * alike). SPEC §4's shape: a JSON body, `connection: close`, a warn line with the reason, no flow
 * record, nothing dialled, whatever the policy would say of the destination. HTTP/1.0 requests have
 * their Expect ignored, as do an empty Expect and a CONNECT's 100-continue. The destination is a raw
 * TCP server that records every connection.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, rawConnect, type RecordingDestination, run, startRecordingDestination } from './http-harness.ts';

let gw: TestGateway;
let destination: RecordingDestination;
/** Allowlisted destination. */
let o: string;
/** Refused by the policy (127.0.0.2 is not allowlisted). */
let blocked: string;
let received: string[] = [];

const ANSWER = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok';

beforeAll(async () => {
  // Answers a whole head (and, for a POST, its 3-byte body) with 200 and closes.
  destination = await startRecordingDestination((s, soFar) => {
    const end = soFar.indexOf('\r\n\r\n');
    if (end < 0) return;
    if (soFar.startsWith('POST ') && soFar.length < end + 4 + 3) return;
    s.end(ANSWER);
  });
  received = destination.received;
  o = `127.0.0.1:${destination.port}`;
  blocked = `127.0.0.2:${destination.port}`;
  gw = await startTestGateway({ mode: 'enforce', roles: { any: { allow: [{ cidr: '127.0.0.1/32' }] } } });
});

afterAll(async () => {
  await gw?.stop();
  await destination?.close();
});

/**
 * Send `bytes` (split after the first 3 bytes when `isSplit`, so the CONNECT front hands the head to
 * node:http); collect everything until the gateway or the destination ends the connection (10 s bound).
 */
async function exchange(bytes: string, isSplit = false): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('end', () => s.end());
  const closed = once(s, 'close');
  const timer = setTimeout(() => s.destroy(), 10_000);
  if (isSplit) {
    s.write(bytes.slice(0, 3), 'latin1');
    await new Promise((r) => setTimeout(r, 50));
    s.write(bytes.slice(3), 'latin1');
  } else s.write(bytes, 'latin1');
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

const FAILED = { error: 'expectation failed', reason: 'expectation-failed', flowId: null };

describe('Expect with a member other than 100-continue', () => {
  // Regression: node:http answered the absolute-URI requests itself (417, an empty chunked body, no
  // log line), also for a destination the policy refuses; the Upgrade request and the CONNECTs went
  // on, their expectation dropped: the origin's 200, and a tunnel.
  const requests: Array<[string, (a: string) => string, boolean]> = [
    ['absolute-URI POST', (a) => `POST http://${a}/x HTTP/1.1\r\nHost: ${a}\r\nExpect: foo\r\nContent-Length: 3\r\n\r\nabc`, false],
    ['absolute-URI GET (not the fast path\'s)', (a) => `GET http://${a}/g HTTP/1.1\r\nHost: ${a}\r\nExpect: x-custom=1\r\n\r\n`, false],
    ['100-continue with another member', (a) => `POST http://${a}/x HTTP/1.1\r\nHost: ${a}\r\nExpect: 100-continue, foo\r\nContent-Length: 3\r\n\r\nabc`, false],
    ['a member that only contains 100-continue', (a) => `POST http://${a}/x HTTP/1.1\r\nHost: ${a}\r\nExpect: foo-100-continue\r\nContent-Length: 3\r\n\r\nabc`, false],
    ['Expect twice, the second other', (a) => `POST http://${a}/x HTTP/1.1\r\nHost: ${a}\r\nExpect: 100-continue\r\nExpect: foo\r\nContent-Length: 3\r\n\r\nabc`, false],
    ['Upgrade', (a) => `GET http://${a}/ws HTTP/1.1\r\nHost: ${a}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nExpect: foo\r\n\r\n`, false],
    ['CONNECT (the front)', (a) => `CONNECT ${a} HTTP/1.1\r\nHost: ${a}\r\nExpect: foo\r\n\r\nGET / HTTP/1.1\r\n\r\n`, false],
    ['CONNECT (split: node:http)', (a) => `CONNECT ${a} HTTP/1.1\r\nHost: ${a}\r\nExpect: foo\r\n\r\n`, true],
  ];
  it.each(requests)('%s: 417 in SPEC §4 shape, logged, no record, nothing dialled, allowed or blocked destination', async (_name, bytes, isSplit) => {
    for (const dest of [o, blocked]) {
      const connectionsBefore = received.length;
      const closedBefore = gw.closed.length;
      const logsBefore = gw.logs.length;
      const answer = await exchange(bytes(dest), isSplit);
      expect(answer.slice(0, 33), dest).toBe('HTTP/1.1 417 Expectation Failed\r\n');
      expect(answer).not.toContain('100 Continue');
      expect(answer).toMatch(/\r\ncontent-type: application\/json\r\n/i);
      expect(answer).toMatch(/\r\nconnection: close\r\n/i);
      expect(jsonBody(answer)).toEqual(FAILED);
      expect(received.length, 'no connection to the destination').toBe(connectionsBefore);
      expect(gw.closed.length, 'no flow record').toBe(closedBefore);
      expect(gw.logs.slice(logsBefore).map((l) => l.why)).toEqual(['expectation-failed']);
    }
  });

  it('curl through the proxy gets the 417 JSON body', async () => {
    const r = await run('curl', ['-sS', '--max-time', '10', '-x', `http://127.0.0.1:${gw.httpPort}`, '-H', 'Expect: foo', '--data-binary', 'abc', '-w', '\n%{http_code}', `http://${o}/curl`]);
    expect(r.code, r.stderr).toBe(0);
    const [body, status] = r.stdout.toString('utf8').split('\n');
    expect(status).toBe('417');
    expect(JSON.parse(body as string)).toEqual(FAILED);
  });
});

describe('an Expect the gateway ignores, served as before', () => {
  const served: Array<[string, (a: string) => string, string]> = [
    ['HTTP/1.0 with Expect: foo (RFC 9110 §10.1.1: ignored)', (a) => `POST http://${a}/ten HTTP/1.0\r\nHost: ${a}\r\nExpect: foo\r\nContent-Length: 3\r\n\r\nabc`, 'POST /ten HTTP/1.1\r\n'],
    ['an empty Expect (no member)', (a) => `POST http://${a}/empty HTTP/1.1\r\nHost: ${a}\r\nExpect: ,\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc`, 'POST /empty HTTP/1.1\r\n'],
    ['Expect: 100-Continue (case-insensitive)', (a) => `POST http://${a}/cont HTTP/1.1\r\nHost: ${a}\r\nExpect: 100-Continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc`, 'POST /cont HTTP/1.1\r\n'],
    ['CONNECT with Expect: 100-continue (no content: ignored)', (a) => `CONNECT ${a} HTTP/1.1\r\nHost: ${a}\r\nExpect: 100-continue\r\n\r\nGET /in-tunnel HTTP/1.1\r\n\r\n`, 'GET /in-tunnel HTTP/1.1\r\n'],
  ];
  it.each(served)('%s', async (_name, bytes, line) => {
    const connectionsBefore = received.length;
    const answer = await exchange(bytes(o));
    expect(answer).toMatch(/^HTTP\/1\.1 (100 Continue\r\n\r\nHTTP\/1\.1 )?200 /);
    expect(answer.endsWith('ok')).toBe(true);
    expect(received.length).toBe(connectionsBefore + 1);
    const got = received.at(-1) as string;
    expect(got.startsWith(line)).toBe(true);
    expect(got.toLowerCase()).not.toContain('\r\nexpect:');
  });
});
