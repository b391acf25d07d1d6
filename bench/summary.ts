/**
 * Turns load-generator results into the Markdown tables of docs/benchmarks.md: one metric a row,
 * median (min–max) over runs per target, ratio columns between targets of the same run, and a
 * check of the targets (met / missed).
 */
import type { HttpResult, LoadResult } from './loadgen.ts';

type Getter = (r: LoadResult) => number | null | undefined;

interface Row {
  label: string;
  get: Getter;
  /** "higher" is better (MB/s, conn/s), "lower" is better (ms, KiB). */
  better: 'higher' | 'lower';
}

const httpOf = (r: LoadResult): Record<string, HttpResult> | undefined => r.http ?? r.http_over_socks;
/** A phase that moved nothing (refused, killed) has no figure: shown as "–", its errors are in the JSONL. */
const tp = (r: LoadResult, k: string): number | undefined => {
  const t = r.tput?.[k];
  return t && t.bytes > 0 && !t.error ? t.MBps : undefined;
};
const su = (r: LoadResult): LoadResult['setup'] => (r.setup && r.setup.ok > 0 ? r.setup : undefined);
const ht = (r: LoadResult, k: string): HttpResult | undefined => {
  const h = httpOf(r)?.[k];
  return h && h.ok > 0 ? h : undefined;
};
const idleMax = (r: LoadResult): string | undefined => {
  const keys = Object.keys(r.idle ?? {}).map(Number);
  return keys.length ? String(Math.max(...keys)) : undefined;
};

export const ROWS: Row[] = [
  { label: 'Tunnel 1× upstream, MB/s', get: (r) => tp(r, 'up_1'), better: 'higher' },
  { label: 'Tunnel 1× downstream, MB/s', get: (r) => tp(r, 'down_1'), better: 'higher' },
  { label: 'Tunnel 8× upstream aggregate, MB/s', get: (r) => tp(r, 'up_8'), better: 'higher' },
  { label: 'Tunnel 8× downstream aggregate, MB/s', get: (r) => tp(r, 'down_8'), better: 'higher' },
  { label: 'Tunnel setup (c=50), conn/s', get: (r) => su(r)?.conn_per_s, better: 'higher' },
  { label: 'Tunnel setup p50, ms', get: (r) => su(r)?.p50_ms, better: 'lower' },
  { label: 'Tunnel setup p99, ms', get: (r) => su(r)?.p99_ms, better: 'lower' },
  { label: 'Tunnel setup failures', get: (r) => r.setup?.fail, better: 'lower' },
  { label: 'Tunnel setup warm-up (first setups after start), conn/s', get: (r) => r.setup?.warmup_per_s, better: 'higher' },
  { label: 'HTTP GET 1 KiB (c=50), req/s', get: (r) => ht(r, '1k')?.req_per_s, better: 'higher' },
  { label: 'HTTP GET 1 KiB p50, ms', get: (r) => ht(r, '1k')?.p50_ms, better: 'lower' },
  { label: 'HTTP GET 1 KiB p99, ms', get: (r) => ht(r, '1k')?.p99_ms, better: 'lower' },
  { label: 'HTTP GET 1 MiB (c=50), req/s', get: (r) => ht(r, '1m')?.req_per_s, better: 'higher' },
  { label: 'HTTP GET 1 MiB, MB/s', get: (r) => ht(r, '1m')?.MBps, better: 'higher' },
  { label: 'HTTP GET 1 MiB p99, ms', get: (r) => ht(r, '1m')?.p99_ms, better: 'lower' },
  { label: 'HTTP reconnects per 1000 req (1 KiB)', get: (r) => perMille(httpOf(r)?.['1k']), better: 'lower' },
  { label: 'Idle tunnels requested (N)', get: (r) => (idleMax(r) ? Number(idleMax(r)) : undefined), better: 'higher' },
  {
    label: 'Idle N: all established & alive (1 = yes)',
    get: (r) => {
      const k = idleMax(r);
      return k ? (r.idle?.[k]?.all_ok ? 1 : 0) : undefined;
    },
    better: 'higher',
  },
  { label: 'Idle N: RSS Δ per tunnel, KiB', get: (r) => r.idle?.[idleMax(r) ?? '']?.rss_KiB_per_tunnel, better: 'lower' },
  { label: 'Idle N: PSS Δ per tunnel, KiB', get: (r) => r.idle?.[idleMax(r) ?? '']?.pss_KiB_per_tunnel, better: 'lower' },
  { label: 'Idle N: proxy RSS held, MiB', get: (r) => r.idle?.[idleMax(r) ?? '']?.rss_held_MiB, better: 'lower' },
  { label: 'Fresh proxy RSS, MiB', get: (r) => r.idle?.[idleMax(r) ?? '']?.rss_base_MiB, better: 'lower' },
];

