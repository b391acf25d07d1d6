/**
 * `state.path` (SPEC §3: baselines, first-seen destinations and hourly volumes, survive restarts)
 * through the real gateway: what one run persists the next restores, and a file the gateway cannot
 * restore from is kept aside, with a warning naming both paths, before it starts fresh.
 *
 * Regression: a file that parsed as JSON but held no version-1 baselines (a newer build's version 2,
 * `null`, an array) was dropped without a word, and any unreadable file (cut short, not JSON) was
 * replaced at the next persist: a gateway started on a version-2 file logged nothing, and at its stop
 * the file held its own fresh state, the 1 first-seen destination and the learning start gone.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type TcpOrigin, echoOrigin, echoRoundTrip, httpConnect } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

interface Baselines {
  version: number;
  learningStartedAtMs: number;
  firstSeen: Array<[string, number]>;
}

let good: TcpOrigin;
let dir: string;
let gw: TestGateway | null = null;

beforeAll(async () => {
  good = await echoOrigin('127.0.0.1');
  dir = mkdtempSync(join(tmpdir(), 'egw-state-'));
});
afterAll(async () => {
  await good?.close();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});

/** One run of the gateway on `path` (`afterStart` run once it is up): a tunnel to the echo origin, then a stop (which persists). */
async function runOnce(path: string, afterStart?: () => void): Promise<TestGateway['logs']> {
  gw = await startTestGateway({ state: { path } });
  afterStart?.();
  const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${good.port}`);
  expect(a.status).toBe(200);
  await echoRoundTrip(a.socket, Buffer.from('hello'));
  a.socket.destroy();
  await gw.waitForClosed();
  const { logs } = gw;
  await gw.stop();
  gw = null;
  return logs;
}

const read = (path: string): Baselines => JSON.parse(readFileSync(path, 'utf8')) as Baselines;

describe('state.path across restarts', () => {
  it('a second run restores what the first persisted: first-seen and the learning start', async () => {
    const path = join(dir, 'roundtrip.json');
    expect(await runOnce(path)).toEqual([]);
    const first = read(path);
    expect(first.version).toBe(1);
    expect(first.firstSeen.map(([h]) => h)).toEqual(['127.0.0.1']);
    expect(await runOnce(path)).toEqual([]);
    const second = read(path);
    expect(second.learningStartedAtMs).toBe(first.learningStartedAtMs);
    expect(second.firstSeen).toEqual(first.firstSeen);
  });

  const unreadable: Array<[string, string, RegExp]> = [
    ['a newer version', JSON.stringify({ version: 2, learningStartedAtMs: 1, firstSeen: [['kept.example', 1]], hourlyOut: [] }), /version 2/],
    ['JSON null', 'null', /not a JSON object/],
    ['cut short', '{"version":1,"learningStartedAtMs":1,"firstSeen":[["kept.exa', /SyntaxError/],
  ];
  it.each(unreadable)('%s: kept aside with a warning, then a fresh state', async (name, text, why) => {
    const path = join(dir, `${name.replace(/ /g, '-')}.json`);
    writeFileSync(path, text);
    const logs = await runOnce(path);
    const warned = logs.filter((l) => l.path === path);
    expect(warned).toHaveLength(1);
    expect(warned[0]?.level).toBe('warn');
    expect(String(warned[0]?.err)).toMatch(why);
    const movedTo = String(warned[0]?.movedTo);
    expect(movedTo.startsWith(`${path}.unreadable-`)).toBe(true);
    expect(readFileSync(movedTo, 'utf8')).toBe(text);
    expect(readdirSync(dir).filter((f) => f.startsWith(`${name.replace(/ /g, '-')}.json.unreadable-`))).toHaveLength(1);
    const fresh = read(path);
    expect(fresh.version).toBe(1);
    expect(fresh.learningStartedAtMs).toBeGreaterThan(1);
    expect(fresh.firstSeen.map(([h]) => h)).toEqual(['127.0.0.1']);
  });

  it('a save that cannot be put in place (state.path made a directory after the start) warns and leaves no temp file beside it', async () => {
    const path = join(dir, 'a-directory');
    // A directory at the start is a start error (config-flow-log-directory.test.ts): made one after it.
    const logs = await runOnce(path, () => mkdirSync(path));
    expect(logs.some((l) => l.path === path && l.msg === 'could not persist detection state')).toBe(true);
    // Before, each failed save left `${path}.${pid}.tmp` in the parent directory.
    expect(readdirSync(dir).filter((f) => f.startsWith('a-directory.') && f.endsWith('.tmp'))).toEqual([]);
  });
});
