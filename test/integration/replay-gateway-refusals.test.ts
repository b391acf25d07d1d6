/**
 * Flows the gateway admitted (verdict `allow`) and then refused itself before any dial reached the
 * destination — here its parent proxy down, closeReason `upstream-proxy` — are no connections:
 * the live engine does not count them towards an0081.scan's fan-out (distinct destinations in an
 * hour), and `egressgate replay` over the flow log they were written to must not either. Real
 * listeners (the HTTP proxy, a file flow log, an agent's report naming each client's process, a
 * non-browser), the real CLI (a child process of cli.ts, its printed alerts); the fan-out threshold
 * lowered to FANOUT_LIMIT names. The same for flows an admin DELETE ended while a silent parent held
 * their dial: their records say `connected: false` (SPEC §5 extension), which the replay reads.
 * Control: the same names connected to an origin are a fan-out, live and replayed.
 *
 * The first test fails without the replay's rule: the 30 records were replayed as connections and
 * `replay` printed `an0081.scan high block … fan-out: 28 distinct destinations in 1 h` that the gateway
 * never raised; the second fails without the record's `connected` (fan-out: 21 distinct destinations).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { startSocksParent } from '../helpers/parent-proxy.ts';
import { refusingPorts, reportProcesses, type TcpOrigin, tcpOrigin, testAgent, waitForSweeps } from '../helpers/detection-live.ts';
import type { Config } from '../../policy/config.ts';
import { type DeepPartial, startTestGateway, type TestGateway, testConfig, until } from '../helpers/gateway.ts';
import { CLI } from '../helpers/serve-process.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const FANOUT_LIMIT = 20;
const NAMES = Array.from({ length: 30 }, (_, i) => `n${i}.fanout.test`);
const dir = mkdtempSync(join(tmpdir(), 'egw-replay-refusals-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const OVERRIDES: DeepPartial<Config> = {
  mode: 'enforce',
  resolver: { hosts: Object.fromEntries(NAMES.map((n) => [n, '127.0.0.1'])) },
  identity: { agents: [testAgent] },
  detection: { sampleIntervalMs: 50, detectors: { 'an0081.scan': { distinctDestinationsPerHour: FANOUT_LIMIT } } },
};

/** `egressgate replay --config config log` as a user runs it: its an0081.scan alert lines. */
function replayScanAlerts(config: string, log: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, 'replay', '--config', config, log], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`replay failed: ${err.message}\n${stderr}`));
      else resolve(stdout.split('\n').filter((l) => l.includes(' an0081.scan ')));
    });
  });
}

