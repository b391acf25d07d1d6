/**
 * Every refusal the HTTP listener logs carries the `code` (SPEC §4, gateway/reject.ts) behind its
 * answer, as `client request refused` lines do, so a log consumer can match the answer's `reason`
 * to its line. Through a real `serve` with raw sockets, reading its stderr.
 *
 * Regression: `bad proxy request refused`, `bad upgrade request refused`, `bad CONNECT request
 * refused` and `bad CONNECT target refused` had no `code`.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mapError } from '../../gateway/reject.ts';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loggedLines, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-refusal-code-'));
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
 * Answered by the gateway itself (OPTIONS, Max-Forwards 0: no dial) on a kept connection, so what
 * follows it is read by node:http, not by the first-line check (the CONNECT front).
 */
const ANSWERED_FIRST = 'OPTIONS http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nMax-Forwards: 0\r\n\r\n';

/** Send `head` behind ANSWERED_FIRST; the answer's status and reason, and the `code` of the new `msg` line. */
async function refusal(head: string, msg: string): Promise<{ status: number; reason: unknown; code: unknown }> {
  const s = served as Served;
  const logged = loggedLines(s, msg).length;
  const text = await new Promise<string>((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port: s.http.port });
    const guard = setTimeout(() => {
      c.destroy();
      reject(new Error('no answer within 5 s'));
    }, 5_000);
    let got = '';
    let isSent = false;
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
    c.write(ANSWERED_FIRST);
  });
  await until(`the "${msg}" line`, () => loggedLines(s, msg).length > logged);
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  return {
    status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0),
    reason: (JSON.parse(body) as { reason?: unknown }).reason,
    code: loggedLines(s, msg).at(-1)?.['code'],
  };
}

const upgrade = (target: string, extra: string): string => `GET ${target} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n${extra}\r\n`;

describe('a refusal log line carries the code of its answer', () => {
  it.each([
    ['bad proxy request refused', 'a relative target', 'GET /rel HTTP/1.1\r\nHost: a\r\n\r\n', 'EGW_BAD_REQUEST'],
    ['bad proxy request refused', 'an unmet Expect', 'GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n', 'EGW_EXPECTATION_FAILED'],
    ['bad upgrade request refused', 'an unmet Expect', upgrade('http://127.0.0.1:9/', 'Expect: foo\r\n'), 'EGW_EXPECTATION_FAILED'],
    ['bad upgrade request refused', 'a body', upgrade('http://127.0.0.1:9/', 'Content-Length: 2\r\n'), 'EGW_BAD_REQUEST'],
    ['bad CONNECT request refused', 'an HTTP/2.0 line', 'CONNECT 127.0.0.1:9 HTTP/2.0\r\nHost: a\r\n\r\n', 'EGW_HTTP_VERSION'],
    ['bad CONNECT request refused', 'Host twice', 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 'EGW_BAD_REQUEST'],
    ['bad CONNECT target refused', 'no port', 'CONNECT 127.0.0.1 HTTP/1.1\r\nHost: a\r\n\r\n', 'EGW_BAD_REQUEST'],
  ] as const)('%s (%s)', async (msg, _name, head, code) => {
    const mapping = mapError(code);
    expect(await refusal(head, msg)).toEqual({ status: mapping.status, reason: mapping.reason, code });
  });
});
