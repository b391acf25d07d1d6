/**
 * `egressgate serve` as a process, drained by SIGTERM (SPEC §2: stop accepting, let flows finish up
 * to the grace period, end the rest recorded `shutdown`, flush the flow log, exit 0), for
 * absolute-URI requests on both of the HTTP listener's paths: the raw-socket fast path (a plain GET)
 * and node:http (a POST).
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { killIfRunning, type Served, spawnServe, loopbackServeConfig } from '../helpers/serve-process.ts';
import { type Origin, pattern, rawConnect, run, startOrigin } from './http-harness.ts';

const PIECE = 16 * 1024;
const SLOW_BYTES = 1024 * 1024;
/** /short: a slow answer well within SHORT_GRACE_MS, paused after its first PIECE until `shortGate` opens. */
const SHORT_BYTES = 128 * 1024;
const GRACE_MS = 8000;
/** Shorter than node:http's keep-alive timeout (5 s), which would close an idle connection anyway. */
const SHORT_GRACE_MS = 4000;

let dir: string;
let origin: Origin;
/** Slow responses the origin has begun to write and not yet ended. */
let sending = 0;
let child: ChildProcess | null = null;
/** Responses to /late, held until the test answers them. */
const held: ServerResponse[] = [];
/**
 * /short answers write their first PIECE, then wait for this to resolve before the rest. Unpaused,
 * an answer took ~150 ms, and on a loaded machine it could end before the test saw both under way
 * together with the /late request (then `sending` was back to 0 and the wait timed out).
 */
let shortGate: Promise<void> = Promise.resolve();

/**
 * `total` pattern bytes (Infinity: until the client goes), one PIECE every 20 ms; with `gate`, the
 * pieces after the first wait for it.
 */
function dribble(res: ServerResponse, total: number, gate?: Promise<void>): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': Number.isFinite(total) ? total : 1 << 30 });
  const body = Number.isFinite(total) ? pattern(total) : pattern(PIECE);
  let sent = 0;
  let isStarted = false;
  let isClosed = false;
  let timer: ReturnType<typeof setInterval> | undefined;
  const tick = (): void => {
    if (!isStarted) {
      isStarted = true;
      sending++;
    }
    if (!Number.isFinite(total)) {
      res.write(body);
      return;
    }
    const end = Math.min(sent + PIECE, total);
    res.write(body.subarray(sent, end));
    sent = end;
    if (sent === total) {
      clearInterval(timer);
      res.end();
    }
  };
  if (gate) {
    setTimeout(() => {
      if (isClosed) return;
      tick();
      void gate.then(() => {
        if (!isClosed) timer = setInterval(tick, 20);
      });
    }, 20);
  } else timer = setInterval(tick, 20);
  res.once('close', () => {
    isClosed = true;
    clearInterval(timer);
    if (isStarted) sending--;
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-serve-drain-'));
  origin = await startOrigin((req, res) => {
    if (req.url === '/slow') dribble(res, SLOW_BYTES);
    else if (req.url === '/short') dribble(res, SHORT_BYTES, shortGate);
    else if (req.url === '/endless') dribble(res, Number.POSITIVE_INFINITY);
    else if (req.url === '/late') held.push(res);
    else return false;
    return true;
  });
});
afterEach(async () => {
  await killIfRunning(child);
  child = null;
});
afterAll(async () => {
  await origin.close();
  await rm(dir, { recursive: true, force: true });
});

/** Send each head on a connection of its own; each promise is everything read until that connection closed. */
async function sendEachOnItsConnection(port: number, heads: readonly string[]): Promise<Array<Promise<string>>> {
  const answers: Array<Promise<string>> = [];
  for (const head of heads) {
    const c = await rawConnect(port);
    c.on('error', () => undefined);
    const chunks: Buffer[] = [];
    c.on('data', (b: Buffer) => chunks.push(b));
    answers.push(once(c, 'close').then(() => Buffer.concat(chunks).toString('latin1')));
    c.write(head);
  }
  return answers;
}

async function serve(name: string, flowLog: string, graceMs = GRACE_MS): Promise<Served> {
  const configPath = join(dir, `${name}.yaml`);
  await writeFile(configPath, loopbackServeConfig(flowLog, graceMs));
  const s = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: 'serve-drain-token-0123456789' } });
  child = s.child;
  return s;
}

