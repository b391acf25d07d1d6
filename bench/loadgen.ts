/**
 * Load generator (port of ../shared/bench/loadgen.mjs). Runs in its own process, forked by
 * `bench/run.ts` with IPC: it receives `{type:'run', options}` messages and answers each with
 * `{type:'result', result}`. Talks only to loopback; every loop is bounded in count and time.
 *
 * Tests
 *   tput  : 1 tunnel up / 1 tunnel down N bytes, P tunnels up / down N bytes in total
 *   setup : open tunnel → send 8 B → wait for the echo → close; C workers; bounded count and time,
 *           after a warm-up (bounded in count and time, the same for every target) whose rate and
 *           CPU are reported apart from the measured phase
 *   http  : GET 1 KiB and 1 MiB, C keep-alive connections. http proxy → absolute-URI requests;
 *           direct → origin-form to the origin; socks5 → origin-form inside SOCKS5 tunnels
 *   idle  : hold N idle tunnels; proxy process-tree RSS/PSS delta per tunnel
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { ResponseParser } from './http-response-parser.ts';
import { CLK_TCK, cpuTicks, type MemoryKiB, machineTicks, memoryKiB, processTree } from './proc-stats.ts';

export type ProxyKind = 'direct' | 'http' | 'socks5';

export interface LoadOptions {
  name: string;
  kind: ProxyKind;
  proxyHost: string;
  proxyPort: number;
  proxyPid: number;
  originPid: number;
  originHost: string;
  echoPort: number;
  dataPort: number;
  httpPort: number;
  tests: string[];
  tputBytes: number;
  tputPar: number;
  tputMaxSecs: number;
  setupConc: number;
  setupMax: number;
  setupSecs: number;
  /** Setups run before the measured phase, at most this many and for at most setupWarmSecs. */
  setupWarmMax: number;
  setupWarmSecs: number;
  httpConc: number;
  httpSecs: number;
  idle: number[];
  idleHoldSecs: number;
  idleConc: number;
  /** Bind idle-test client sockets to 127.0.1.1–127.0.1.250 (more source ports). */
  spreadSources: boolean;
  quietPct: number;
  quietMaxSecs: number;
}

export interface CpuPct {
  proxy: number | null;
  origin: number | null;
  gen: number;
  machine: number;
  other: number;
}
export interface TputResult {
  MBps: number;
  bytes: number;
  secs: number;
  complete: boolean;
  cpu: CpuPct;
  wait_s: number;
  error?: string;
}
export interface SetupResult {
  conn_per_s: number;
  p50_ms: number | null;
  p99_ms: number | null;
  ok: number;
  fail: number;
  secs: number;
  /** Setups run before measuring (warm-up, not counted in the figures above). */
  warmup: number;
  /** The warm-up phase on its own: setups/s and CPU (a JIT-compiled proxy is slower while it compiles). */
  warmup_per_s?: number;
  warmup_cpu?: CpuPct;
  cpu: CpuPct;
  wait_s: number;
  errors?: Record<string, number>;
}
export interface HttpResult {
  req_per_s: number;
  MBps: number;
  p50_ms: number | null;
  p99_ms: number | null;
  ok: number;
  bad_status_or_len: number;
  fail: number;
  conns_opened: number;
  keepalive_retries: number;
  secs: number;
  cpu: CpuPct;
  wait_s: number;
  errors?: Record<string, number>;
}
export interface IdleResult {
  requested: number;
  established: number;
  alive_after_hold: number;
  fail: number;
  all_ok: boolean;
  open_secs: number;
  wait_s: number;
  procs?: number;
  rss_base_MiB?: number;
  rss_held_MiB?: number;
  pss_held_MiB?: number;
  rss_KiB_per_tunnel?: number | null;
  pss_KiB_per_tunnel?: number | null;
  errors?: Record<string, number>;
}
export interface LoadResult {
  name: string;
  kind: ProxyKind;
  ts: string;
  node: string;
  loadavg_start: number[];
  loadavg_end?: number[];
  proxy_rss_start_MiB?: number;
  proxy_rss_end_MiB?: number;
  idle?: Record<string, IdleResult>;
  tput?: Record<string, TputResult>;
  setup?: SetupResult;
  http?: Record<string, HttpResult>;
  http_over_socks?: Record<string, HttpResult>;
  error?: string;
}

