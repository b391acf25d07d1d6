/**
 * Attribution benchmark (bounded; loopback only). Run: `node --import tsx agent/bench-attribution.ts`
 *
 * 1. A TCP server stands in for the gateway listener; a child node process opens and holds
 *    `SOCKETS` (1000) connections to it, and opens more on request.
 * 2. Agent CPU per pass: one pass that attributes all 1000 (+ POST to a local sink), then
 *    `STEADY_PASSES` passes with nothing new (the steady state of a host every interval).
 * 3. LocalAttributor latency, connect → attribution, measured at the server from `connection` to the
 *    answer: (a) new connections from the long-lived child, one at a time, (b) fresh `curl`
 *    processes, (c) bursts of 20 simultaneous connects (coalesced).
 * Prints one JSON summary line last.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, type Socket, createServer } from 'node:net';
import { readFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Agent } from './agent.ts';
import { LocalAttributor } from './attribution.ts';

const SOCKETS = Number(process.env['BENCH_SOCKETS'] ?? 1000);
const STEADY_PASSES = 20;
const SEQ_SAMPLES = 200;
const CURL_SAMPLES = 50;
const BURSTS = 10;
const BURST_SIZE = 20;

function pct(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}
const r2 = (v: number): number => Math.round(v * 100) / 100;

async function main(): Promise<void> {
  const held: Socket[] = [];
  let missed = 0;
  const attributor = new LocalAttributor({ timeoutMs: 5000 });
  let onConn: ((s: Socket, t0: number) => void) | null = null;
  const server = createServer((s) => {
    held.push(s);
    onConn?.(s, performance.now());
  });
  await new Promise<void>((r) => server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => r()));
  const port = (server.address() as AddressInfo).port;

  let received = 0;
  const sink = createHttpServer((req, res) => {
    req.resume();
    req.on('end', () => {
      received++;
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
  const sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;

  // Child: holds connections; each stdin line "N" opens N more; prints "ok <count>" once all connected.
  const script = `
    const net = require('net'); const all = [];
    function open(n) { let left = n; for (let i = 0; i < n; i++) { const s = net.connect(${port}, '127.0.0.1', () => { if (--left === 0) console.log('ok ' + all.length); }); s.on('error', () => {}); all.push(s); } }
    require('readline').createInterface({ input: process.stdin }).on('line', (l) => open(Number(l)));`;
  const child: ChildProcess = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let lineWaiter: (() => void) | null = null;
  child.stdout?.on('data', (d: Buffer) => {
    lines.push(...d.toString().split('\n').filter((l) => l.length > 0));
    lineWaiter?.();
  });
  const openConns = async (n: number): Promise<void> => {
    const before = lines.length;
    child.stdin?.write(`${n}\n`);
    while (lines.length === before) await new Promise<void>((r) => (lineWaiter = r));
  };

  try {
    await openConns(SOCKETS);
    while (held.length < SOCKETS) await new Promise((r) => setTimeout(r, 5));

    // 2. Agent CPU per pass.
    const agent = new Agent({ gatewayUrl: sinkUrl, token: 'bench', host: 'bench', intervalMs: 1000, gatewayPorts: [port], log: () => {} });
    const measure = async (): Promise<{ cpuMs: number; wallMs: number; queued: number }> => {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const r = await agent.collect();
      await agent.flush();
      const c = process.cpuUsage(c0);
      return { cpuMs: (c.user + c.system) / 1000, wallMs: performance.now() - t0, queued: r.queued };
    };
    const tcpLines = (await readFile('/proc/net/tcp', 'latin1')).split('\n').length - 2;
    const first = await measure();
    const steady: number[] = [];
    const steadyWall: number[] = [];
    for (let i = 0; i < STEADY_PASSES; i++) {
      const m = await measure();
      steady.push(m.cpuMs);
      steadyWall.push(m.wallMs);
    }

    // 3a. Sequential new connections from the long-lived child.
    const timeOne = (open: () => void): Promise<number> =>
      new Promise((resolve) => {
        onConn = (s, t0) => {
          onConn = null;
          void attributor.attribute(s.remoteAddress!, s.remotePort!, s.localAddress!, s.localPort!).then((p) => {
            if (!p) missed++;
            resolve(performance.now() - t0);
          });
        };
        open();
      });
    const cpuPerLookupMs = (c: NodeJS.CpuUsage, n: number): number => r2((c.user + c.system) / 1000 / n);
    const seq: number[] = [];
    let cpu0 = process.cpuUsage();
    for (let i = 0; i < SEQ_SAMPLES; i++) seq.push(await timeOne(() => child.stdin?.write('1\n')));
    const seqCpu = cpuPerLookupMs(process.cpuUsage(cpu0), SEQ_SAMPLES);

    // 3b. A fresh curl process per connection (the `curl -x` case).
    const curl: number[] = [];
    const curls: ChildProcess[] = [];
    cpu0 = process.cpuUsage();
    for (let i = 0; i < CURL_SAMPLES; i++) {
      curl.push(
        await timeOne(() => {
          curls.push(spawn('curl', ['-s', '-m', '30', `http://127.0.0.1:${port}/`], { stdio: 'ignore' }));
        }),
      );
    }
    const curlCpu = cpuPerLookupMs(process.cpuUsage(cpu0), CURL_SAMPLES);
    for (const c of curls) c.kill('SIGKILL');

    // 3c. Bursts: BURST_SIZE simultaneous connects, each attributed as it is accepted.
    const burst: number[] = [];
    const batchesBefore = attributor.batches;
    cpu0 = process.cpuUsage();
    for (let b = 0; b < BURSTS; b++) {
      await new Promise<void>((resolve) => {
        let pending = BURST_SIZE;
        onConn = (s, t0) => {
          void attributor.attribute(s.remoteAddress!, s.remotePort!, s.localAddress!, s.localPort!).then((p) => {
            if (!p) missed++;
            burst.push(performance.now() - t0);
            if (--pending === 0) {
              onConn = null;
              resolve();
            }
          });
        };
        child.stdin?.write(`${BURST_SIZE}\n`);
      });
    }
    const burstBatches = attributor.batches - batchesBefore;
    const burstCpu = cpuPerLookupMs(process.cpuUsage(cpu0), BURSTS * BURST_SIZE);

    const summary = {
      sockets: SOCKETS,
      procNetTcpEntries: tcpLines,
      loadAverage1m: r2(loadavg()[0] ?? 0),
      notAttributed: missed,
      agent: {
        firstPass: { cpuMs: r2(first.cpuMs), wallMs: r2(first.wallMs), reported: first.queued, posts: received },
        steadyPass: { cpuMsMean: r2(steady.reduce((a, b) => a + b, 0) / steady.length), cpuMsP99: r2(pct(steady, 99)), wallMsP50: r2(pct(steadyWall, 50)) },
      },
      localAttributor: {
        sequential: { samples: seq.length, p50Ms: r2(pct(seq, 50)), p99Ms: r2(pct(seq, 99)), cpuMsPerLookup: seqCpu },
        freshCurl: { samples: curl.length, p50Ms: r2(pct(curl, 50)), p99Ms: r2(pct(curl, 99)), cpuMsPerLookup: curlCpu },
        burst20: { samples: burst.length, p50Ms: r2(pct(burst, 50)), p99Ms: r2(pct(burst, 99)), batches: burstBatches, cpuMsPerLookup: burstCpu },
      },
    };
    process.stdout.write(
      `agent, ${SOCKETS} sockets to the gateway: first pass ${summary.agent.firstPass.cpuMs} ms CPU (${first.queued} reported), ` +
        `steady pass ${summary.agent.steadyPass.cpuMsMean} ms CPU mean / ${summary.agent.steadyPass.cpuMsP99} ms p99\n` +
        `connect → attribution: sequential p50 ${summary.localAttributor.sequential.p50Ms} ms p99 ${summary.localAttributor.sequential.p99Ms} ms; ` +
        `fresh curl p50 ${summary.localAttributor.freshCurl.p50Ms} ms p99 ${summary.localAttributor.freshCurl.p99Ms} ms; ` +
        `bursts of ${BURST_SIZE} p50 ${summary.localAttributor.burst20.p50Ms} ms p99 ${summary.localAttributor.burst20.p99Ms} ms in ${burstBatches} batches for ${burst.length} lookups\n`,
    );
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    child.kill('SIGKILL');
    for (const s of held) s.destroy();
    server.close();
    sink.close();
  }
}

await main();
