/**
 * Regression: an absolute-URI request whose origin took it and never answered got its 504 about
 * 500 ms past `limits.idleTimeoutMs`. The wait ran on undici's headersTimeout, on undici's fast
 * timers (a 499 ms tick; a timer fires at the first tick past its delay, and the tick restarts when
 * the timer is the only one): through a real `serve`, idleTimeoutMs 1,000 gave the 504 at
 * 1,502-1,558 ms (record durationMs 1,502-1,537; fast-path GETs and node:http POSTs, 8 of 8), 3,000
 * at 3,516-3,664, while CONNECT's idle timeout cut at 1,001-1,041. The wait is now on a timer of the
 * exchange's own, armed when the request is whole at the origin (OriginExchange.onRequestSent).
 *
 * Also pinned, on time before and after: an origin that sends a 1xx and then nothing (the final
 * response is due idleTimeoutMs after the first 1xx; the old code gave it undici's ~500 ms more), and
 * an origin that stalls mid-body (the client connection's own idle cut, `idle-timeout`).
 *
 * `serve` runs as a process of its own and the requests one at a time, so each wait's timer is the
 * only one undici would have had: the old code fired ~500 ms late every time, never within the bound.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { servedForFile } from '../helpers/flow-log-fixture.ts';
import { type ScriptedAnswer, type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody } from './http-harness.ts';

const IDLE_TIMEOUT_MS = 1000;
/**
 * How far past its due time a timed-out request's record may end. The old code's ended 500-537 ms
 * past it; the fixed one's 1-20 ms (CONNECT's idle cut: 1-41). 400 ms leaves a loaded machine most
 * of the gap and the old code none.
 */
const LATE_BOUND_MS = 400;
/** The 1xx origin sends its 103 this long after the request: the final response is then due at this + IDLE_TIMEOUT_MS. */
const INTERIM_AFTER_MS = 300;

const { served, recordOf } = servedForFile('egw-origin-answer-timeout-', { idleTimeoutMs: IDLE_TIMEOUT_MS });
const origins: ScriptedOrigin[] = [];
const sockets: Socket[] = [];

/** A loopback origin that answers a request for `/x` with `reply`, and never closes first. */
async function origin(reply: ScriptedAnswer): Promise<string> {
  const started = await scriptedOrigin({ '/x': reply });
  origins.push(started);
  return started.authority;
}

let silent: string;
let interimThenSilent: string;
let bodyStall: string;

beforeAll(async () => {
  silent = await origin(() => undefined);
  interimThenSilent = await origin((s) => {
    const t = setTimeout(() => s.write('HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n'), INTERIM_AFTER_MS);
    s.once('close', () => clearTimeout(t));
  });
  bodyStall = await origin('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789');
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all(origins.map((o) => o.close()));
});

/**
 * Whether `raw` holds a whole final (non-1xx) response with a Content-Length body: the gateway may keep
 * the connection open after it (keep-alive), so the exchange ends there, not at the close.
 */
function hasFinalAnswer(raw: string): boolean {
  let at = 0;
  for (;;) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end < 0) return false;
    const head = raw.slice(at, end);
    if (!/^HTTP\/1\.1 1\d\d /.test(head)) {
      const length = /\r\ncontent-length: *(\d+)/i.exec(head);
      return length !== null && raw.length >= end + 4 + Number(length[1]);
    }
    at = end + 4;
  }
}

/**
 * Send `request` on a new connection to the HTTP listener: everything read until a whole final answer
 * or the gateway's close, and the client's port.
 */
async function exchange(request: string): Promise<{ raw: string; clientPort: number }> {
  const s = connect({ host: served().http.host, port: served().http.port });
  s.on('error', () => undefined);
  sockets.push(s);
  await once(s, 'connect');
  const clientPort = s.localPort as number;
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve) => {
    s.once('close', () => resolve());
    s.on('data', (b: Buffer) => {
      chunks.push(b);
      if (hasFinalAnswer(Buffer.concat(chunks).toString('latin1'))) resolve();
    });
  });
  // Bounded: a gateway that never answers fails the assertions on what was read.
  const timer = setTimeout(() => s.destroy(), 10_000);
  s.write(request);
  await done;
  clearTimeout(timer);
  s.destroy();
  return { raw: Buffer.concat(chunks).toString('latin1'), clientPort };
}

function get(host: string): string {
  return `GET http://${host}/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
}

function post(host: string): string {
  return `POST http://${host}/x HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 2\r\n\r\nhi`;
}

describe('absolute-URI: limits.idleTimeoutMs on the origin’s answer, on the gateway’s own timer', () => {
  it('an origin that never answers: fast path (GET) and node:http (POST) get 504 connect-timeout within idleTimeoutMs + 400 ms', async () => {
    // One at a time: each wait's timer alone, as an idle gateway's would be.
    for (const [name, request] of [['fast-path GET', get(silent)], ['node:http POST', post(silent)]] as const) {
      const { raw, clientPort } = await exchange(request);
      expect(raw.slice(0, raw.indexOf('\r\n')), name).toBe('HTTP/1.1 504 Gateway Timeout');
      expect(jsonBody(raw).reason, name).toBe('connect-timeout');
      const rec = await recordOf(clientPort);
      expect(rec, name).toMatchObject({ closeReason: 'connect-timeout', connected: true, bytesIn: 0 });
      expect(rec.durationMs, name).toBeGreaterThanOrEqual(IDLE_TIMEOUT_MS);
      expect(rec.durationMs, `${name}: ${rec.durationMs} ms`).toBeLessThan(IDLE_TIMEOUT_MS + LATE_BOUND_MS);
    }
  }, 30_000);

  it('a 1xx then nothing: the 103 relayed, then 504 idleTimeoutMs after it (not after undici’s re-armed wait)', async () => {
    const { raw, clientPort } = await exchange(get(interimThenSilent));
    expect(raw).toMatch(/^HTTP\/1\.1 103 Early Hints\r\n[\s\S]*\r\n\r\nHTTP\/1\.1 504 Gateway Timeout\r\n/);
    const rec = await recordOf(clientPort);
    expect(rec).toMatchObject({ closeReason: 'connect-timeout', bytesIn: 0 });
    const dueMs = INTERIM_AFTER_MS + IDLE_TIMEOUT_MS;
    expect(rec.durationMs).toBeGreaterThanOrEqual(dueMs);
    expect(rec.durationMs, `${rec.durationMs} ms`).toBeLessThan(dueMs + LATE_BOUND_MS);
  }, 30_000);

  it('an origin that stalls mid-body: the client cut `idle-timeout` within idleTimeoutMs + 400 ms, the head and 10 bytes relayed', async () => {
    for (const [name, request] of [['fast-path GET', get(bodyStall)], ['node:http POST', post(bodyStall)]] as const) {
      const { raw, clientPort } = await exchange(request);
      expect(raw, name).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\n0123456789$/);
      const rec = await recordOf(clientPort);
      expect(rec, name).toMatchObject({ closeReason: 'idle-timeout', bytesIn: 10 });
      expect(rec.durationMs, name).toBeGreaterThanOrEqual(IDLE_TIMEOUT_MS);
      expect(rec.durationMs, `${name}: ${rec.durationMs} ms`).toBeLessThan(IDLE_TIMEOUT_MS + LATE_BOUND_MS);
    }
  }, 30_000);
});