const r2 = (x: number): number => Math.round(x * 100) / 100;
const pct = (sorted: number[], p: number): number | null =>
  sorted.length ? (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? null) : null;
const errKey = (e: unknown): string => {
  const err = e as NodeJS.ErrnoException;
  return err?.code ?? err?.message ?? String(e);
};
const CRLF2 = Buffer.from('\r\n\r\n');
const CHUNK = Buffer.alloc(256 * 1024, 0x63);

interface CpuSnap {
  t: number;
  sys: [number, number];
  proxy: number;
  origin: number;
  self: NodeJS.CpuUsage;
}

/** One load-generator run against one target. */
class Load {
  private idleBase: MemoryKiB | null = null;
  constructor(private readonly o: LoadOptions) {}

  private snap(): CpuSnap {
    return {
      t: performance.now(),
      sys: machineTicks(),
      proxy: this.o.proxyPid ? cpuTicks(processTree(this.o.proxyPid)) : 0,
      origin: this.o.originPid ? cpuTicks([this.o.originPid]) : 0,
      self: process.cpuUsage(),
    };
  }

  /** CPU over the phase in % of ONE core (machine total = 100 × cores). */
  private cpuPct(s0: CpuSnap): CpuPct {
    const s1 = this.snap();
    const secs = (s1.t - s0.t) / 1000 || 1e-3;
    const u = process.cpuUsage(s0.self);
    const proxy = this.o.proxyPid ? ((s1.proxy - s0.proxy) / CLK_TCK / secs) * 100 : 0;
    const origin = this.o.originPid ? ((s1.origin - s0.origin) / CLK_TCK / secs) * 100 : 0;
    const gen = ((u.user + u.system) / 1e6 / secs) * 100;
    const machine = ((s1.sys[0] - s0.sys[0]) / CLK_TCK / secs) * 100;
    return {
      proxy: this.o.proxyPid ? Math.round(proxy * 10) / 10 : null,
      origin: this.o.originPid ? Math.round(origin * 10) / 10 : null,
      gen: Math.round(gen * 10) / 10,
      machine: Math.round(machine * 10) / 10,
      other: Math.round(Math.max(0, machine - proxy - origin - gen) * 10) / 10,
    };
  }

  /** Shared box: wait (bounded) until CPU used by other processes is below quietPct of one core. */
  private async waitQuiet(): Promise<number> {
    if (!(this.o.quietPct > 0) || !(this.o.quietMaxSecs > 0)) return 0;
    const t0 = performance.now();
    for (let i = 0; i < 100 && (performance.now() - t0) / 1000 < this.o.quietMaxSecs; i++) {
      const c0 = this.snap();
      await sleep(500);
      if (this.cpuPct(c0).other < this.o.quietPct) break;
    }
    return r2((performance.now() - t0) / 1000);
  }

