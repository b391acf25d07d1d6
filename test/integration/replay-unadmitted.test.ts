/**
 * Flows the gateway refuses before admission step 8 (the drain's `shutting-down`, a Via loop's
 * `via-loop`, the flow log failing, …) never meet the connect-time detectors live, whatever process
 * sent them, and `egressgate replay` over the flow log they were written to must not run those
 * detectors on them either. Real listeners (the HTTP proxy, a file flow log, an agent's report naming
 * each client's process `nmap`, a scanner tool), the real CLI (a child process of cli.ts, its
 * printed alerts): CONNECTs whose Via names the gateway (508 via-loop, verdict block as the gateway's own
 * refusal, never judged).
 * The same for CONNECTs to a name that does not resolve (`dns-failed`, refused at step 7's end).
 * Before, the replay judged each record as a connection that had reached step 8 and printed the
 * an0081.scanner-tool alert the gateway never raised (`an0081.scanner-tool high would-block … nmap`).
 * Control: the same CONNECTs without the loop meet an0081.scanner-tool (monitor mode: would-block,
 * relayed, their records replayed), live and replayed.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { Config } from '../../policy/config.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { reportProcesses, tcpOrigin, testAgent, waitForSweeps } from '../helpers/detection-live.ts';
import { type DeepPartial, startTestGateway, type TestGateway, testConfig } from '../helpers/gateway.ts';
import { CLI } from '../helpers/serve-process.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'egw-replay-unadmitted-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Monitor mode: the control's scanner is relayed (would-block), its record replayed. */
const OVERRIDES: DeepPartial<Config> = {
  mode: 'monitor',
  // By name: a record refused before its lookup names no address, which no CIDR entry could admit.
  roles: { any: { allow: [{ host: 'target.test' }, { host: 'gone.test' }] } },
  resolver: { hosts: { 'target.test': '127.0.0.1' } },
  identity: { agents: [testAgent] },
  detection: { sampleIntervalMs: 50 },
};

/** `egressgate replay --config config log`: its an0081.scanner-tool alert lines. */
function replayScannerAlerts(config: string, log: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, 'replay', '--config', config, log], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`replay failed: ${err.message}\n${stderr}`));
      else resolve(stdout.split('\n').filter((l) => l.includes(' an0081.scanner-tool ')));
    });
  });
}

/** CONNECT host:port from a client an agent named nmap (reported before the request), with `via` if given: the status. */
async function connectAsNmap(gw: TestGateway, host: string, port: number, via: string | null): Promise<number> {
  const socket = connect({ host: gw.httpHost, port: gw.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  await reportProcesses(gw.adminUrl, 'ws-scan', [
    { localIp: '127.0.0.1', localPort: socket.localPort ?? 0, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4343, name: 'nmap', exe: '/usr/bin/nmap' },
  ]);
  socket.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n${via === null ? '' : `Via: 1.1 ${via}\r\n`}\r\n`);
  const [head] = (await once(socket, 'data')) as [Buffer];
  socket.destroy();
  return Number(head.toString('latin1').split(' ')[1]);
}

/**
 * Three CONNECTs through a gateway writing `name`.jsonl, to target.test (its origin listening) or,
 * `gone`, to gone.test, which does not resolve: statuses, the live scanner-tool alerts, the records,
 * the replayed alerts.
 */
async function run(name: string, how: 'looped' | 'plain' | 'gone') {
  const log = join(dir, `${name}.jsonl`);
  const config = join(dir, `${name}.json`);
  writeFileSync(config, JSON.stringify({ ...testConfig(OVERRIDES), listen: undefined, flowLog: undefined }));
  // Every name outside resolver.hosts fails its lookup (no DNS leaves loopback).
  const resolver = { lookup: () => Promise.reject(new GatewayError('EGW_DNS_FAILED', 'no such name')) };
  const gw = await startTestGateway({ ...OVERRIDES, flowLog: { path: log } }, { resolver });
  const origin = await tcpOrigin('127.0.0.1');
  const statuses: number[] = [];
  let live: string[];
  try {
    for (let i = 0; i < 3; i++) {
      const before = gw.closed.length;
      statuses.push(await connectAsNmap(gw, how === 'gone' ? 'gone.test' : 'target.test', origin.port, how === 'looped' ? gw.ctx.via.pseudonym : null));
      await gw.waitForClosed(() => gw.closed.length > before);
    }
    await waitForSweeps(gw.flows, 3);
    live = gw.alerts.list({}).filter((a) => a.detector === 'an0081.scanner-tool').map((a) => a.action);
  } finally {
    await gw.stop();
    await origin.close();
  }
  const records = readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as { verdict: string; closeReason: string; identity: { process: { name: string } | null } });
  return { statuses, live, records, replayed: await replayScannerAlerts(config, log) };
}

describe('egressgate replay: flows refused before step 8 meet no connect-time detector', () => {
  it('CONNECTs of nmap refused 508 via-loop (verdict block): no an0081.scanner-tool live or replayed', async () => {
    const { statuses, live, records, replayed } = await run('via-loop', 'looped');
    expect(statuses).toEqual([508, 508, 508]);
    expect(live).toEqual([]);
    expect(records.map((r) => `${r.verdict} ${r.closeReason} ${r.identity.process?.name}`)).toEqual(['block via-loop nmap', 'block via-loop nmap', 'block via-loop nmap']);
    expect(replayed).toEqual([]);
  });

  it('CONNECTs of nmap to a name that does not resolve (502 dns-failed, refused at step 7): no an0081.scanner-tool live or replayed', async () => {
    const { statuses, live, records, replayed } = await run('dns-failed', 'gone');
    expect(statuses).toEqual([502, 502, 502]);
    expect(live).toEqual([]);
    expect(records.map((r) => `${r.verdict} ${r.closeReason} ${r.identity.process?.name}`)).toEqual(['allow dns-failed nmap', 'allow dns-failed nmap', 'allow dns-failed nmap']);
    expect(replayed).toEqual([]);
  });

  it('control: the same CONNECTs without the loop meet an0081.scanner-tool (would-block), live and replayed', async () => {
    const { statuses, live, replayed } = await run('control', 'plain');
    expect(statuses).toEqual([200, 200, 200]);
    expect(live[0]).toBe('would-block');
    expect(replayed.length).toBeGreaterThan(0);
    expect(replayed[0]).toContain(' would-block ');
  });
});