/** CPU rows: proxy % of one core per phase. */
export const CPU_ROWS: Row[] = [
  { label: 'CPU proxy %, tunnel 1× up', get: (r) => r.tput?.['up_1']?.cpu.proxy, better: 'lower' },
  { label: 'CPU proxy %, tunnel 1× down', get: (r) => r.tput?.['down_1']?.cpu.proxy, better: 'lower' },
  { label: 'CPU proxy %, setup', get: (r) => r.setup?.cpu.proxy, better: 'lower' },
  { label: 'CPU proxy %, HTTP 1 KiB', get: (r) => ht(r, '1k')?.cpu.proxy, better: 'lower' },
  { label: 'CPU proxy %, HTTP 1 MiB', get: (r) => ht(r, '1m')?.cpu.proxy, better: 'lower' },
  { label: 'CPU other % (machine − proxy − gen − origin), setup', get: (r) => r.setup?.cpu.other, better: 'lower' },
  // Cost per unit of work: far less sensitive to other tenants than rates are.
  { label: 'Proxy CPU s per GB, tunnel 1× up', get: (r) => perGB(r, 'up_1'), better: 'lower' },
  { label: 'Proxy CPU s per GB, tunnel 1× down', get: (r) => perGB(r, 'down_1'), better: 'lower' },
  { label: 'Proxy CPU µs per tunnel setup', get: (r) => perOp(su(r)?.cpu.proxy, su(r)?.conn_per_s), better: 'lower' },
  { label: 'Proxy CPU µs per tunnel setup, warm-up', get: (r) => perOp(r.setup?.warmup_cpu?.proxy, r.setup?.warmup_per_s), better: 'lower' },
  { label: 'Proxy CPU µs per HTTP 1 KiB request', get: (r) => perOp(ht(r, '1k')?.cpu.proxy, ht(r, '1k')?.req_per_s), better: 'lower' },
  { label: 'Proxy CPU µs per HTTP 1 MiB request', get: (r) => perOp(ht(r, '1m')?.cpu.proxy, ht(r, '1m')?.req_per_s), better: 'lower' },
];

function perOp(cpuPct: number | null | undefined, perSec: number | undefined): number | undefined {
  return cpuPct && perSec ? Math.round((cpuPct * 10_000) / perSec) : undefined;
}
function perGB(r: LoadResult, k: string): number | undefined {
  const t = r.tput?.[k];
  const mbps = tp(r, k);
  return t?.cpu.proxy && mbps ? Math.round((t.cpu.proxy / 100 / (mbps / 1000)) * 100) / 100 : undefined;
}

/** Connections opened beyond the 50 initial keep-alive ones, per 1000 requests (0 = keep-alive held). */
function perMille(h: HttpResult | undefined): number | undefined {
  if (!h?.ok) return undefined;
  return Math.round((Math.max(0, h.conns_opened - 50) / (h.ok + h.fail + h.bad_status_or_len)) * 1000 * 10) / 10;
}