/** CONNECT host:port from a client an agent named python3 (reported before the request): the status. */
async function connectAs(gw: TestGateway, host: string, port: number): Promise<number> {
  const socket = connect({ host: gw.httpHost, port: gw.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  await reportProcesses(gw.adminUrl, 'ws-fan', [
    { localIp: '127.0.0.1', localPort: socket.localPort ?? 0, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4242, name: 'python3', exe: '/usr/bin/python3' },
  ]);
  socket.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`);
  const [head] = (await once(socket, 'data')) as [Buffer];
  socket.destroy();
  return Number(head.toString('latin1').split(' ')[1]);
}

/** A CONNECT to every name at `port` through `gw`, one after the other: the statuses; then the live an0081.scan alerts. */
async function fanOut(gw: TestGateway, port: number): Promise<{ statuses: number[]; live: string[] }> {
  const statuses: number[] = [];
  for (const n of NAMES) {
    statuses.push(await connectAs(gw, n, port));
    await gw.waitForClosed((r) => r.destination.host === n);
  }
  await waitForSweeps(gw.flows, 5);
  const live = gw.alerts.list({}).filter((a) => a.detector === 'an0081.scan').map((a) => `${a.action} ${String(a.evidence['kind'])}`);
  return { statuses, live };
}

function records(log: string): Array<Record<string, unknown>> {
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((r) => r['intermediate'] !== true);
}

describe('egressgate replay: the gateway refusing a flow itself is no connection', () => {
  it(`${NAMES.length} names through a parent proxy that is down (502 upstream-proxy, verdict allow): no fan-out live or replayed`, async () => {
    const [down] = await refusingPorts('127.0.0.1', 1);
    const log = join(dir, 'parent-down.jsonl');
    const config = join(dir, 'parent-down.json');
    const overrides = { ...OVERRIDES, upstream: `http://127.0.0.1:${down}` };
    writeFileSync(config, JSON.stringify({ ...testConfig(overrides), listen: undefined, flowLog: undefined }));
    const gw = await startTestGateway({ ...overrides, flowLog: { path: log } });
    let result: { statuses: number[]; live: string[] };
    try {
      result = await fanOut(gw, 443);
    } finally {
      await gw.stop();
    }
    expect(new Set(result.statuses)).toEqual(new Set([502]));
    expect(result.live).toEqual([]);
    const recs = records(log);
    expect(recs.length).toBe(NAMES.length);
    expect(new Set(recs.map((r) => `${r['verdict']} ${r['closeReason']} connected:${r['connected']}`))).toEqual(new Set(['allow upstream-proxy connected:false']));
    // The agent named the client, a non-browser: what the fan-out rule needs.
    expect(recs.filter((r) => (r['identity'] as { process: unknown }).process === null)).toEqual([]);
    expect(await replayScanAlerts(config, log)).toEqual([]);
  });

  it(`${NAMES.length} names an admin DELETE ended while a silent parent held the dial (admin, never connected): no fan-out live or replayed`, async () => {
    const parent = await startSocksParent();
    parent.mode = { kind: 'silent' };
    const log = join(dir, 'admin-ended.jsonl');
    const config = join(dir, 'admin-ended.json');
    const overrides = { ...OVERRIDES, upstream: parent.url(), limits: { connectTimeoutMs: 10_000 } };
    writeFileSync(config, JSON.stringify({ ...testConfig(overrides), listen: undefined, flowLog: undefined }));
    const gw = await startTestGateway({ ...overrides, flowLog: { path: log } });
    const sockets: Socket[] = [];
    let live: string[];
    try {
      for (const n of NAMES) {
        const socket = connect({ host: gw.httpHost, port: gw.httpPort });
        sockets.push(socket);
        socket.on('error', () => {});
        await once(socket, 'connect');
        await reportProcesses(gw.adminUrl, 'ws-fan', [
          { localIp: '127.0.0.1', localPort: socket.localPort ?? 0, remoteIp: gw.httpHost, remotePort: gw.httpPort, pid: 4242, name: 'python3', exe: '/usr/bin/python3' },
        ]);
        const asked = parent.seen.length;
        socket.write(`CONNECT ${n}:443 HTTP/1.1\r\nHost: ${n}:443\r\n\r\n`);
        await until(`the parent was asked for ${n}`, () => parent.seen.length > asked);
        const flow = [...gw.flows.activeFlows().values()].find((f) => f.destination.host === n);
        expect(flow).toBeDefined();
        const res = await fetch(`${gw.adminUrl}/v1/flows/${flow!.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${gw.adminToken}` } });
        expect(res.status).toBeLessThan(300);
        await gw.waitForClosed((r) => r.destination.host === n);
      }
      await waitForSweeps(gw.flows, 5);
      live = gw.alerts.list({}).filter((a) => a.detector === 'an0081.scan').map((a) => a.action);
    } finally {
      for (const s of sockets) s.destroy();
      await gw.stop();
      await parent.close();
    }
    expect(live).toEqual([]);
    const recs = records(log);
    expect(recs.length).toBe(NAMES.length);
    // Nothing else in the record tells a dial never answered from a connection ended with 0 bytes in.
    expect(new Set(recs.map((r) => `${r['verdict']} ${r['closeReason']} ${r['bytesIn']} connected:${r['connected']}`))).toEqual(new Set(['allow admin 0 connected:false']));
    expect(await replayScanAlerts(config, log)).toEqual([]);
  });

  it(`control: the same ${NAMES.length} names connected to an origin are a fan-out, live and replayed`, async () => {
    const origin: TcpOrigin = await tcpOrigin('127.0.0.1');
    const log = join(dir, 'connected.jsonl');
    const config = join(dir, 'connected.json');
    writeFileSync(config, JSON.stringify({ ...testConfig(OVERRIDES), listen: undefined, flowLog: undefined }));
    const gw = await startTestGateway({ ...OVERRIDES, flowLog: { path: log } });
    let result: { statuses: number[]; live: string[] };
    try {
      result = await fanOut(gw, origin.port);
    } finally {
      await gw.stop();
      await origin.close();
    }
    // Past the limit the fan-out may already be corroborated (a client tool outside a login session,
    // outside business hours) and block: the later CONNECTs are then refused as quarantined.
    expect(result.statuses.slice(0, FANOUT_LIMIT)).toEqual(result.statuses.slice(0, FANOUT_LIMIT).map(() => 200));
    expect(result.live.length).toBe(1);
    expect(result.live[0]).toMatch(/ fan-out$/);
    // Those past the fan-out's block were refused `quarantine` before any dial.
    expect(new Set(records(log).map((r) => `${r['verdict']} ${r['connected']}`))).toEqual(new Set(['allow true', ...(result.statuses.includes(403) ? ['block false'] : [])]));
    const replayed = await replayScanAlerts(config, log);
    expect(replayed.length).toBe(1);
    expect(replayed[0]).toContain(' fan-out: ');
  });
});
