/**
 * `egressgate replay` over the flow log as a user has it: `serve`'s stdout captured to a file (the
 * flow log's default path "-", `serve > flows.jsonl`, a pod's log in Kubernetes), whose first line is
 * the `listening` line, and a file log rotated by deploy/systemd/egressgate.logrotate (`dateext`:
 * `flows.jsonl-20261206`). Real `serve` process (its stdout redirected to a file, as a shell does),
 * a real origin and an absolute-URI request through the HTTP listener, the real CLI. Before, replay
 * refused both: exit 2, `…:1: not a flow record (startedAt, destination.host, destination.port)` for
 * the captured stdout and `…: not YAML: Unexpected flow-map-start …` for the rotated name.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, killIfRunning, loopbackServeConfig, ROOT } from '../helpers/serve-process.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-replay-captured-'));
let origin: Server;
let originPort = 0;
/** What `serve`'s stdout held once it had drained and exited: the listening line, then the records. */
let captured = '';

function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function waitForLine(file: string, needle: string): Promise<string> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const line = readFileSync(file, 'utf8')
      .split('\n')
      .find((l) => l.includes(needle));
    if (line) return line;
    if (Date.now() > deadline) throw new Error(`no ${needle} line in ${file}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  origin = createServer((_req, res) => res.end('hello'));
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;

  const config = join(dir, 'current.yaml');
  writeFileSync(config, loopbackServeConfig('-'));
  // stdout to a file, as `egressgate serve > serve.out` does.
  const outPath = join(dir, 'serve.out');
  const out = openSync(outPath, 'w');
  const child = spawn(process.execPath, [CLI, 'serve', '--config', config, '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0'], {
    cwd: ROOT,
    env: { ...process.env, EGRESSGATE_CONFIG: '' },
    stdio: ['ignore', out, 'ignore'],
  });
  closeSync(out);
  try {
    const listening = JSON.parse(await waitForLine(outPath, '"listening"')) as { http: string };
    const i = listening.http.lastIndexOf(':');
    const socket = connect({ host: listening.http.slice(0, i), port: Number(listening.http.slice(i + 1)) });
    socket.on('error', () => {});
    socket.write(`GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nConnection: close\r\n\r\n`);
    let answer = '';
    socket.on('data', (b: Buffer) => {
      answer += b.toString('latin1');
    });
    await once(socket, 'close');
    expect(answer).toMatch(/^HTTP\/1\.1 200 [\s\S]*hello$/);
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
  } finally {
    await killIfRunning(child);
  }
  captured = readFileSync(outPath, 'utf8');
}, 60_000);

afterAll(async () => {
  origin?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('replay over a captured or rotated flow log', () => {
  it("serve's stdout: the listening line, then the request's record", () => {
    const lines = captured.trim().split('\n');
    expect(JSON.parse(lines[0] as string)).toMatchObject({ event: 'listening' });
    expect(lines.slice(1).map((l) => JSON.parse(l) as { protocol: string; verdict: string; destination: { port: number } })).toEqual([
      expect.objectContaining({ protocol: 'http', verdict: 'allow', destination: expect.objectContaining({ port: originPort }) }),
    ]);
  });

  // An enforce policy that allows nothing: the recorded allow turns into a block.
  const NEW = 'mode: enforce\nallowRanges: [127.0.0.0/8]\nidentity: { localAttribution: false }\n';
  const turned = (): string => `-/- -> 127.0.0.1:${originPort} (http): allow (allowed) -> block (not-allowlisted)`;

  for (const name of ['serve.jsonl', 'flows.jsonl-20261206', 'serve.out']) {
    it(`--against lists the turned verdict from ${name}`, async () => {
      writeFileSync(join(dir, name), captured);
      writeFileSync(join(dir, 'new.yaml'), NEW);
      const r = await runCli(['replay', '--config', join(dir, 'new.yaml'), '--against', join(dir, 'current.yaml'), join(dir, name)]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('policy change turns 1 of 1 distinct connections');
      expect(r.stdout).toContain(turned());
    }, 60_000);
  }

  it('a YAML scenario without a .yaml name is still read as one (control)', async () => {
    writeFileSync(join(dir, 'scenario.txt'), 'name: x\n');
    const r = await runCli(['replay', '--config', join(dir, 'new.yaml'), join(dir, 'scenario.txt')]);
    expect(r.code).toBe(2);
    expect(r.stderr).not.toContain('not JSON');
    expect(r.stderr).not.toContain('not a flow record');
  }, 60_000);
});
