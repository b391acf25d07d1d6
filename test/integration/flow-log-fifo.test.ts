/**
 * `egressgate serve` as a process with its flow log on a FIFO (a log shipper's named pipe; also a
 * stand-in for a very slow disk), whose reader goes away or stops reading. Opened or written in
 * blocking mode, the open waited for a reader, and the write for room, in one of libuv's pool
 * threads, which nothing ends and node's exit joins:
 *  - no reader at start: `serve` hung before its listening line, saying nothing;
 *  - the reader gone: the retry's open hung, the SIGTERM drain waited for it for ever (still up 40 s
 *    after SIGTERM with a 10 s grace, and after a second SIGTERM);
 *  - the reader stopped: the drain ended within its grace, but the exit waited for the stuck write.
 * Now the open fails (ENXIO) and is retried like any failure, a full pipe is waited out outside the
 * pool (a stall after STALL_MS, as for a hung disk), and `serve` exits 0 after its drain.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { request } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { type Origin, startOrigin } from './http-harness.ts';

const GRACE_MS = 1000;
/** Far more than a drain of GRACE_MS (plus the 10 s stall limit) takes on a loaded machine; before the fix: never. */
const EXIT_BOUND_MS = 45_000;
/** A drain whose grace is GRACE_MS, with a wide margin for a loaded machine; before the fix ~10 s (the write's stall limit). */
const GRACE_BOUND_MS = GRACE_MS + 6000;

function hasMkfifo(): boolean {
  if (process.platform !== 'linux') return false;
  try {
    execFileSync('mkfifo', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const canRun = skipNotice(hasMkfifo(), 'flow log on a FIFO', 'needs Linux and mkfifo (coreutils)');

let dir: string;
let origin: Origin;
let served: Served | null = null;
const readers: ChildProcess[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-flow-log-fifo-'));
  origin = await startOrigin();
});
afterEach(async () => {
  // SIGKILL ends a reader the test stopped (SIGSTOP) as well.
  for (const r of readers.splice(0)) await killIfRunning(r);
  await killIfRunning(served?.child ?? null);
  served = null;
});
afterAll(async () => {
  await origin.close();
  await rm(dir, { recursive: true, force: true });
});

/** A reader of the FIFO (`cat`), and what it has read so far. */
function startReader(fifo: string): { child: ChildProcess; text: () => string } {
  const child = spawn('cat', [fifo], { stdio: ['ignore', 'pipe', 'ignore'] });
  readers.push(child);
  let text = '';
  child.stdout?.on('data', (b: Buffer) => {
    text += b.toString('utf8');
  });
  return { child, text: () => text };
}

async function fifoConfig(name: string): Promise<{ fifo: string; config: string }> {
  const fifo = join(dir, `${name}.jsonl`);
  execFileSync('mkfifo', [fifo]);
  const config = join(dir, `${name}.yaml`);
  await writeFile(
    config,
    `mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(fifo)} }
limits: { drainGraceMs: ${GRACE_MS}, maxNewFlowsPerSecPerIdentity: 100000 }
`,
  );
  return { fifo, config };
}

/** One absolute-URI GET through the gateway on a new connection: its status. */
function get(s: Served, path = '/size/10'): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: s.http.host, port: s.http.port, path: `http://127.0.0.1:${origin.port}${path}`, agent: false, headers: { connection: 'close' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.setTimeout(10_000, () => req.destroy(new Error('no answer in 10 s')));
    req.on('error', reject);
    req.end();
  });
}

async function readyz(s: Served): Promise<number> {
  const res = await fetch(`http://${s.admin}/readyz`);
  await res.arrayBuffer();
  return res.status;
}

/** SIGTERM, and the exit code once it has exited (null if it had not within EXIT_BOUND_MS). */
async function terminate(s: Served): Promise<number | null> {
  const exited = once(s.child, 'exit').then(([code]) => code as number | null);
  s.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), EXIT_BOUND_MS);
  });
  const outcome = await Promise.race([exited, late]);
  clearTimeout(timer);
  return outcome === 'late' ? null : outcome;
}

