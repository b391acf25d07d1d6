/**
 * `egressgate replay` (SPEC §2) over a flow log must count as failed attempts exactly what the
 * gateway's detection engine counted when it wrote that log. The logs come from the real listeners
 * (a file flow log), the replay from the real CLI (a child process of cli.ts, its printed alerts):
 *  - long polls the client abandoned before the origin answered (connected, 0 bytes in,
 *    `client-reset`): no failed attempts, no an0081.scan, live or replayed;
 *  - monitor mode's would-block CONNECTs to closed ports of a name the allowlist refuses: no
 *    an0081.scan live (enforce mode would have refused them before any dial), none replayed;
 *  - control: CONNECTs to closed ports of an allowed name are a scan, live and replayed.
 * One host's ports, past an0081.scan's failedPortsOnOneHost (15).
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { refusingPorts, type TcpOrigin, tcpOrigin } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, testConfig, until } from '../helpers/gateway.ts';
import { CLI } from '../helpers/serve-process.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ATTEMPTS = 18;
const dir = mkdtempSync(join(tmpdir(), 'egw-replay-failed-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** `allowed.test` (and, with `loopback`, any 127.0.0.0/8 address) allowed; `refused.test` not. */
const OVERRIDES = (mode: Mode, loopback: boolean) =>
  ({
    mode,
    roles: { any: { allow: loopback ? [{ host: 'allowed.test' }, { cidr: '127.0.0.0/8' }] : [{ host: 'allowed.test' }] } },
    resolver: { hosts: { 'allowed.test': '127.0.0.1', 'refused.test': '127.0.0.1' } },
  }) as const;

/** A gateway whose flow log is the file `name`.jsonl, and the replay's policy file beside it. */
async function start(name: string, mode: Mode, loopback = false): Promise<{ gw: TestGateway; log: string; config: string }> {
  const log = join(dir, `${name}.jsonl`);
  const config = join(dir, `${name}.json`);
  writeFileSync(config, JSON.stringify({ ...testConfig(OVERRIDES(mode, loopback)), listen: undefined, flowLog: undefined }));
  const gw = await startTestGateway({ ...OVERRIDES(mode, loopback), flowLog: { path: log } });
  return { gw, log, config };
}

/** `egressgate replay [flags] --config config input` as a user runs it: the an0081.scan alert lines. */
function replayScanAlerts(config: string, log: string, ...flags: string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, 'replay', ...flags, '--config', config, log], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`replay failed: ${err.message}\n${stderr}`));
      else resolve(stdout.split('\n').filter((l) => l.includes(' an0081.scan ')));
    });
  });
}

