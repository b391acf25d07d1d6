/**
 * Process and machine metrics read from /proc (Linux only): CPU ticks and memory of a process tree,
 * whole-machine busy ticks. Used by the load generator to charge CPU and memory to the proxy.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** getconf CLK_TCK on Linux x86-64/arm64. */
export const CLK_TCK = 100;

function statFields(pid: number): string[] | null {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return st.slice(st.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Direct children of `pid` (scan of /proc). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const f = statFields(Number(d));
    if (f && Number(f[1]) === pid) out.push(Number(d));
  }
  return out;
}

/** `pid` and all its descendants (breadth first, bounded to 5,000 processes). */
export function processTree(pid: number): number[] {
  if (!pid) return [];
  const all = [pid];
  const queue = [pid];
  while (queue.length > 0 && all.length < 5000) {
    const p = queue.shift() as number;
    for (const c of childPids(p)) {
      all.push(c);
      queue.push(c);
    }
  }
  return all;
}

/** utime+stime of the processes; the first also counts its reaped children (forking servers). */
export function cpuTicks(pids: readonly number[]): number {
  let ticks = 0;
  pids.forEach((p, i) => {
    const f = statFields(p);
    if (!f) return;
    ticks += Number(f[11]) + Number(f[12]);
    if (i === 0) ticks += Number(f[13]) + Number(f[14]);
  });
  return ticks;
}

export interface MemoryKiB {
  rssKiB: number;
  pssKiB: number;
  procs: number;
}

/** VmRSS and Pss (smaps_rollup) summed over the processes. */
export function memoryKiB(pids: readonly number[]): MemoryKiB {
  let rssKiB = 0;
  let pssKiB = 0;
  let procs = 0;
  for (const p of pids) {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'latin1');
      rssKiB += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      procs++;
      const rollup = readFileSync(`/proc/${p}/smaps_rollup`, 'latin1');
      pssKiB += Number(/\nPss:\s+(\d+)/.exec(rollup)?.[1] ?? 0);
    } catch {
      // process exited between the scan and the read
    }
  }
  return { rssKiB, pssKiB, procs };
}

/** Whole machine [busy, total] ticks from the first line of /proc/stat. */
export function machineTicks(): [number, number] {
  const first = readFileSync('/proc/stat', 'latin1').split('\n')[0] ?? '';
  const f = first.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((x, y) => x + y, 0);
  return [total - (f[3] ?? 0) - (f[4] ?? 0), total];
}
