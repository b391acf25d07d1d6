/**
 * `egressgate agent` with a token that has whitespace inside it (from `--token`,
 * `EGRESSGATE_AGENT_TOKEN` or `--token-file`), run as an operator runs it (dist/cli.js) against a
 * real gateway whose identity.agents holds the token without it.
 *
 * Regression: such a token was taken. The admin API reads `Bearer[ \t]+(\S+)[ \t]*`, so every report
 * was refused: `--once` exited 1 with `gatewayStatus: 401` (a loop retried for ever), and a newline
 * inside made every POST fail with `Headers.append: "Bearer agent…\n…" is an invalid header value`,
 * printing the token on stdout. Now a usage error (exit 2) naming where the token came from, never
 * the token. Whitespace at its ends (a trailing newline from a secret file) is dropped on the way and
 * authenticates: it stays taken (the control).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_TOKEN, testAgent } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { CLI, ROOT } from '../helpers/serve-process.ts';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function agent(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'agent', ...args], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_AGENT_TOKEN: '', ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

let gw: TestGateway;
let dir: string;
beforeAll(async () => {
  gw = await startTestGateway({ identity: { agents: [testAgent] } });
  dir = await mkdtemp(join(tmpdir(), 'egw-agent-token-ws-'));
});
afterAll(async () => {
  await gw?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const half = AGENT_TOKEN.slice(0, 12);
const rest = AGENT_TOKEN.slice(12);

describe('an agent token with whitespace inside it', () => {
  it('is a usage error (exit 2) naming its source, never printing it, nothing posted: --token, EGRESSGATE_AGENT_TOKEN, --token-file', async () => {
    const base = ['--once', '--gateway', gw.adminUrl, '--host', 'ws', '--gateway-ports', '9'];
    const file = join(dir, 'token');
    await writeFile(file, `${half} ${rest}\n`);
    const runs: Array<[string, Promise<Run>]> = [
      ['--token', agent([...base, '--token', `${half} ${rest}`])],
      ['--token', agent([...base, '--token', `${half}\n${rest}`])],
      ['EGRESSGATE_AGENT_TOKEN', agent(base, { EGRESSGATE_AGENT_TOKEN: `${half}\t${rest}\n` })],
      ['--token-file', agent([...base, '--token-file', file])],
    ];
    for (const [from, pending] of runs) {
      const r = await pending;
      expect(r.code, from).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`^egressgate agent: ${from}: the token has whitespace inside it: a Bearer token is sent without any`, 'm'));
      expect(r.stdout).toBe('');
      expect(`${r.stdout}${r.stderr}`).not.toContain(half);
      expect(`${r.stdout}${r.stderr}`).not.toContain(rest);
    }
  }, 60_000);

  it('control: whitespace only at its ends is dropped on the way, and the gateway takes the token', async () => {
    const base = ['--once', '--gateway', gw.adminUrl, '--host', 'ws', '--gateway-ports', '9'];
    const runs = await Promise.all([agent([...base, '--token', ` ${AGENT_TOKEN}\n`]), agent(base, { EGRESSGATE_AGENT_TOKEN: `${AGENT_TOKEN}\n` })]);
    for (const r of runs) {
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout.trim())).toMatchObject({ event: 'agent-pass', delivered: true, gatewayStatus: 200 });
    }
  }, 60_000);
});