describe('egressgate serve: SIGTERM drains absolute-URI requests', () => {
  // Regression: the drain destroyed the undici agents at once, so every request in flight was cut
  // within milliseconds of SIGTERM (curl: "transfer closed with … bytes remaining") and recorded
  // `upstream-reset`, whatever the grace period.
  it('requests in flight finish byte-exact within the grace (fast path and node:http); one longer than the grace is cut as shutdown; exit 0', async () => {
    const flowLog = join(dir, 'drain.jsonl');
    const s = await serve('drain', flowLog);
    const proxy = `http://${s.http.host}:${s.http.port}`;
    const url = (path: string): string => `http://127.0.0.1:${origin.port}${path}`;
    // A plain GET (the fast path), a POST with a body (node:http), and one that never ends.
    const get = run('curl', ['-s', '-S', '-f', '-o', '-', '-x', proxy, url('/slow')], { timeoutMs: 30_000 });
    const post = run('curl', ['-s', '-S', '-f', '-o', '-', '-x', proxy, '--data-binary', '@-', url('/slow')], { input: Buffer.from('upload body'), timeoutMs: 30_000 });
    const endless = run('curl', ['-s', '-S', '-o', '/dev/null', '-x', proxy, url('/endless')], { timeoutMs: 30_000 });
    const deadline = Date.now() + 10_000;
    while (sending < 3) {
      if (Date.now() > deadline) throw new Error(`only ${sending} responses started`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    const [g, p, e] = await Promise.all([get, post, endless]);
    expect(g.code, g.stderr).toBe(0);
    expect(g.stdout.equals(pattern(SLOW_BYTES))).toBe(true);
    expect(p.code, p.stderr).toBe(0);
    expect(p.stdout.equals(pattern(SLOW_BYTES))).toBe(true);
    // Cut at the grace's end: curl 56 (connection reset) or 18 (closed before its Content-Length).
    expect([18, 56]).toContain(e.code);
    const [code] = (await exited) as [number | null];
    expect(code).toBe(0);
    const records = parseRecords(await readFile(flowLog, 'utf8'));
    const summary = records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn === SLOW_BYTES ? 'whole' : 'part']).sort();
    expect(summary).toEqual(
      [
        ['http', 'closed', 0, 'whole'],
        ['http', 'closed', 'upload body'.length, 'whole'],
        ['http', 'shutdown', 0, 'part'],
      ].sort(),
    );
  }, 60_000);

  // The same regression for requests still waiting on their origin at SIGTERM (before it: a 502
  // `upstream-reset` at once, "The client is destroyed"); their answers also end the connection.
  it('requests waiting on a silent origin at SIGTERM get its answer with connection: close, then the connection ends; exit 0', async () => {
    const flowLog = join(dir, 'drain-late.jsonl');
    const s = await serve('drain-late', flowLog);
    const target = `http://127.0.0.1:${origin.port}/late`;
    const host = `127.0.0.1:${origin.port}`;
    // A plain GET (the fast path) and a POST (node:http), each on a keep-alive connection.
    const heads = [`GET ${target} HTTP/1.1\r\nHost: ${host}\r\n\r\n`, `POST ${target} HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\n\r\nbody`];
    const answers = await sendEachOnItsConnection(s.http.port, heads);
    const deadline = Date.now() + 10_000;
    while (held.length < 2) {
      if (Date.now() > deadline) throw new Error(`only ${held.length} requests reached the origin`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    // Draining once /readyz says so; only then does the origin answer.
    while ((await fetch(`http://${s.admin}/readyz`)).status !== 503) {
      if (Date.now() > deadline) throw new Error('the gateway never started draining');
      await new Promise((r) => setTimeout(r, 10));
    }
    for (const res of held.splice(0)) {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 9 });
      res.end('late body');
    }
    for (const answer of await Promise.all(answers)) {
      expect(answer).toMatch(/^HTTP\/1\.1 200 /);
      expect(answer.toLowerCase()).toContain('\r\nconnection: close\r\n');
      expect(answer.endsWith('\r\n\r\nlate body')).toBe(true);
    }
    const [code] = (await exited) as [number | null];
    expect(code).toBe(0);
    const records = parseRecords(await readFile(flowLog, 'utf8'));
    expect(records.map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn]).sort()).toEqual([
      ['http', 'closed', 0, 9],
      ['http', 'closed', 4, 9],
    ]);
  }, 60_000);

  // Regression: node:http kept such a connection open (keep-alive, idle) until the grace ran out.
  it('a keep-alive connection whose answer was under way at SIGTERM is closed once answered, while the drain still waits on other flows', async () => {
    const flowLog = join(dir, 'drain-keepalive.jsonl');
    const s = await serve('drain-keepalive', flowLog, SHORT_GRACE_MS);
    let openShortGate = (): void => undefined;
    shortGate = new Promise<void>((r) => {
      openShortGate = r;
    });
    const target = `http://127.0.0.1:${origin.port}/short`;
    const host = `127.0.0.1:${origin.port}`;
    // A plain GET (the fast path) and a POST (node:http), each on a keep-alive connection, and a
    // request whose origin answers only once those connections are closed: the drain waits for it.
    const heads = [`GET ${target} HTTP/1.1\r\nHost: ${host}\r\n\r\n`, `POST ${target} HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\n\r\nbody`];
    const answers = await sendEachOnItsConnection(s.http.port, heads);
    const late = run('curl', ['-s', '-S', '-f', '-o', '-', '-x', `http://${s.http.host}:${s.http.port}`, `http://127.0.0.1:${origin.port}/late`], { timeoutMs: 30_000 });
    const deadline = Date.now() + 10_000;
    while (sending < 2 || held.length < 1) {
      if (Date.now() > deadline) throw new Error(`only ${sending} responses started, ${held.length} held`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const exited = once(s.child, 'exit');
    s.child.kill('SIGTERM');
    // Draining once /readyz says so; only then do the answers under way go on.
    const drainDeadline = Date.now() + 10_000;
    while ((await fetch(`http://${s.admin}/readyz`)).status !== 503) {
      if (Date.now() > drainDeadline) throw new Error('the gateway never started draining');
      await new Promise((r) => setTimeout(r, 10));
    }
    openShortGate();
    for (const text of await Promise.all(answers)) {
      expect(text).toMatch(/^HTTP\/1\.1 200 /);
      expect(Buffer.from(text.slice(text.indexOf('\r\n\r\n') + 4), 'latin1').equals(pattern(SHORT_BYTES))).toBe(true);
    }
    // Both connections were closed by the gateway while it still drained: the held request is
    // answered now and still reaches its client (had they stayed open until the grace ran out, or
    // until node's keep-alive timeout, later still, it would have been cut with them).
    for (const res of held.splice(0)) {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 9 });
      res.end('late body');
    }
    const l = await late;
    expect(l.code, l.stderr).toBe(0);
    expect(l.stdout.toString()).toBe('late body');
    const [code] = (await exited) as [number | null];
    expect(code).toBe(0);
  }, 60_000);
});