export function median(xs: number[]): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function fmt(x: number | null): string {
  if (x === null || Number.isNaN(x)) return '–';
  const a = Math.abs(x);
  return String(a >= 100 ? Math.round(x) : a >= 10 ? Math.round(x * 10) / 10 : Math.round(x * 100) / 100);
}

export type ByTarget = Map<string, LoadResult[]>;

export function groupByTarget(results: LoadResult[]): ByTarget {
  const m: ByTarget = new Map();
  for (const r of results) {
    const list = m.get(r.name) ?? [];
    list.push(r);
    m.set(r.name, list);
  }
  return m;
}

export function med(by: ByTarget, target: string, get: Getter): number | null {
  const xs = (by.get(target) ?? []).map(get).filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
  return median(xs);
}

function cell(by: ByTarget, target: string, get: Getter): string {
  const xs = (by.get(target) ?? []).map(get).filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
  if (!xs.length) return '–';
  const m = median(xs);
  if (xs.length === 1) return fmt(m);
  return `${fmt(m)} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})`;
}

/** Ratio columns: [numerator target, denominator target]. */
export type RatioPair = [string, string];

export function metricsTable(by: ByTarget, order: string[], ratios: RatioPair[], rows: Row[] = ROWS): string {
  const targets = order.filter((t) => by.has(t));
  const pairs = ratios.filter(([a, b]) => by.has(a) && by.has(b));
  const head = ['Metric', ...targets, ...pairs.map(([a, b]) => `${a} ÷ ${b}`)];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const row of rows) {
    const cells = targets.map((t) => cell(by, t, row.get));
    if (cells.every((c) => c === '–')) continue;
    const rs = pairs.map(([a, b]) => {
      const x = med(by, a, row.get);
      const y = med(by, b, row.get);
      return x === null || y === null || y === 0 ? '–' : `${(Math.round((x / y) * 100) / 100).toFixed(2)}×`;
    });
    lines.push(`| ${[row.label, ...cells, ...rs].join(' | ')} |`);
  }
  return lines.join('\n');
}

interface Check {
  target: string;
  measured: string;
  status: 'met' | 'MISSED' | 'not measured';
}

function ratioCheck(by: ByTarget, label: string, a: string, b: string, get: Getter, min: number): Check {
  const x = med(by, a, get);
  const y = med(by, b, get);
  if (x === null || y === null || y === 0) return { target: label, measured: `${a} or ${b} not run`, status: 'not measured' };
  const r = x / y;
  return { target: label, measured: `${fmt(x)} vs ${fmt(y)} → ${r.toFixed(2)}×`, status: r >= min ? 'met' : 'MISSED' };
}

function noWorse(by: ByTarget, label: string, a: string, b: string, get: Getter): Check {
  const x = med(by, a, get);
  const y = med(by, b, get);
  if (x === null || y === null) return { target: label, measured: `${a} or ${b} not run`, status: 'not measured' };
  return { target: label, measured: `${fmt(x)} ms vs ${fmt(y)} ms`, status: x <= y ? 'met' : 'MISSED' };
}

/**
 * Not targets: how far the bare designs get against the same references in this run (node:http in,
 * undici out for absolute-URI; a plain `net` relay, and node:http's CONNECT, for CONNECT). A target above its ceiling cannot
 * be met by adding work to that design.
 */
export function ceilingChecks(by: ByTarget): string {
  const setup: Getter = (r) => su(r)?.conn_per_s;
  const k1: Getter = (r) => (r.http ? ht(r, '1k')?.req_per_s : undefined);
  const rows: [string, string, string, Getter][] = [
    ['absolute-URI 1 KiB req/s: bare node:http + undici vs squid', 'naive-undici', 'squid', k1],
    ['absolute-URI 1 KiB req/s: egressgate vs bare node:http + undici', 'egw-http', 'naive-undici', k1],
    ['CONNECT setups/s: bare Node relay (net server, no node:http) vs squid', 'naive-relay', 'squid', setup],
    ['CONNECT setups/s: naive Node proxy (node:http CONNECT) vs squid', 'naive-http', 'squid', setup],
    ['CONNECT setups/s: egressgate vs bare Node relay', 'egw-http', 'naive-relay', setup],
    ['absolute-URI 1 KiB req/s: two egressgate processes (experiment, bench/two-process.ts) vs squid', 'egw-http-2p', 'squid', k1],
  ];
  const lines = ['| Reference | Measured (medians) |', '|---|---|'];
  for (const [label, a, b, get] of rows) if (by.has(a)) lines.push(`| ${label} | ${ratioCheck(by, label, a, b, get, 0).measured} |`);
  return lines.join('\n');
}

