/**
 * A request head node's parser refuses (a malformed field line, a head cut by the client's FIN),
 * pipelined behind a valid request still being answered: the valid request is answered first, whole,
 * and the 400 follows as the connection's last answer, on node:http's absolute-URI path as on the
 * fast path. Regression: node:http wrote the 400 in place of the answer still owed, or cut that
 * answer mid-body, and recorded its flow `bad-request` (a FIN: `client-reset`) although its origin
 * had it. Reproduced through the real listener with raw sockets, each valid head split in two
 * packets (node:http's path): a GET and a malformed GET in one write → only `400` (record
 * `bad-request`, bytesIn 0); a GET to a 300 ms origin and the malformed head 50 ms later → only
 * `400` (record `bad-request`, bytesIn 4: the origin had answered); an answer whose origin sends
 * 1,000 of 2,000 body bytes, then the rest 300 ms later, with the malformed head sent at its first
 * byte → 1,159 bytes and the connection cut (record `bad-request`, bytesIn 1,000); a partial head
 * and the client's FIN after a GET to the 300 ms origin → only `400` (record `client-reset`,
 * bytesIn 0). The fast path (heads whole): 200 and the whole answer, then 400, each time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pipelinedExchange, startOrigin } from './http-harness.ts';

/** Far beyond what any exchange here needs: the connection must have closed long before. */
const GUARD_MS = 15_000;

let gw: TestGateway;
let origin: Origin;

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url === '/slow') {
      setTimeout(() => {
        res.writeHead(200, { 'content-length': 4 });
        res.end('slow');
      }, 300);
      return true;
    }
    if (req.url === '/trickle') {
      res.writeHead(200, { 'content-length': 2000 });
      res.write('a'.repeat(1000));
      setTimeout(() => res.end('b'.repeat(1000)), 300);
      return true;
    }
    return false;
  });
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

const authority = (): string => `127.0.0.1:${origin.port}`;
const get = (path: string): string => `GET http://${authority()}${path} HTTP/1.1\r\nHost: ${authority()}\r\n\r\n`;
/** A field name with a space in it: node's parser refuses the head (HPE_INVALID_HEADER_TOKEN). */
const badHead = (): string => `GET http://${authority()}/bad HTTP/1.1\r\nHost: ${authority()}\r\nBad Field: x\r\n\r\n`;
/** A head the client's FIN cuts (HPE_INVALID_EOF_STATE). */
const cutHead = (): string => `GET http://${authority()}/cut HTTP/1.1\r\nHost: ${authority()}\r\nX-A: `;

/**
 * Send `parts` (30 ms apart), then `after` at the answer's first byte (or 50 ms after the last part),
 * and a FIN with it when `fin`; read until the gateway closes the connection.
 */
async function exchange(parts: readonly string[], after: string, opts: { atFirstByte: boolean; fin: boolean }): Promise<Buffer> {
  return pipelinedExchange(gw.httpPort, parts, after, { ...opts, guardMs: GUARD_MS });
}

/** The responses in `raw`, in order: status line and body (framed by Content-Length). */
function responses(raw: Buffer): Array<{ status: string; body: string }> {
  const out: Array<{ status: string; body: string }> = [];
  let at = 0;
  while (at < raw.length && out.length < 10) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end < 0) throw new Error(`an unfinished head: ${raw.toString('latin1', at, at + 200)}`);
    const lines = raw.toString('latin1', at, end).split('\r\n');
    const length = Number(/^content-length: *(\d+)$/im.exec(lines.join('\n'))?.[1] ?? 0);
    out.push({ status: lines[0] ?? '', body: raw.toString('latin1', end + 4, end + 4 + length) });
    at = end + 4 + length;
  }
  return out;
}

/** The closed record of the one valid request. */
async function onlyRecord(): Promise<{ closeReason: string | null; bytesIn: number }> {
  const rec = await gw.waitForClosed((r) => r.destination.port === origin.port);
  return { closeReason: rec.closeReason, bytesIn: rec.bytesIn };
}

describe('a refused head pipelined behind a request still being answered', () => {
  it('a GET and a malformed GET in one write (node:http): 200, then 400', async () => {
    gw.closed.length = 0;
    const raw = await exchange([get('/one-write') + badHead()], '', { atFirstByte: false, fin: false });
    const got = responses(raw);
    expect(got.map((r) => r.status)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 400 Bad Request']);
    expect(got[0]?.body).toBe('echo:GET:0');
    expect(JSON.parse(got[1]?.body ?? '{}')).toMatchObject({ reason: 'bad-request', flowId: null });
    expect(await onlyRecord()).toEqual({ closeReason: 'closed', bytesIn: 10 });
  });

  // Head whole in one packet: the fast path; split in two: node:http. Both must answer alike.
  describe.each([
    ['fast path', (head: string): string[] => [head]],
    ['node:http', (head: string): string[] => [head.slice(0, 20), head.slice(20)]],
  ])('%s', (_path, packets) => {
    it('a malformed head 50 ms into a 300 ms answer: the answer, then 400', async () => {
      gw.closed.length = 0;
      const got = responses(await exchange(packets(get('/slow')), badHead(), { atFirstByte: false, fin: false }));
      expect(got.map((r) => r.status)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 400 Bad Request']);
      expect(got[0]?.body).toBe('slow');
      expect(await onlyRecord()).toEqual({ closeReason: 'closed', bytesIn: 4 });
      expect(origin.seen.some((s) => s.url === '/bad')).toBe(false);
    });

    it('a malformed head at the first byte of an answer still streaming: the answer whole, then 400', async () => {
      gw.closed.length = 0;
      const got = responses(await exchange(packets(get('/trickle')), badHead(), { atFirstByte: true, fin: false }));
      expect(got.map((r) => r.status)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 400 Bad Request']);
      expect(got[0]?.body).toBe('a'.repeat(1000) + 'b'.repeat(1000));
      expect(await onlyRecord()).toEqual({ closeReason: 'closed', bytesIn: 2000 });
    });

    it('a head cut by the FIN 50 ms into a 300 ms answer: the answer, then 400', async () => {
      gw.closed.length = 0;
      const got = responses(await exchange(packets(get('/slow')), cutHead(), { atFirstByte: false, fin: true }));
      expect(got.map((r) => r.status)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 400 Bad Request']);
      expect(got[0]?.body).toBe('slow');
      expect(await onlyRecord()).toEqual({ closeReason: 'closed', bytesIn: 4 });
      expect(origin.seen.some((s) => s.url === '/cut')).toBe(false);
    });
  });
});
