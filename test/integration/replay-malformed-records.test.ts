/**
 * `egressgate replay` over a real flow log (the gateway's listeners, an echo origin, the log file
 * `serve` writes) with one line spoiled: a line that is no object or a field of the wrong type is
 * refused with the file, the line number and the field (exit 2), as a line that is not JSON is.
 *
 * Regression: a JSON `null` line ended the replay with `Cannot read properties of null (reading
 * 'intermediate')` and no line number; `"user": 5`, `"host": ["x"]`, `"process": {"name": 5}`,
 * `"client": {"ip": 7}` or `"destination": {"ip": 5}` with a TypeError's stack and exit 1; and
 * `"bytesOut": "12"` (replayed as 0 bytes), `"protocol": "gopher"`, a port of 1e9 were replayed
 * without a word (exit 0).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../gateway/commands/replay.ts';
import { type TcpOrigin, echoOrigin, echoRoundTrip, httpConnect } from '../helpers/detection-live.ts';
import { startTestGateway } from '../helpers/gateway.ts';
import { CLI, ROOT } from '../helpers/serve-process.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-replay-malformed-'));
const POLICY = join(dir, 'policy.yaml');
let origin: TcpOrigin;
/** The real log's lines: three closed CONNECT tunnels. */
let lines: string[] = [];

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
  const logPath = join(dir, 'flows.jsonl');
  const gw = await startTestGateway({ flowLog: { path: logPath } });
  try {
    for (const from of ['127.0.0.11', '127.0.0.12', '127.0.0.13']) {
      const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${origin.port}`, { localAddress: from });
      expect(a.status).toBe(200);
      await echoRoundTrip(a.socket, Buffer.from(`hello from ${from}`));
      a.socket.destroy();
      await gw.waitForClosed((r) => r.client.ip === from);
    }
  } finally {
    await gw.stop();
  }
  lines = readFileSync(logPath, 'utf8').trim().split('\n');
  expect(lines).toHaveLength(3);
  writeFileSync(POLICY, 'mode: monitor\nallowRanges: [127.0.0.0/8]\nroles: { any: { allow: [ { cidr: 0.0.0.0/0 } ] } }\ndefaultRoles: [any]\n');
}, 60_000);

afterAll(async () => {
  await origin?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** The real log with its third line replaced by `third` (a JSON text). */
function spoiled(name: string, third: string): string {
  const p = join(dir, name);
  writeFileSync(p, `${[lines[0], lines[1], third].join('\n')}\n`);
  return p;
}

/** The third record with `edit` applied to its parsed copy. */
function edited(edit: (r: Record<string, Record<string, unknown>>) => void): string {
  const r = JSON.parse(lines[2] as string) as Record<string, Record<string, unknown>>;
  edit(r);
  return JSON.stringify(r);
}

async function replay(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const io = { stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) } };
  const code = await run(['--config', POLICY, file], io);
  return { code, stdout, stderr };
}

const CASES: Array<[string, string, () => string]> = [
  ['null line', 'not a flow record (startedAt, destination.host, destination.port)', () => 'null'],
  ['user 5', 'not a flow record: identity.user: not a string or null', () => edited((r) => (r['identity']!['user'] = 5))],
  ['host array', 'not a flow record: identity.host: not a string or null', () => edited((r) => (r['identity']!['host'] = ['x']))],
  ['process name 5', 'not a flow record: identity.process.name: not a string', () => edited((r) => (r['identity']!['process'] = { pid: 1, name: 5 }))],
  ['process text', 'not a flow record: identity.process: not an object or null', () => edited((r) => (r['identity']!['process'] = 'curl' as never))],
  ['client ip 7', 'not a flow record: client.ip: not a string or null', () => edited((r) => (r['client']!['ip'] = 7))],
  ['destination ip 5', 'not a flow record: destination.ip: not a string or null', () => edited((r) => (r['destination']!['ip'] = 5))],
  ['port 1e9', 'not a flow record: destination.port: 1000000000 is not a port (0-65535)', () => edited((r) => (r['destination']!['port'] = 1e9))],
  ['bytesOut text', 'not a flow record: bytesOut: not a number ≥ 0', () => edited((r) => ((r as Record<string, unknown>)['bytesOut'] = '12'))],
  ['protocol gopher', 'not a flow record: protocol: "gopher" is not one of http, connect, socks5, socks5-udp', () => edited((r) => ((r as Record<string, unknown>)['protocol'] = 'gopher'))],
];

describe('egressgate replay: a spoiled line of a real flow log', () => {
  it('control: the log as the gateway wrote it replays (exit 0)', async () => {
    const r = await replay(spoiled('clean.jsonl', lines[2] as string));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  for (const [name, message, line] of CASES) {
    it(`${name}: exit 2, "file:3: ${message}"`, async () => {
      const file = spoiled(`${name.replace(/\W+/g, '-')}.jsonl`, line());
      const r = await replay(file).catch((e: unknown) => ({ code: -1, stdout: '', stderr: String(e) }));
      expect(r.stderr).toBe(`egressgate replay: ${file}:3: ${message}\n`);
      expect(r.code).toBe(2);
    });
  }

  it('as a user runs it: no stack trace, exit 2 (it was a TypeError and exit 1)', async () => {
    const file = spoiled('cli-user-5.jsonl', edited((r) => (r['identity']!['user'] = 5)));
    const r = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(process.execPath, [CLI, 'replay', '--config', POLICY, file], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, _stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr }),
      );
    });
    expect(r.stderr).toBe(`egressgate replay: ${file}:3: not a flow record: identity.user: not a string or null\n`);
    expect(r.code).toBe(2);
  }, 60_000);
});
