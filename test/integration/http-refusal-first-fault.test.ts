/**
 * A request with more than one fault is refused for the first, in the order the CONNECT path and
 * the first-line check judge: the request line's version, then the target, then the header fields.
 * The answer and the log's `why` name the same fault. Through a real `serve` with raw sockets, on
 * the absolute-URI path node:http serves (a request behind an answered one on its connection) and
 * on Upgrade.
 *
 * Regression: an unusable target with a refused header shape was answered 400 for the target but
 * logged `why` naming the shape (`expectation-failed`, `transfer-coding-not-implemented`,
 * `duplicate-host`, `upgrade-with-body`), and a relative target on an `HTTP/2.0` line was answered
 * 400 there where the same line as a connection's first got 505, logged `http-version-not-supported`.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loggedLines, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-first-fault-'));
let served: Served | null = null;

beforeAll(async () => {
  const path = join(dir, 'serve.yaml');
  writeFileSync(path, loopbackServeConfig('-'));
  served = await spawnServe(path);
}, 120_000);

afterAll(async () => {
  await killIfRunning(served?.child ?? null);
  rmSync(dir, { recursive: true, force: true });
});

/**
 * The gateway answers this itself (OPTIONS, Max-Forwards 0: no dial) and keeps the connection, so
 * the request behind it is read by node:http's own parser, not the first-line check.
 */
const ANSWERED_FIRST = 'OPTIONS http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nMax-Forwards: 0\r\n\r\n';

interface Outcome {
  status: number;
  reason: string | undefined;
  why: unknown;
}

/**
 * Send `head` (behind ANSWERED_FIRST once its answer is in, when `behindAnswered`) and return the
 * answer to it and the `why` of the warning `msg` it caused.
 */
async function refusal(head: string, msg: string, behindAnswered: boolean): Promise<Outcome> {
  const s = served as Served;
  const logged = loggedLines(s, msg).length;
  const text = await new Promise<string>((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port: s.http.port });
    const guard = setTimeout(() => {
      c.destroy();
      reject(new Error('no answer within 5 s'));
    }, 5_000);
    let got = '';
    let isSent = !behindAnswered;
    c.on('error', () => undefined);
    c.on('data', (b: Buffer) => {
      got += b.toString('latin1');
      if (!isSent && got.includes('\r\n\r\n')) {
        isSent = true;
        got = '';
        c.write(head);
      }
    });
    c.on('close', () => {
      clearTimeout(guard);
      resolve(got);
    });
    c.write(behindAnswered ? ANSWERED_FIRST : head);
  });
  await until(`the "${msg}" line`, () => loggedLines(s, msg).length > logged);
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  return {
    status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0),
    reason: (JSON.parse(body) as { reason?: string }).reason,
    why: loggedLines(s, msg).at(-1)?.['why'],
  };
}

const PROXY = 'bad proxy request refused';
const UPGRADE = 'bad upgrade request refused';

describe('absolute-URI path (node:http)', () => {
  it.each([
    ['a relative target and an unmet Expect', 'GET /rel HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n', { status: 400, reason: 'bad-request', why: 'not-absolute-uri' }],
    ['a relative target and gzip, chunked', 'GET /rel HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', { status: 400, reason: 'bad-request', why: 'not-absolute-uri' }],
    ['userinfo in the target and Host twice', 'GET http://u@a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', { status: 400, reason: 'bad-request', why: 'bad-authority' }],
    ['an HTTP/2.0 line with a relative target', 'GET /rel HTTP/2.0\r\nHost: a\r\n\r\n', { status: 505, reason: 'http-version-not-supported', why: 'http-version-not-supported' }],
    // Controls: one fault each, answered and logged as before.
    ['an unmet Expect alone', 'GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n', { status: 417, reason: 'expectation-failed', why: 'expectation-failed' }],
    ['gzip, chunked alone', 'GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', { status: 501, reason: 'transfer-coding-not-implemented', why: 'transfer-coding-not-implemented' }],
  ])('%s: answered and logged for the first fault', async (_name, head, expected) => {
    expect(await refusal(head, PROXY, true)).toEqual(expected);
  });
});

describe('Upgrade', () => {
  const upgrade = (target: string, extra: string): string => `GET ${target} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n${extra}\r\n`;
  it.each([
    ['a relative target and an unmet Expect', upgrade('/rel', 'Expect: foo\r\n'), { status: 400, reason: 'bad-request', why: 'not-absolute-uri' }],
    ['a relative target and a body', upgrade('/rel', 'Content-Length: 2\r\n'), { status: 400, reason: 'bad-request', why: 'not-absolute-uri' }],
    ['an unmet Expect alone (control)', upgrade('http://127.0.0.1:9/', 'Expect: foo\r\n'), { status: 417, reason: 'expectation-failed', why: 'expectation-failed' }],
  ])('%s: answered and logged for the first fault', async (_name, head, expected) => {
    expect(await refusal(head, UPGRADE, false)).toEqual(expected);
  });
});