describe.runIf(canRun)('egressgate serve: a flow log on a FIFO never holds up start, drain or exit', () => {
  it('no reader at start: serve exits 1 naming the path (ENXIO) instead of hanging before its listening line', async () => {
    const { fifo, config } = await fifoConfig('no-reader');
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('still starting'), EXIT_BOUND_MS);
    });
    const started = spawnServe(config).then(
      (s) => {
        served = s;
        return 'listening';
      },
      (err: Error) => err.message,
    );
    const outcome = await Promise.race([started, late]);
    clearTimeout(timer);
    expect(outcome).toMatch(/serve exited \(1\) before listening/);
    expect(outcome).toContain('ENXIO');
    expect(outcome).toContain(fifo);
  }, 60_000);

  it('the reader gone: new flows refused, every record once its next reader comes; gone again, SIGTERM exits 0 after the grace', async () => {
    const { fifo, config } = await fifoConfig('gone');
    const first = startReader(fifo);
    const s = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: 'flow-log-fifo-token-0123456789' } });
    served = s;
    for (let i = 0; i < 3; i++) expect(await get(s)).toBe(200);
    await until('3 records read', () => parseRecords(first.text()).length === 3);
    await killIfRunning(first.child);

    // The next record's write fails (EPIPE): the gateway refuses until a reader is back.
    let answered = 3;
    let refused = 0;
    for (let i = 0; i < 50 && refused === 0; i++) {
      if ((await get(s)) === 503) refused++;
      answered++;
    }
    expect(refused).toBe(1);
    expect(await readyz(s)).toBe(503);
    const second = startReader(fifo);
    await until('ready again', async () => (await readyz(s)) === 200, 15_000);
    expect(await get(s)).toBe(200);
    answered++;
    const text = (): string => first.text() + second.text();
    await until('every record read', () => parseRecords(text()).length === answered);
    const records = parseRecords(text());
    expect(new Set(records.map((r) => r.id)).size).toBe(answered);
    expect(records.filter((r) => r.closeReason === 'flow-log-unavailable')).toHaveLength(1);

    // Gone again, with a record held: the drain waits its grace for a reader, then the process ends.
    await killIfRunning(second.child);
    await get(s).catch(() => 0);
    await until('failing again', async () => (await readyz(s)) === 503, 15_000);
    expect(await terminate(s)).toBe(0);
    expect(s.stderr()).toMatch(/flow log still failing at shutdown/);
  }, 120_000);

  it('the reader stopped with the pipe full: SIGTERM exits 0 (the write it waits on is not a pool thread the exit joins)', async () => {
    const { config, fifo } = await fifoConfig('stopped');
    const reader = startReader(fifo);
    const s = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: 'flow-log-fifo-token-0123456789' } });
    served = s;
    expect(await get(s)).toBe(200);
    await until('the first record read', () => parseRecords(reader.text()).length === 1);
    reader.child.kill('SIGSTOP');
    // ~600-byte records: 400 of them are several times a pipe's 64 KiB.
    for (let i = 0; i < 400; i++) await get(s);
    expect(await terminate(s)).toBe(0);
  }, 120_000);

  it('the reader stopped: the drain waits for the stuck write only until its grace ends, then exits 0 saying how many records were lost', async () => {
    const { config, fifo } = await fifoConfig('stopped-grace');
    const reader = startReader(fifo);
    const s = await spawnServe(config, { env: { EGRESSGATE_ADMIN_TOKEN: 'flow-log-fifo-token-0123456789' } });
    served = s;
    expect(await get(s)).toBe(200);
    await until('the first record read', () => parseRecords(reader.text()).length === 1);
    reader.child.kill('SIGSTOP');
    // ~600-byte records: 150 of them are more than a pipe's 64 KiB, so the write waits for room from
    // shortly before SIGTERM (its stall limit, 10 s, then still far off).
    for (let i = 0; i < 150; i++) await get(s);
    const sentAt = Date.now();
    expect(await terminate(s)).toBe(0);
    const tookMs = Date.now() - sentAt;
    // Before the fix the drain waited for the write's stall limit: ~10 s after SIGTERM.
    expect(tookMs).toBeLessThan(GRACE_BOUND_MS);
    expect(s.stderr()).not.toMatch(/has not completed in 10000 ms/);
    const lost = s.stderr().split('\n').find((l) => l.includes('still failing at shutdown'));
    expect(lost).toBeDefined();
    expect((JSON.parse(lost as string) as { records: number }).records).toBeGreaterThan(0);
  }, 120_000);
});
