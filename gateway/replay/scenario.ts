/**
 * Scenario scripts for the replay harness (format documented in test/scenarios/README.md):
 * parse YAML into a validated `Scenario`, expand repeated connections into `ConnSpec`s with
 * absolute virtual times. Pure apart from the caller reading the file.
 */
import { isIP } from 'node:net';
import { parse as parseYaml } from 'yaml';
import type { ProcessInfo, Protocol } from '../../policy/types.ts';

export type ExpectedAction = 'none' | 'flag' | 'block' | 'kill';
/**
 * How a scripted connection ends. `unconnected` (flow logs only, no scenario keyword): the gateway
 * refused or ended it before any dial was answered, for a reason of its own (a parent proxy down, no
 * descriptor left, draining, the flow log failing, a Via loop): no connection, no failed attempt.
 * `unjudged` (flow logs only): one of those the gateway refused before admission judged it at all
 * (draining, a Via loop, the flow log failing, a malformed request: steps 3 and earlier), which the
 * replay does not judge either: no policy, no quarantine, no connect-time detector, nothing folded.
 */
export type ConnOutcome = 'ok' | 'refused' | 'timeout' | 'dns-fail' | 'unconnected' | 'unjudged';

export interface ScenarioIdentity {
  readonly name: string;
  readonly host: string | null;
  readonly user: string | null;
  readonly roles: readonly string[] | null;
  readonly clientIp: string;
  readonly process: ProcessInfo | null;
}

export interface ConnSpec {
  readonly scenario: string;
  readonly identity: ScenarioIdentity;
  readonly startMs: number;
  readonly durationMs: number;
  readonly host: string;
  readonly ip: string | null;
  readonly port: number;
  readonly protocol: Protocol;
  readonly bytesOut: number;
  readonly bytesIn: number;
  readonly outcome: ConnOutcome;
}

export interface Expectation {
  /** Acceptable strongest actions (`none` = no finding at all). */
  readonly actions: readonly ExpectedAction[];
  /** For flag/block/kill: the detectors that may carry it (empty = any). */
  readonly detectors: readonly string[];
  /** Highest severity allowed (benign: `low` with the allowlist entry). */
  readonly maxSeverity: 'low' | 'medium' | 'high' | null;
}

export interface Scenario {
  readonly id: string;
  readonly title: string;
  readonly kind: 'benign' | 'malicious';
  readonly file: string;
  readonly startMs: number;
  readonly known: readonly string[];
  readonly connections: readonly ConnSpec[];
  readonly expect: Expectation;
  readonly allowlist: Record<string, unknown> | null;
  readonly withoutAllowlist: Expectation | null;
}

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const UNITS_B: Record<string, number> = { b: 1, kb: 1000, mb: 1e6, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };

/** "90s", "5m", "1.5h", "250ms" or a number of seconds → ms. */
export function parseDuration(v: unknown, path: string): number {
  if (typeof v === 'number' && v >= 0) return v * 1000;
  const m = typeof v === 'string' ? /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(v.trim()) : null;
  if (!m) throw new Error(`${path}: expected a duration like 90s, 5m, 2h; got ${JSON.stringify(v)}`);
  return Math.round(Number(m[1]) * UNITS_MS[m[2]!]!);
}

/** "800MiB", "1.2GiB", "5KiB", "300kB" or a number of bytes. */
export function parseBytes(v: unknown, path: string): number {
  if (typeof v === 'number' && v >= 0) return Math.round(v);
  const m = typeof v === 'string' ? /^(\d+(?:\.\d+)?)\s*([kmg]i?b|b)$/i.exec(v.trim()) : null;
  if (!m) throw new Error(`${path}: expected a size like 800MiB, 5KiB; got ${JSON.stringify(v)}`);
  return Math.round(Number(m[1]) * UNITS_B[m[2]!.toLowerCase()]!);
}

/**
 * Placeholders in repeated connection fields: `{i}` is the 0-based repetition index, followed by
 * any chain of `%N`, `/N` (floor) and `+N`, applied left to right: `{i%1024+1}`, `{i/250%250}`.
 */
export function expand(template: string, i: number): string {
  return template.replace(/\{i((?:[%/+]\d+)*)\}/g, (_m, ops: string) => {
    let v = i;
    for (const m of ops.matchAll(/([%/+])(\d+)/g)) {
      const k = Number(m[2]);
      v = m[1] === '%' ? v % k : m[1] === '/' ? Math.floor(v / k) : v + k;
    }
    return String(v);
  });
}

