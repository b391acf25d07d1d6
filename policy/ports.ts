/**
 * Port lists and ranges of allow entries: `443`, `"8000-8099"`, or a numeric string `"443"`.
 */

/** A compiled port matcher; `null` in an entry means any port. */
export interface PortMatcher {
  readonly singles: ReadonlySet<number>;
  /** The singles as an array when there are few: a short linear scan beats hashing. */
  readonly small: readonly number[] | null;
  /** Flat [lo, hi, lo, hi, …] inclusive pairs. */
  readonly ranges: readonly number[];
  readonly text: string;
}

/** Parses one port spec; returns [lo, hi] or an error message. */
export function parsePortSpec(spec: unknown): [number, number] | { error: string } {
  if (typeof spec === 'number') {
    if (!Number.isInteger(spec) || spec < 1 || spec > 65535) return { error: `port ${spec} is not an integer in 1-65535` };
    return [spec, spec];
  }
  if (typeof spec !== 'string') return { error: 'a port is a number or a "lo-hi" string' };
  const m = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$/.exec(spec);
  if (!m) return { error: `bad port "${spec}": use a number or "lo-hi"` };
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (lo < 1 || lo > 65535 || hi < 1 || hi > 65535) return { error: `bad port "${spec}": ports are 1-65535` };
  if (lo > hi) return { error: `bad port range "${spec}": start is after end` };
  return [lo, hi];
}

/** Compiles a validated port list; absent or empty-free list → matcher. Invalid specs are skipped. */
export function compilePorts(ports: ReadonlyArray<number | string> | undefined): PortMatcher | null {
  if (ports === undefined) return null;
  const singles = new Set<number>();
  const ranges: number[] = [];
  const text: string[] = [];
  for (const spec of ports) {
    const r = parsePortSpec(spec);
    if ('error' in r) continue;
    if (r[0] === r[1]) singles.add(r[0]);
    else ranges.push(r[0], r[1]);
    text.push(r[0] === r[1] ? String(r[0]) : `${r[0]}-${r[1]}`);
  }
  return { singles, small: singles.size <= 8 ? [...singles] : null, ranges, text: text.join(',') };
}

/** True when `port` is admitted by `m` (null = any port). */
export function portMatches(m: PortMatcher | null, port: number): boolean {
  if (m === null) return true;
  const small = m.small;
  if (small !== null) {
    for (let i = 0; i < small.length; i++) if (small[i] === port) return true;
  } else if (m.singles.has(port)) return true;
  const r = m.ranges;
  for (let i = 0; i < r.length; i += 2) if (port >= r[i]! && port <= r[i + 1]!) return true;
  return false;
}
