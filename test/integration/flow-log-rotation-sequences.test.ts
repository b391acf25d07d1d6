/**
 * Log rotation sequences under a steady stream of flows, each counted: every flow made has exactly
 * one record, in one of the files the sequence leaves. Through a real `serve` process and real
 * signals, curl making flows through the proxy all along.
 *
 * Regression (rm then a signal): a flow log file removed (`rm`, a logrotate that misbehaves) and a
 * reopen signal (SIGUSR2, SIGHUP) before the once-a-second removal check saw it: the reopen moved to a
 * new file at the path and closed the removed one without reading back what had gone to it since it
 * was last seen named (up to a second of flows: the fixed code reads back 1-439 records a run here),
 * nor what went to it after the rm (0-15). The reopen now reads them back as the check does.
 * Regression (rm then SIGTERM): the drain closed a removed file the same way; its close reads back too.
 * Audited the same way, and whole before and after: mv then SIGUSR2 (once, twice), the shipped
 * logrotate file, mv + SIGUSR2 + SIGTERM at once, SIGUSR2s on a full disk (a tmpfs, root only).
 */
import { once } from 'node:events';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { sleep } from '../helpers/flow-log-cases.ts';
import { flowLogFixture, writeFlowLogServeConfig } from '../helpers/flow-log-fixture.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { ROOT, type Served } from '../helpers/serve-process.ts';
import { run } from './http-harness.ts';

// The 2 MiB tmpfs is for the disk-full case alone (root only); it goes whether its tests ran or not.
const fx = flowLogFixture('egw-flowlog-rotate-', { tmpfs: { size: '2m', what: 'flow-log-rotation-sequences: signals on a full disk (a 2 MiB tmpfs)' } });
const { top, mnt } = fx;

/** GETs of /size/N for each N, one curl, through the proxy: the sizes answered 200. */
async function getSizes(s: Served, sizes: number[]): Promise<number[]> {
  const codes = await fx.curlSizes(s, sizes);
  return sizes.filter((_, i) => codes[i] === 200);
}

/** `rm` of the flow log: what it holds just before (the records the rm deletes). */
function removeLog(path: string, deleted: number[]): void {
  const text = readFileSync(path, 'utf8');
  rmSync(path);
  deleted.push(...parseRecords(text.slice(0, text.lastIndexOf('\n') + 1)).map((r) => r.bytesIn));
}

/** Every flow-log file under `dir` (a rotated one gzipped or not; not the audit log): its records' sizes. */
function recordsUnder(dir: string): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    if (!name.includes('flows.jsonl') || name.includes('audit')) continue;
    const raw = readFileSync(join(dir, name));
    const text = (name.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8');
    expect(text === '' || text.endsWith('\n'), `${name} ends on a whole record`).toBe(true);
    out[name] = parseRecords(text).map((r) => r.bytesIn);
  }
  return out;
}

interface Run {
  /** Sizes of the flows answered 200. */
  made: number[];
  /** Each file's records (sizes). */
  files: Record<string, number[]>;
  /** Records in a file the sequence removed, as it was just before (gone with it: the operator's doing). */
  deleted: number[];
}

/**
 * Serve with its flow log at `<case>/logs/flows.jsonl`, flows made without pause (10 per curl, three curls at a time); once
 * 1.5 s have passed and 100 are made, `act`; then ~60 more, SIGTERM (unless `act` sent it), and the records counted.
 * Bounded: 900 curls at most.
 */