  private tcp(host: string, port: number, localAddress?: string): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port, noDelay: true, ...(localAddress ? { localAddress } : {}) });
      s.setTimeout(15000, () => s.destroy(new Error('timeout')));
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    });
  }

  /** Opens a tunnel to the target through the proxy; the socket is returned paused. */
  async openTunnel(host: string, port: number, localAddress?: string): Promise<net.Socket> {
    if (this.o.kind === 'direct') return this.tcp(host, port, localAddress);
    const s = await this.tcp(this.o.proxyHost, this.o.proxyPort, localAddress);
    try {
      if (this.o.kind === 'http') {
        const hp = `${host}:${port}`;
        s.write(`CONNECT ${hp} HTTP/1.1\r\nHost: ${hp}\r\n\r\n`);
        const h = await readUntil(s, (b) => {
          const i = b.indexOf(CRLF2);
          return i < 0 ? -1 : i + 4;
        });
        if (!/^HTTP\/1\.[01] 2\d\d/.test(h.toString('latin1', 0, 16))) {
          throw new Error(`CONNECT refused: ${h.toString('latin1').split('\r\n')[0]}`);
        }
      } else {
        s.write(Buffer.from([5, 1, 0]));
        const g = await readUntil(s, (b) => (b.length >= 2 ? 2 : -1));
        if (g[0] !== 5 || g[1] !== 0) throw new Error('socks5 method rejected');
        const addr = Buffer.from(host.split('.').map(Number));
        const portBuf = Buffer.alloc(2);
        portBuf.writeUInt16BE(port);
        s.write(Buffer.concat([Buffer.from([5, 1, 0, 1]), addr, portBuf]));
        const r = await readUntil(s, (b) => {
          if (b.length < 5) return -1;
          const len = b[3] === 1 ? 10 : b[3] === 4 ? 22 : b[3] === 3 ? 7 + (b[4] ?? 0) : Number.NaN;
          if (Number.isNaN(len)) throw new Error('socks5 bad atyp');
          return b.length >= len ? len : -1;
        });
        if (r[1] !== 0) throw new Error(`socks5 connect failed rep=${r[1]}`);
      }
      return s;
    } catch (e) {
      s.destroy();
      throw e;
    }
  }

  // ---------- tput
  private async oneStream(dir: 'U' | 'D', bytes: number, deadline: number): Promise<{ ok: boolean; moved: number }> {
    const s = await this.openTunnel(this.o.originHost, this.o.dataPort);
    s.setTimeout(0);
    let got = 0;
    const done = new Promise<boolean>((resolve, reject) => {
      const timer = setTimeout(() => {
        s.destroy();
        resolve(false);
      }, Math.max(1, deadline - performance.now()));
      s.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      s.on('close', () => {
        clearTimeout(timer);
        resolve(false);
      });
      s.on('data', (d: Buffer) => {
        if (dir === 'U') {
          clearTimeout(timer);
          resolve(true);
          return;
        }
        got += d.length;
        if (got >= bytes) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      s.resume();
    });
    const header = Buffer.alloc(9);
    header[0] = dir.charCodeAt(0);
    header.writeBigUInt64BE(BigInt(bytes), 1);
    s.write(header);
    if (dir === 'U') pump(s, bytes);
    const ok = await done;
    const moved = dir === 'U' ? (ok ? bytes : s.bytesWritten) : got;
    s.destroy();
    return { ok, moved };
  }

  async tput(): Promise<Record<string, TputResult>> {
    const out: Record<string, TputResult> = {};
    const par = this.o.tputPar;
    const phases: [string, 'U' | 'D', number][] = [
      ['up_1', 'U', 1],
      ['down_1', 'D', 1],
      [`up_${par}`, 'U', par],
      [`down_${par}`, 'D', par],
    ];
    for (const [key, dir, n] of phases) {
      const per = Math.floor(this.o.tputBytes / n);
      const wait = await this.waitQuiet();
      const deadline = performance.now() + this.o.tputMaxSecs * 1000;
      const c0 = this.snap();
      const t0 = performance.now();
      let error: string | undefined;
      const rs = await Promise.all(
        Array.from({ length: n }, () =>
          this.oneStream(dir, per, deadline).catch((e: unknown) => {
            error = errKey(e);
            return { ok: false, moved: 0 };
          }),
        ),
      );
      const secs = (performance.now() - t0) / 1000;
      const moved = rs.reduce((x, r) => x + r.moved, 0);
      out[key] = {
        MBps: r2(moved / secs / 1e6),
        bytes: moved,
        secs: r2(secs),
        complete: rs.every((r) => r.ok),
        cpu: this.cpuPct(c0),
        wait_s: wait,
        ...(error ? { error } : {}),
      };
      log(this.o.name, 'tput', key, JSON.stringify(out[key]));
    }
    return out;
  }

  // ---------- setup rate
  async setup(): Promise<SetupResult> {
    const ping = Buffer.from('pingpong');
    const lat: number[] = [];
    const errors: Record<string, number> = {};
    let ok = 0;
    let fail = 0;
    let started = 0;
    let measuring = false;
    const wait = await this.waitQuiet();
    const one = async (): Promise<void> => {
      const t = performance.now();
      let s: net.Socket | undefined;
      try {
        s = await this.openTunnel(this.o.originHost, this.o.echoPort);
        s.write(ping);
        await readUntil(s, (b) => (b.length >= 8 ? 8 : -1));
        if (measuring) {
          lat.push(performance.now() - t);
          ok++;
        }
      } catch (e) {
        if (measuring) {
          fail++;
          const k = errKey(e);
          errors[k] = (errors[k] ?? 0) + 1;
        }
      }
      s?.destroy();
    };
    // Warm-up, the same for every target and reported apart: a gateway is a long-running process, and
    // a JIT-compiled proxy's first thousands of setups (while V8 compiles and the heap grows) say
    // little about its steady state. docs/benchmarks.md shows the curve.
    const warmT0 = performance.now();
    const warmEnd = warmT0 + this.o.setupWarmSecs * 1000;
    const warmC0 = this.snap();
    let warmed = 0;
    const warmer = async (): Promise<void> => {
      while (warmed < this.o.setupWarmMax && performance.now() < warmEnd) {
        warmed++;
        await one();
      }
    };
    await Promise.all(Array.from({ length: this.o.setupConc }, warmer));
    const warmSecs = (performance.now() - warmT0) / 1000;
    const warmCpu = warmed > 0 ? this.cpuPct(warmC0) : undefined;
    measuring = true;
    const end = performance.now() + this.o.setupSecs * 1000;
    const c0 = this.snap();
    const t0 = performance.now();
    const worker = async (): Promise<void> => {
      while (started < this.o.setupMax && performance.now() < end) {
        started++;
        await one();
      }
    };
    await Promise.all(Array.from({ length: this.o.setupConc }, worker));
    const secs = (performance.now() - t0) / 1000;
    lat.sort((x, y) => x - y);
    const p50 = pct(lat, 0.5);
    const p99 = pct(lat, 0.99);
    const r: SetupResult = {
      conn_per_s: Math.round(ok / secs),
      p50_ms: p50 === null ? null : r2(p50),
      p99_ms: p99 === null ? null : r2(p99),
      ok,
      fail,
      secs: r2(secs),
      warmup: warmed,
      ...(warmCpu ? { warmup_per_s: Math.round(warmed / warmSecs), warmup_cpu: warmCpu } : {}),
      cpu: this.cpuPct(c0),
      wait_s: wait,
      ...(fail ? { errors } : {}),
    };
    log(this.o.name, 'setup', JSON.stringify(r));
    return r;
  }

  // ---------- http
  async httpRun(path: string, expectBytes: number): Promise<HttpResult> {
    const o = this.o;
    const viaProxy = o.kind === 'http';
    const hostHdr = `${o.originHost}:${o.httpPort}`;
    const req = Buffer.from(
      `GET ${viaProxy ? `http://${hostHdr}${path}` : path} HTTP/1.1\r\nHost: ${hostHdr}\r\nUser-Agent: egressgate-bench\r\nAccept: */*\r\n\r\n`,
      'latin1',
    );
    const lat: number[] = [];
    const errors: Record<string, number> = {};
    let ok = 0;
    let bad = 0;
    let fail = 0;
    let conns = 0;
    let bytes = 0;
    let retries = 0;
    let sent = 0;
    const maxRequests = 2_000_000;
    const wait = await this.waitQuiet();
    const warm = performance.now() + Math.min(1000, o.httpSecs * 200);
    const end = warm + o.httpSecs * 1000;
    let c0: CpuSnap | null = null;
    let t0 = 0;
    const startMeasure = (): void => {
      if (!c0) {
        c0 = this.snap();
        t0 = performance.now();
      }
    };
    const connect = async (): Promise<net.Socket> => {
      conns++;
      return o.kind === 'socks5' ? this.openTunnel(o.originHost, o.httpPort) : this.tcp(viaProxy ? o.proxyHost : o.originHost, viaProxy ? o.proxyPort : o.httpPort);
    };
    const worker = async (): Promise<void> => {
      let s: net.Socket | null = null;
      const parser = new ResponseParser();
      let pending: { resolve: () => void; reject: (e: Error) => void } | null = null;
      const attach = (sock: net.Socket): void => {
        sock.setTimeout(15000, () => sock.destroy(new Error('timeout')));
        sock.on('data', (d: Buffer) => {
          if (!pending) return;
          if (parser.feed(d) >= 0) {
            const p = pending;
            pending = null;
            p.resolve();
          }
        });
        const gone = (e?: Error): void => {
          if (pending) {
            const p = pending;
            pending = null;
            if (parser.state === 5) p.resolve();
            else p.reject(e ?? new Error('closed mid-response'));
          }
          if (s === sock) s = null;
        };
        sock.on('error', gone);
        sock.on('close', () => gone());
        sock.resume();
      };
      while (performance.now() < end && sent < maxRequests) {
        if (performance.now() >= warm) startMeasure();
        const inWindow = c0 !== null;
        sent++;
        const t = performance.now();
        try {
          // A reused keep-alive connection closed by the server before any response byte is retried
          // once on a fresh connection (what real clients do); counted in keepalive_retries.
          for (let attempt = 0; attempt < 2; attempt++) {
            const reused = s !== null && !s.destroyed;
            if (!reused) {
              s = await connect();
              attach(s);
            }
            parser.reset();
            const sock = s as net.Socket;
            try {
              await new Promise<void>((resolve, reject) => {
                pending = { resolve, reject };
                sock.write(req);
              });
              break;
            } catch (e) {
              if (!reused || attempt > 0 || parser.state !== 0 || parser.hasPartialHead) throw e;
              retries++;
              sock.destroy();
              s = null;
            }
          }
          const elapsed = performance.now() - t;
          if (parser.isClose && s) {
            (s as net.Socket).destroy();
            s = null;
          }
          if (inWindow) {
            if (parser.status === 200 && parser.bodyBytes === expectBytes) {
              ok++;
              lat.push(elapsed);
              bytes += parser.bodyBytes;
            } else bad++;
          }
        } catch (e) {
          if (inWindow) {
            fail++;
            const k = errKey(e);
            errors[k] = (errors[k] ?? 0) + 1;
          }
          if (s) {
            (s as net.Socket).destroy();
            s = null;
          }
        }
      }
      if (s) (s as net.Socket).destroy();
    };
    await Promise.all(Array.from({ length: o.httpConc }, worker));
    startMeasure();
    const secs = (performance.now() - t0) / 1000 || 1e-3;
    lat.sort((x, y) => x - y);
    const p50 = pct(lat, 0.5);
    const p99 = pct(lat, 0.99);
    const r: HttpResult = {
      req_per_s: Math.round(ok / secs),
      MBps: r2(bytes / secs / 1e6),
      p50_ms: p50 === null ? null : r2(p50),
      p99_ms: p99 === null ? null : r2(p99),
      ok,
      bad_status_or_len: bad,
      fail,
      conns_opened: conns,
      keepalive_retries: retries,
      secs: r2(secs),
      cpu: this.cpuPct(c0 ?? this.snap()),
      wait_s: wait,
      ...(fail ? { errors } : {}),
    };
    log(o.name, 'http', path, JSON.stringify(r));
    return r;
  }

  // ---------- idle
  async idleOne(n: number): Promise<IdleResult> {
    const o = this.o;
    const wait = await this.waitQuiet();
    const m0 = memoryKiB(processTree(o.proxyPid));
    // Per-tunnel delta against the proxy's memory before the FIRST idle phase, so memory retained from
    // an earlier phase is not hidden (allocators rarely give memory back).
    if (!this.idleBase) this.idleBase = m0;
    const socks: net.Socket[] = [];
    const errors: Record<string, number> = {};
    let fail = 0;
    let started = 0;
    const t0 = performance.now();
    const end = performance.now() + 60_000;
    const worker = async (): Promise<void> => {
      while (started < n && performance.now() < end) {
        const i = started++;
        try {
          const local = o.spreadSources ? `127.0.1.${1 + (i % 250)}` : undefined;
          const s = await this.openTunnel(o.originHost, o.echoPort, local);
          s.write('x');
          await readUntil(s, (b) => (b.length >= 1 ? 1 : -1));
          s.setTimeout(0);
          s.on('error', () => {});
          socks.push(s);
        } catch (e) {
          fail++;
          const k = errKey(e);
          errors[k] = (errors[k] ?? 0) + 1;
        }
      }
    };
    await Promise.all(Array.from({ length: o.idleConc }, worker));
    const openSecs = (performance.now() - t0) / 1000;
    await sleep(o.idleHoldSecs * 1000);
    const pids1 = processTree(o.proxyPid);
    const m1 = memoryKiB(pids1);
    let alive = 0;
    await Promise.all(
      socks.map(
        (s) =>
          new Promise<void>((resolve) => {
            if (s.destroyed) {
              resolve();
              return;
            }
            const tm = setTimeout(resolve, 10000);
            s.once('data', () => {
              alive++;
              clearTimeout(tm);
              resolve();
            });
            s.resume();
            s.write('y');
          }),
      ),
    );
    for (const s of socks) s.destroy();
    const est = socks.length;
    const base = this.idleBase;
    const r: IdleResult = {
      requested: n,
      established: est,
      alive_after_hold: alive,
      fail,
      all_ok: est === n && alive === n,
      open_secs: r2(openSecs),
      wait_s: wait,
      ...(o.proxyPid
        ? {
            procs: pids1.length,
            rss_base_MiB: r2(base.rssKiB / 1024),
            rss_held_MiB: r2(m1.rssKiB / 1024),
            pss_held_MiB: r2(m1.pssKiB / 1024),
            rss_KiB_per_tunnel: est ? r2((m1.rssKiB - base.rssKiB) / est) : null,
            pss_KiB_per_tunnel: est ? r2((m1.pssKiB - base.pssKiB) / est) : null,
          }
        : {}),
      ...(fail ? { errors } : {}),
    };
    log(o.name, 'idle', JSON.stringify(r));
    await sleep(1500); // let the proxy tear down before the next phase
    return r;
  }
}

function log(...x: unknown[]): void {
  console.error('[loadgen]', ...x);
}

/** Reads until need(buf) returns a consumed length ≥ 0; unconsumed bytes are unshifted; socket left paused. */
export function readUntil(s: net.Socket, need: (b: Buffer) => number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buf: Buffer | null = null;
    const fin = (): void => {
      s.pause();
      s.off('data', onData);
      s.off('error', onErr);
      s.off('end', onEnd);
      s.off('close', onEnd);
    };
    const onData = (d: Buffer): void => {
      buf = buf ? Buffer.concat([buf, d]) : d;
      let n: number;
      try {
        n = need(buf);
      } catch (e) {
        fin();
        reject(e);
        return;
      }
      if (n >= 0) {
        fin();
        if (n < buf.length) s.unshift(buf.subarray(n));
        resolve(buf.subarray(0, n));
      }
    };
    const onErr = (e: Error): void => {
      fin();
      reject(e);
    };
    const onEnd = (): void => {
      fin();
      reject(new Error('closed by peer'));
    };
    s.on('data', onData);
    s.on('error', onErr);
    s.on('end', onEnd);
    s.on('close', onEnd);
    s.resume();
  });
}