/** The performance targets, evaluated on the medians of this run. */
export function targetChecks(by: ByTarget): string {
  const up: Getter = (r) => tp(r, 'up_1');
  const down: Getter = (r) => tp(r, 'down_1');
  const setup: Getter = (r) => su(r)?.conn_per_s;
  const p99: Getter = (r) => su(r)?.p99_ms;
  const k1: Getter = (r) => (r.http ? ht(r, '1k')?.req_per_s : undefined);
  const m1: Getter = (r) => (r.http ? ht(r, '1m')?.req_per_s : undefined);
  const checks: Check[] = [
    ratioCheck(by, '1 tunnel up, CONNECT ≥ 0.95× naive', 'egw-http', 'naive-http', up, 0.95),
    ratioCheck(by, '1 tunnel down, CONNECT ≥ 0.95× naive', 'egw-http', 'naive-http', down, 0.95),
    ratioCheck(by, '1 tunnel up, SOCKS5 ≥ 0.95× naive', 'egw-socks', 'naive-socks', up, 0.95),
    ratioCheck(by, '1 tunnel down, SOCKS5 ≥ 0.95× naive', 'egw-socks', 'naive-socks', down, 0.95),
    ratioCheck(by, '1 tunnel up, CONNECT ≥ 1.0× squid', 'egw-http', 'squid', up, 1),
    ratioCheck(by, '1 tunnel down, CONNECT ≥ 1.0× squid', 'egw-http', 'squid', down, 1),
    ratioCheck(by, 'CONNECT setups/s ≥ 1.0× squid', 'egw-http', 'squid', setup, 1),
    noWorse(by, 'CONNECT setup p99 ≤ squid', 'egw-http', 'squid', p99),
    ratioCheck(by, 'SOCKS5 setups/s ≥ 1.0× danted', 'egw-socks', 'danted', setup, 1),
    noWorse(by, 'SOCKS5 setup p99 ≤ danted', 'egw-socks', 'danted', p99),
    ratioCheck(by, 'absolute-URI 1 KiB req/s ≥ 1.2× squid', 'egw-http', 'squid', k1, 1.2),
    ratioCheck(by, 'absolute-URI 1 MiB req/s ≥ 2× squid', 'egw-http', 'squid', m1, 2),
  ];
  for (const t of ['egw-http', 'egw-socks']) {
    const runs = (by.get(t) ?? []).filter((r) => r.idle);
    const last = runs[0];
    const n = last ? idleMax(last) : undefined;
    const idle = n ? last?.idle?.[n] : undefined;
    if (!idle) {
      checks.push({ target: `${t}: RSS per idle tunnel ≤ 16 KiB`, measured: 'not run', status: 'not measured' });
      checks.push({ target: `${t}: 9,000 concurrent tunnels, none failed`, measured: 'not run', status: 'not measured' });
      continue;
    }
    const kib = idle.rss_KiB_per_tunnel ?? null;
    checks.push({
      target: `${t}: RSS per idle tunnel ≤ 16 KiB`,
      measured: `${fmt(kib)} KiB at N=${n}`,
      status: kib === null ? 'not measured' : kib <= 16 ? 'met' : 'MISSED',
    });
    const at9000 = last?.idle?.['9000'];
    checks.push({
      target: `${t}: 9,000 concurrent tunnels, none failed`,
      measured: at9000
        ? `${at9000.established}/9000 established, ${at9000.alive_after_hold} alive after hold, ${at9000.fail} failed`
        : `only N=${n} run (${idle.established}/${n} established, ${idle.alive_after_hold} alive)`,
      status: at9000 ? (at9000.all_ok ? 'met' : 'MISSED') : 'not measured',
    });
  }
  const lines = ['| Target | Measured (egressgate vs reference, medians) | Status |', '|---|---|---|'];
  for (const c of checks) lines.push(`| ${c.target} | ${c.measured} | ${c.status === 'MISSED' ? '**MISSED**' : c.status} |`);
  return lines.join('\n');
}