/** A CONNECT to host:port through the gateway: its status and JSON reason. */
async function connectStatus(g: TestGateway, host: string, port: number): Promise<string> {
  const socket = connect({ host: g.httpHost, port: g.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`);
  let raw = '';
  socket.on('data', (d: Buffer) => {
    raw += d.toString('latin1');
  });
  await once(socket, 'close');
  return `${raw.split(' ')[1]} ${/"reason":"([^"]+)"/.exec(raw)?.[1] ?? ''}`;
}

/** The gateway's own an0081.scan alerts after a few sweeps, then stop it (the flow log is complete). */
async function liveScanAlerts(g: TestGateway): Promise<string[]> {
  for (let i = 0; i < 5; i++) await once(g.flows, 'sweep');
  const scan = g.alerts.list({}).filter((a) => a.detector === 'an0081.scan').map((a) => a.action);
  await g.stop();
  return scan;
}

/** The final records of a flow log file. */
function records(log: string): Array<Record<string, unknown>> {
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((r) => r['intermediate'] !== true);
}

describe('egressgate replay counts the failed attempts the engine counted', () => {
  it(`${ATTEMPTS} long polls the client abandoned (client-reset, 0 bytes in): no an0081.scan live or replayed`, async () => {
    const { gw, log, config } = await start('abandoned', 'enforce', true);
    const origins: TcpOrigin[] = [];
    try {
      for (let i = 0; i < ATTEMPTS; i++) origins.push(await tcpOrigin('127.0.0.1'));
      for (const o of origins) {
        const s = connect({ host: gw.httpHost, port: gw.httpPort });
        s.on('error', () => {});
        await once(s, 'connect');
        s.write(`GET http://127.0.0.1:${o.port}/poll HTTP/1.1\r\nHost: 127.0.0.1:${o.port}\r\n\r\n`);
        await until('the origin has the request', () => o.conns.length > 0);
        // A reset: the client left at once (a FIN alone is a half-close, seen as leaving only
        // finGraceMs later: docs/spec-notes.md).
        s.resetAndDestroy();
        await gw.waitForClosed((r) => r.destination.port === o.port);
      }
      expect(await liveScanAlerts(gw)).toEqual([]);
    } finally {
      for (const o of origins) await o.close();
    }
    const recs = records(log);
    expect(recs.map((r) => `${r['verdict']} ${r['closeReason']} ${r['bytesIn']}`)).toEqual(origins.map(() => 'allow client-reset 0'));
    expect(await replayScanAlerts(config, log)).toEqual([]);
  });

  it(`monitor: ${ATTEMPTS} would-block CONNECTs to closed ports of a refused name: no an0081.scan live or replayed`, async () => {
    const { gw, log, config } = await start('monitor-refused', 'monitor');
    const answers: string[] = [];
    for (const port of await refusingPorts('127.0.0.1', ATTEMPTS)) answers.push(await connectStatus(gw, 'refused.test', port));
    expect(new Set(answers)).toEqual(new Set(['502 connection-refused']));
    expect(await liveScanAlerts(gw)).toEqual([]);
    expect(new Set(records(log).map((r) => `${r['verdict']} ${r['reason']} ${r['closeReason']}`))).toEqual(new Set(['would-block not-allowlisted connection-refused']));
    expect(await replayScanAlerts(config, log)).toEqual([]);
  });

  it(`control: ${ATTEMPTS} CONNECTs to closed ports of an allowed name are a scan, live and replayed`, async () => {
    const { gw, log, config } = await start('allowed-refused', 'enforce');
    const answers: string[] = [];
    for (const port of await refusingPorts('127.0.0.1', ATTEMPTS)) answers.push(await connectStatus(gw, 'allowed.test', port));
    expect(answers.slice(0, 15)).toEqual(answers.slice(0, 15).map(() => '502 connection-refused'));
    expect(await liveScanAlerts(gw)).toEqual(['block']);
    const replayed = await replayScanAlerts(config, log);
    expect(replayed.length).toBe(1);
    expect(replayed[0]).toContain(' an0081.scan ');
    expect(replayed[0]).toContain(' block ');
  });

  it('monitor: a scanner tool the gateway would have refused is not also a scan (replayed scenario)', async () => {
    // In the gateway, monitor mode records the tool's first flow would-block (an0081.scanner-tool)
    // and its next ones would-block quarantine: their failed dials are no failed attempts, as enforce
    // mode refuses them all before any dial.
    const policy = join(dir, 'scanner-policy.yaml');
    writeFileSync(policy, 'mode: enforce\nroles: { everyone: { allow: [ { cidr: 0.0.0.0/0 } ] } }\ndefaultRoles: [everyone]\n');
    const scenario = join(dir, 'scanner-tool.yaml');
    writeFileSync(
      scenario,
      [
        'id: P1',
        'kind: malicious',
        'start: 2026-03-04T11:00:00Z',
        'identities:',
        '  s: { host: ws1, user: u, process: { name: nmap, user: u, loginuid: 1000, parentName: bash } }',
        'connections:',
        '  - { identity: s, dest: "203.0.113.{i+1}:443", outcome: refused, repeat: 30, every: 100ms }',
        'expect: { action: block, detectors: [an0081.scanner-tool] }',
        '',
      ].join('\n'),
    );
    expect(await replayScanAlerts(policy, scenario, '--mode', 'monitor')).toEqual([]);
    // Enforced, the tool's flows are refused: no scan either.
    expect(await replayScanAlerts(policy, scenario)).toEqual([]);
  });
});