function pump(s: net.Socket, total: number): void {
  let left = total;
  const go = (): void => {
    while (left > 0 && !s.destroyed) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!s.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
        s.once('drain', go);
        return;
      }
    }
  };
  go();
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1)$/;

/** Runs the requested tests against one target. Idle runs first so its baseline is the fresh proxy. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const { loadavg } = await import('node:os');
  const result: LoadResult = { name: o.name, kind: o.kind, ts: new Date().toISOString(), node: process.version, loadavg_start: loadavg().map(r2) };
  if ((o.kind !== 'direct' && !LOOPBACK.test(o.proxyHost)) || !LOOPBACK.test(o.originHost)) {
    return { ...result, error: 'loopback only' };
  }
  const load = new Load(o);
  if (o.proxyPid) result.proxy_rss_start_MiB = r2(memoryKiB(processTree(o.proxyPid)).rssKiB / 1024);
  try {
    if (o.tests.includes('idle') && o.kind !== 'direct' && o.idle.length) {
      result.idle = {};
      for (const n of o.idle) result.idle[String(n)] = await load.idleOne(n);
    }
    if (o.tests.includes('tput')) result.tput = await load.tput();
    if (o.tests.includes('setup')) result.setup = await load.setup();
    if (o.tests.includes('http')) {
      const http = { '1k': await load.httpRun('/1k', 1024), '1m': await load.httpRun('/1m', 1 << 20) };
      if (o.kind === 'socks5') result.http_over_socks = http;
      else result.http = http;
    }
  } catch (e) {
    result.error = String((e as Error)?.stack ?? e);
  }
  if (o.proxyPid) result.proxy_rss_end_MiB = r2(memoryKiB(processTree(o.proxyPid)).rssKiB / 1024);
  result.loadavg_end = loadavg().map(r2);
  return result;
}

// Forked worker mode: one run per message, strictly sequential. Exit when the driver goes away.
if (process.send) {
  let queue = Promise.resolve();
  process.on('message', (m: { type: string; options: LoadOptions }) => {
    if (m?.type !== 'run') return;
    queue = queue.then(async () => {
      const result = await runLoad(m.options);
      process.send?.({ type: 'result', result });
    });
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ type: 'ready', pid: process.pid });
}