/** A phase's rate and its CPU split, for the budget table. */
interface PhaseOf {
  rate: (r: LoadResult) => number | undefined;
  cpu: (r: LoadResult) => { proxy: number | null; origin: number | null; gen: number } | undefined;
}

const SETUP_PHASE: PhaseOf = { rate: (r) => su(r)?.conn_per_s, cpu: (r) => su(r)?.cpu };
const K1_PHASE: PhaseOf = { rate: (r) => (r.http ? ht(r, '1k')?.req_per_s : undefined), cpu: (r) => (r.http ? ht(r, '1k')?.cpu : undefined) };

/**
 * What a rate target leaves the proxy on this machine, from this run's figures. Reaching `ratio` ×
 * the peer's rate, the origin and the load generator still spend per unit what they spent in the
 * peer's phase (µs of CPU per setup or request). So the proxy may spend at most 1 s / rate per unit
 * on one thread (a single event loop), and at most cores × 1 s / rate minus their share if it could
 * use every core. Beside those: what egressgate and the bare design spent per unit in this run.
 */
export function budgetChecks(by: ByTarget, cores: number): string {
  const rows: [string, string, number, string, PhaseOf][] = [
    ['absolute-URI 1 KiB ≥ 1.2× squid', 'squid', 1.2, 'naive-undici', K1_PHASE],
    ['CONNECT setups/s ≥ 1.0× squid', 'squid', 1, 'naive-relay', SETUP_PHASE],
    ['SOCKS5 setups/s ≥ 1.0× danted', 'danted', 1, 'naive-socks', SETUP_PHASE],
  ];
  const egwOf = (peer: string): string => (peer === 'danted' ? 'egw-socks' : 'egw-http');
  const perUnit =
    (phase: PhaseOf, pick: (c: NonNullable<ReturnType<PhaseOf['cpu']>>) => number | null): Getter =>
    (r) => {
      const rate = phase.rate(r);
      const c = phase.cpu(r);
      const pct = c ? pick(c) : null;
      return rate && pct !== null ? (pct * 10_000) / rate : undefined;
    };
  const lines = [
    `| Target | Rate needed | Origin + load generator, µs/unit | Proxy budget, one thread | Proxy budget, all ${cores} cores | egressgate spends | Bare design spends |`,
    '|---|---|---|---|---|---|---|',
  ];
  for (const [label, peer, ratio, bare, phase] of rows) {
    const peerRate = med(by, peer, phase.rate);
    const side = med(by, peer, perUnit(phase, (c) => (c.origin ?? 0) + c.gen));
    if (peerRate === null || side === null) {
      lines.push(`| ${label} | ${peer} not run | – | – | – | – | – |`);
      continue;
    }
    const need = ratio * peerRate;
    const oneThread = 1e6 / need;
    const allCores = (cores * 1e6) / need - side;
    const egw = med(by, egwOf(peer), perUnit(phase, (c) => c.proxy));
    const bareCost = med(by, bare, perUnit(phase, (c) => c.proxy));
    lines.push(`| ${label} | ${fmt(need)}/s | ${fmt(side)} | ≤ ${fmt(oneThread)} µs | ≤ ${fmt(allCores)} µs | ${fmt(egw)} µs | ${fmt(bareCost)} µs (${bare}) |`);
  }
  return lines.join('\n');
}