async function rotationRun(
  name: string,
  act: (s: Served, path: string, deleted: number[]) => Promise<void>,
  opts: { dir?: string; isStopping?: boolean; isAdmitting?: boolean } = {},
): Promise<Run> {
  const dir = opts.dir ?? join(top, name);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'logs', 'flows.jsonl');
  const configPath = join(top, `${name}.yaml`);
  // Past the default 200 new flows a second: a steady stream, not one the rate limit cuts.
  writeFlowLogServeConfig(configPath, path, { isAdmitting: opts.isAdmitting === true, limits: { maxNewFlowsPerSecPerIdentity: 100000 } });
  const s = await fx.serve(configPath);
  const exited = once(s.child, 'exit');
  const made: number[] = [];
  const deleted: number[] = [];
  let isStreaming = true;
  // Three curls at a time, each its own sizes.
  const stream = Promise.all(
    [0, 1, 2].map(async (k) => {
      for (let n = 1000 + k * 10_000; n < 4000 + k * 10_000 && isStreaming; n += 10) made.push(...(await getSizes(s, Array.from({ length: 10 }, (_, i) => n + i))));
    }),
  );
  try {
    // Past the first removal checks (once a second): a steady state.
    const start = Date.now();
    for (let i = 0; i < 500 && (made.length < 100 || Date.now() - start < 1500); i++) await sleep(20);
    expect(made.length).toBeGreaterThanOrEqual(100);
    await act(s, path, deleted);
    const madeAtAct = made.length;
    if (!opts.isStopping) for (let i = 0; i < 500 && made.length < madeAtAct + 60; i++) await sleep(20);
  } finally {
    isStreaming = false;
    await stream;
  }
  if (!opts.isStopping) s.child.kill('SIGTERM');
  expect(((await exited) as [number | null])[0]).toBe(0);
  return { made, files: recordsUnder(dir), deleted };
}

/** Flows made with more than one record (a flow the rate limit refused, not made, has bytesIn 0). */
function twice(r: Run): number[] {
  const all = Object.values(r.files).flat();
  return r.made.filter((n) => all.indexOf(n) !== all.lastIndexOf(n));
}

/** Records of the removed file (as it was just before the rm) found again in a file: read back. */
function readBack(r: Run): number {
  const all = new Set(Object.values(r.files).flat());
  return r.deleted.filter((n) => all.has(n)).length;
}

/**
 * Every flow made has one record, and no record is there twice; of the records in a removed file, only
 * its start may be gone (what was in it when the removal check last saw it named): from the first one
 * found again on, every one is found.
 */
function expectEachOnce(r: Run): void {
  const all = new Set(Object.values(r.files).flat());
  const missing = r.made.filter((n) => !all.has(n) && !r.deleted.includes(n));
  const firstBack = r.deleted.findIndex((n) => all.has(n));
  const gapsAfterBack = firstBack < 0 ? [] : r.deleted.slice(firstBack).filter((n) => !all.has(n));
  expect({ missing: missing.length, twice: twice(r).length, gapsAfterBack: gapsAfterBack.length }).toEqual({ missing: 0, twice: 0, gapsAfterBack: 0 });
}

/**
 * An `rm` sequence: each flow once, and the records written to the removed file since the last check
 * read back. In a run the check may have seen the file named just before the rm (nothing to read
 * back then: about one in a hundred), and before the fix it sometimes found the removal itself while
 * the signal's switch waited for a write (about one in four): up to three runs, two of which must
 * read some back.
 */
async function expectReadBack(name: string, act: (s: Served, path: string, deleted: number[]) => Promise<void>, opts: { isStopping?: boolean } = {}): Promise<void> {
  let runsBack = 0;
  for (let i = 1; i <= 3 && runsBack < 2; i++) {
    const r = await rotationRun(`${name}-${i}`, act, opts);
    expectEachOnce(r);
    expect(Object.keys(r.files)).toEqual(['logs/flows.jsonl']);
    if (readBack(r) > 0) runsBack++;
  }
  expect(runsBack).toBe(2);
}

const logged = (s: Served, msg: string): boolean => s.stderr().includes(msg);
async function untilLogged(s: Served, msg: string): Promise<void> {
  for (let i = 0; i < 500 && !logged(s, msg); i++) await sleep(20);
  expect(logged(s, msg), msg).toBe(true);
}

/** The flow log on a new file at its path: by the signal, or by the removal check that came first. */
async function untilSwitched(s: Served): Promise<void> {
  const isSwitched = (): boolean => logged(s, '"flow log reopened"') || logged(s, '"flow log file was removed');
  for (let i = 0; i < 500 && !isSwitched(); i++) await sleep(20);
  expect(isSwitched(), 'flow log reopened').toBe(true);
}