function obj(v: unknown, path: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${path}: expected a mapping`);
  return v as Record<string, unknown>;
}

/** Refuses keys the format does not have: a typo (`actoin: kill`) must not fall back to a default. */
function onlyKeys(o: Record<string, unknown>, allowed: readonly string[], path: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new Error(`${path}.${k}: unknown key (allowed here: ${allowed.join(', ')})`);
  }
}

const PROTOCOLS: readonly Protocol[] = ['connect', 'http', 'socks5', 'socks5-udp'];

function count(v: unknown, dflt: number, min: number, path: string): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new Error(`${path}: expected an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  return v;
}

function str(v: unknown, path: string): string {
  if (typeof v !== 'string' || v.length === 0) throw new Error(`${path}: expected a string`);
  return v;
}

function strList(v: unknown, path: string): string[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  return list.map((x, i) => str(x, `${path}[${i}]`));
}

function parseProcess(v: unknown, path: string): ProcessInfo | null {
  if (v === undefined || v === null) return null;
  const p = obj(v, path);
  onlyKeys(p, ['pid', 'name', 'exe', 'cmdline', 'user', 'uid', 'loginuid', 'ppid', 'parentName', 'parentExe'], path);
  const num = (k: string): number | null => (typeof p[k] === 'number' ? (p[k] as number) : null);
  const s = (k: string): string | null => (typeof p[k] === 'string' ? (p[k] as string) : null);
  return {
    pid: num('pid') ?? 1000,
    name: str(p['name'], `${path}.name`),
    exe: s('exe'),
    cmdline: s('cmdline'),
    user: s('user'),
    uid: num('uid'),
    loginuid: num('loginuid'),
    ppid: num('ppid'),
    parentName: s('parentName'),
    parentExe: s('parentExe'),
    source: 'agent',
  };
}

function parseExpect(v: unknown, path: string): Expectation {
  const e = obj(v, path);
  onlyKeys(e, ['action', 'detectors', 'maxSeverity'], path);
  const actions = strList(e['action'], `${path}.action`) as ExpectedAction[];
  for (const a of actions) if (!['none', 'flag', 'block', 'kill'].includes(a)) throw new Error(`${path}.action: unknown action ${a}`);
  const sev = e['maxSeverity'];
  if (sev !== undefined && sev !== 'low' && sev !== 'medium' && sev !== 'high') throw new Error(`${path}.maxSeverity: low|medium|high`);
  return { actions: actions.length ? actions : ['none'], detectors: strList(e['detectors'], `${path}.detectors`), maxSeverity: sev ?? null };
}

/** A stable documentation-range address for a host name (replays need an address for every flow). */
function syntheticIp(host: string): string {
  if (isIP(host)) return host;
  let h = 0;
  for (let i = 0; i < host.length; i++) h = (h * 31 + host.charCodeAt(i)) >>> 0;
  return `198.51.${(h >>> 8) % 100}.${(h % 250) + 1}`;
}