describe('flow log rotation sequences under a steady stream of flows', () => {
  // SIGHUP reopens the logs through the same reopenLogs as SIGUSR2 (it reloads the config first).
  it('rm of the file, then SIGUSR2 at once: the records written to the removed file are read back', async () => {
    await expectReadBack('rm-SIGUSR2', async (s, path, deleted) => {
      removeLog(path, deleted);
      s.child.kill('SIGUSR2');
      await untilSwitched(s);
    });
  }, 90_000);

  it('mv, then SIGUSR2: records before the signal in the moved file, after it in the new one', async () => {
    const r = await rotationRun('mv', async (s, path) => {
      renameSync(path, `${path}.1`);
      s.child.kill('SIGUSR2');
      await untilLogged(s, '"flow log reopened"');
    });
    expectEachOnce(r);
    expect((r.files['logs/flows.jsonl.1'] ?? []).length).toBeGreaterThan(0);
  }, 60_000);

  it('rm, then two SIGUSR2 in a row', async () => {
    await expectReadBack('rm-twice', async (s, path, deleted) => {
      removeLog(path, deleted);
      s.child.kill('SIGUSR2');
      s.child.kill('SIGUSR2');
      await untilSwitched(s);
    });
  }, 90_000);

  it('the shipped logrotate file (logrotate -f, a state file), its postrotate signalling serve', async () => {
    const shipped = readFileSync(join(ROOT, 'deploy/systemd/egressgate.logrotate'), 'utf8');
    const dir = join(top, 'logrotate');
    const r = await rotationRun(
      'logrotate',
      async (s, path) => {
        // As shipped, but for the paths and the unit (`kill` instead of `systemctl kill`, as root or not).
        const conf = shipped.replaceAll('/var/log/egressgate/flows.jsonl', path).replace('systemctl kill -s USR2 egressgate.service', `kill -USR2 ${s.child.pid}`);
        expect(conf).not.toBe(shipped);
        writeFileSync(join(top, 'logrotate.conf'), conf);
        const out = await run('logrotate', ['-f', '-s', join(top, 'logrotate.state'), join(top, 'logrotate.conf')]);
        expect(out.code, out.stderr).toBe(0);
        await untilLogged(s, '"flow log reopened"');
      },
      { dir },
    );
    expectEachOnce(r);
    expect(Object.keys(r.files).length).toBe(2);
  }, 60_000);

  it('mv, SIGUSR2, then SIGTERM at once: the drain writes every record', async () => {
    const r = await rotationRun(
      'mv-term',
      async (s, path) => {
        renameSync(path, `${path}.1`);
        s.child.kill('SIGUSR2');
        s.child.kill('SIGTERM');
      },
      { isStopping: true },
    );
    expectEachOnce(r);
  }, 60_000);

  it('rm, then SIGTERM at once: the drain reads back what went to the removed file', async () => {
    await expectReadBack(
      'rm-term',
      async (s, path, deleted) => {
        removeLog(path, deleted);
        s.child.kill('SIGTERM');
      },
      { isStopping: true },
    );
  }, 90_000);
});

describe.skipIf(!fx.hasTmpfs)('flow log rotation signals while the disk is full', () => {
  it('signals while failing, then room and two signals at once: every flow one record', async () => {
    // ~64 KiB of room: ~90 records, then the disk is full.
    writeFileSync(join(mnt, 'filler'), Buffer.alloc(1984 * 1024));
    const r = await rotationRun(
      'full',
      async (s) => {
        await untilLogged(s, 'flow log write failed');
        s.child.kill('SIGUSR2');
        s.child.kill('SIGUSR2');
        await sleep(300);
        rmSync(join(mnt, 'filler'));
        s.child.kill('SIGUSR2');
        s.child.kill('SIGUSR2');
        await untilLogged(s, 'flow log writable again');
      },
      { dir: join(mnt, 'full'), isAdmitting: true },
    );
    expectEachOnce(r);
  }, 60_000);
});