/** Parses one scenario document; throws with a path on bad input. */
export function parseScenario(text: string, file: string): Scenario {
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (e) {
    throw new Error(`${file}: not YAML: ${(e as Error).message.split('\n')[0]?.replace(/:$/, '')}`);
  }
  const doc = obj(parsed, file);
  const id = str(doc['id'], `${file}: id`);
  onlyKeys(doc, ['id', 'title', 'kind', 'start', 'known', 'identities', 'connections', 'expect', 'allowlist', 'withoutAllowlist'], id);
  const kind = doc['kind'];
  if (kind !== 'benign' && kind !== 'malicious') throw new Error(`${id}.kind: benign|malicious`);
  const startMs = Date.parse(str(doc['start'], `${id}.start`));
  if (!Number.isFinite(startMs)) throw new Error(`${id}.start: not an ISO 8601 time`);
  const idents = new Map<string, ScenarioIdentity>();
  for (const [name, raw] of Object.entries(obj(doc['identities'], `${id}.identities`))) {
    const r = obj(raw, `${id}.identities.${name}`);
    onlyKeys(r, ['host', 'user', 'roles', 'clientIp', 'process'], `${id}.identities.${name}`);
    idents.set(name, {
      name,
      host: typeof r['host'] === 'string' ? r['host'] : null,
      user: typeof r['user'] === 'string' ? r['user'] : null,
      roles: Array.isArray(r['roles']) ? strList(r['roles'], `${id}.identities.${name}.roles`) : null,
      clientIp: typeof r['clientIp'] === 'string' ? r['clientIp'] : `10.99.${idents.size}.${(id.length * 7) % 250}`,
      process: parseProcess(r['process'], `${id}.identities.${name}.process`),
    });
  }
  const conns: ConnSpec[] = [];
  const list = doc['connections'];
  if (!Array.isArray(list) || list.length === 0) throw new Error(`${id}.connections: expected a non-empty list`);
  list.forEach((raw, ci) => {
    const p = `${id}.connections[${ci}]`;
    const c = obj(raw, p);
    onlyKeys(c, ['identity', 'at', 'dest', 'ip', 'protocol', 'duration', 'bytesOut', 'bytesIn', 'outcome', 'repeat', 'every', 'altOutcome', 'altEvery'], p);
    const who = idents.get(str(c['identity'], `${p}.identity`));
    if (!who) throw new Error(`${p}.identity: unknown identity ${String(c['identity'])}`);
    const repeat = count(c['repeat'], 1, 1, `${p}.repeat`);
    const every = c['every'] === undefined ? 0 : parseDuration(c['every'], `${p}.every`);
    const at = c['at'] === undefined ? 0 : parseDuration(c['at'], `${p}.at`);
    const duration = c['duration'] === undefined ? 1000 : parseDuration(c['duration'], `${p}.duration`);
    const out = c['bytesOut'] === undefined ? 0 : parseBytes(c['bytesOut'], `${p}.bytesOut`);
    const inn = c['bytesIn'] === undefined ? 0 : parseBytes(c['bytesIn'], `${p}.bytesIn`);
    const outcome = (c['outcome'] ?? 'ok') as ConnOutcome;
    if (!['ok', 'refused', 'timeout', 'dns-fail'].includes(outcome)) throw new Error(`${p}.outcome: ok|refused|timeout|dns-fail`);
    const alt = c['altOutcome'] as ConnOutcome | undefined;
    if (alt !== undefined && !['ok', 'refused', 'timeout', 'dns-fail'].includes(alt)) throw new Error(`${p}.altOutcome: ok|refused|timeout|dns-fail`);
    const altEvery = count(c['altEvery'], 0, 1, `${p}.altEvery`);
    const protocol = (c['protocol'] ?? 'connect') as Protocol;
    if (!PROTOCOLS.includes(protocol)) throw new Error(`${p}.protocol: ${PROTOCOLS.join('|')}, got ${JSON.stringify(c['protocol'])}`);
    const destT = str(c['dest'], `${p}.dest`);
    const ipT = typeof c['ip'] === 'string' ? c['ip'] : null;
    for (let i = 0; i < repeat; i++) {
      const dest = expand(destT, i);
      const colon = dest.lastIndexOf(':');
      const host = dest.slice(0, colon).toLowerCase();
      const port = Number(dest.slice(colon + 1));
      if (colon <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`${p}.dest: expected host:port, got ${dest}`);
      const oc = alt && altEvery > 0 && i % altEvery === altEvery - 1 ? alt : outcome;
      conns.push({
        scenario: id,
        identity: who,
        startMs: startMs + at + i * every,
        durationMs: oc === 'ok' ? duration : 0,
        host,
        ip: oc === 'dns-fail' ? null : ipT ? expand(ipT, i) : syntheticIp(host),
        port,
        protocol,
        bytesOut: oc === 'ok' ? out : 0,
        bytesIn: oc === 'ok' ? inn : 0,
        outcome: oc,
      });
    }
  });
  conns.sort((a, b) => a.startMs - b.startMs);
  return {
    id,
    title: typeof doc['title'] === 'string' ? doc['title'] : id,
    kind,
    file,
    startMs,
    known: strList(doc['known'], `${id}.known`),
    connections: conns,
    expect: parseExpect(doc['expect'] ?? { action: 'none' }, `${id}.expect`),
    allowlist: doc['allowlist'] ? obj(doc['allowlist'], `${id}.allowlist`) : null,
    withoutAllowlist: doc['withoutAllowlist'] ? parseExpect(doc['withoutAllowlist'], `${id}.withoutAllowlist`) : null,
  };
}
