/**
 * The scenario suite: load scenario files and flow logs, build each run's policy (base + the
 * scenario's allowlist additions), play it on the virtual clock and judge expected vs got.
 *
 * Runs (research §5.3): every scenario with its allowlist entry; every benign one again without
 * it; and all benign ones mixed concurrently with all their entries (keys must not bleed).
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { compilePolicy } from '../../policy/compile.ts';
import type { Config } from '../../policy/config.ts';
import { outcomeOfUnconnected } from '../../policy/detectors/index.ts';
import { severityLevel } from '../../policy/detectors/match.ts';
import { validateConfig } from '../../policy/load-config.ts';
import type { Mode, ProcessInfo, Protocol } from '../../policy/types.ts';
import { type ReplayFinding, type ReplayResult, replayConnections } from './driver.ts';
import { flowRecordFieldError } from './flow-record-fields.ts';
import { type ConnOutcome, type ConnSpec, type Expectation, type ExpectedAction, type Scenario, parseScenario } from './scenario.ts';

export type Variant = 'allowlist' | 'no-allowlist' | 'mixed' | 'flow-log';

export interface Judgement {
  readonly scenario: string;
  readonly kind: 'benign' | 'malicious' | 'log';
  readonly variant: Variant;
  readonly expected: string;
  readonly got: string;
  readonly strongest: ExpectedAction;
  readonly maxSeverity: string;
  readonly ok: boolean;
  readonly timeToDetectMs: number | null;
  readonly bytesPastBudget: number;
}

export interface FlowLog {
  readonly file: string;
  /** The connections the gateway let through (allow, would-block): replayed. */
  readonly connections: ConnSpec[];
  /**
   * The connections it refused at setup (verdict block): not replayed (they carried nothing), but
   * `--against` judges them too, since a policy change may let them through.
   */
  readonly refused: ConnSpec[];
}

const RANK: Record<ExpectedAction, number> = { none: 0, flag: 1, block: 2, kill: 3 };

/** Reads INPUT paths: scenario YAML files, directories of them, and flow logs (JSON lines). */
export async function loadInputs(paths: readonly string[]): Promise<{ scenarios: Scenario[]; logs: FlowLog[] }> {
  const scenarios: Scenario[] = [];
  const logs: FlowLog[] = [];
  const visit = async (p: string): Promise<void> => {
    const st = await stat(p);
    if (st.isDirectory()) {
      const names = (await readdir(p)).sort().filter((n) => /\.ya?ml$/.test(n) && n !== 'policy.yaml' && !n.startsWith('_'));
      // A directory with nothing to replay (empty, a typo'd path, a log directory) was judged as
      // nothing at all: no line, "turns 0 of 0" with --against, exit 0, read as "no change, no alert".
      if (names.length === 0) throw new Error(`${p}: no scenario file in this directory (*.yaml, *.yml; policy.yaml and _* skipped); name a flow log by its file`);
      for (const n of names) await visit(join(p, n));
      return;
    }
    const text = await readFile(p, 'utf8');
    if (isFlowLogInput(p, text)) logs.push({ file: p, ...parseFlowLog(text, p) });
    else {
      try {
        scenarios.push(parseScenario(text, p));
      } catch (e) {
        // The scenario's own path (`M08.connections[1].dest`) and the file it is in.
        const m = (e as Error).message;
        throw new Error(m.startsWith(p) ? m : `${p}: ${m}`);
      }
    }
  };
  for (const p of paths) await visit(p);
  return { scenarios, logs };
}

/**
 * Whether INPUT `path` is a flow log (JSON lines), not a scenario: its name ends in .jsonl, .ndjson,
 * .json or .log, or, unless it ends in .yaml/.yml, its first non-blank character opens a JSON object.
 * The content decides for the names a flow log gets once rotated (logrotate's `dateext`:
 * `flows.jsonl-20261206`; `flows.jsonl.1`) or captured (`serve > flows.out`, `kubectl logs`).
 */
export function isFlowLogInput(path: string, text: string): boolean {
  if (/\.(jsonl|ndjson|json|log)$/.test(path)) return true;
  if (/\.ya?ml$/.test(path)) return false;
  return /^\s*\{/.test(text);
}

/**
 * The closeReasons of the gateway's own refusals of a flow before any byte reached the destination:
 * a parent proxy refused or failed, no descriptor or local port for the dial (a flow it had admitted,
 * recorded verdict `allow`), no UDP relay socket for an association (recorded `block` since 0.1.0, as
 * a refusal before any judgement; `allow` in older logs). Each is a connection that never connected
 * (`unconnected`), whatever its recorded verdict. The drain, the flow log failing and a Via loop are
 * UNJUDGED, below.
 */
const GATEWAY_REFUSALS: ReadonlySet<string> = new Set(['upstream-proxy', 'out-of-descriptors', 'out-of-sockets', 'out-of-relay-ports', 'relay-error']);

/**
 * The closeReasons of the flows the gateway refuses before admission judges them (admission.ts steps
 * 1–3: a client without an address, the drain, a Via loop, the flow log failing), recorded verdict
 * `block` (`allow` in older logs): neither the policy nor quarantine nor a connect-time detector ever
 * saw them live, so the replay judges them no more (`unjudged`), whatever their recorded verdict.
 * Those the policy's limits refused with verdict `block` before step 8 (a login, the rate limit) are
 * apart (`refused`, not replayed).
 */
const UNJUDGED: ReadonlySet<string> = new Set(['bad-request', 'shutting-down', 'via-loop', 'flow-log-unavailable']);

const NOT_A_RECORD = 'not a flow record (startedAt, destination.host, destination.port)';

/**
 * SPEC §5 flow records (JSON lines) → connections; interim records are skipped, those refused at
 * setup (verdict block) are apart; refusals without an identity (auth-required) or a destination are
 * dropped, and so are the gateway's own `event` lines (`listening`, on a stdout the flow log shares).
 * A line that is not JSON, not an object, or a record with a field of the wrong type
 * (flow-record-fields.ts) throws `file:line: …`.
 */
export function parseFlowLog(text: string, file: string): { connections: ConnSpec[]; refused: ConnSpec[] } {
  const out: ConnSpec[] = [];
  const refused: ConnSpec[] = [];
  let n = 0;
  for (const line of text.split('\n')) {
    n++;
    if (!line.trim()) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      throw new Error(`${file}:${n}: not JSON`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error(`${file}:${n}: ${NOT_A_RECORD}`);
    const r = parsed as Record<string, unknown>;
    if (r['intermediate'] === true) continue;
    // A line of the gateway's own, no flow: `serve`'s `listening` line shares stdout with a flow log
    // at its default path "-" (`serve > flows.jsonl`, a pod's log). No flow record has `event`.
    if (typeof r['event'] === 'string' && r['startedAt'] === undefined) continue;
    const closeReason = typeof r['closeReason'] === 'string' ? r['closeReason'] : null;
    // The gateway's own refusals are told by their closeReason, the same in logs from before they
    // were recorded `block` and after: never `refused` by the policy (`--against` judges those).
    const isGatewayOwn = closeReason !== null && (UNJUDGED.has(closeReason) || GATEWAY_REFUSALS.has(closeReason));
    const isRefused = r['verdict'] === 'block' && !isGatewayOwn;
    if (isRefused && r['reason'] === 'auth-required') continue;
    const ident = (r['identity'] ?? {}) as { user?: string | null; host?: string | null; roles?: string[]; process?: ProcessInfo | null };
    const dest = (r['destination'] ?? {}) as { host?: string; ip?: string | null; port?: number };
    const client = (r['client'] ?? {}) as { ip?: string };
    const startMs = Date.parse(String(r['startedAt']));
    if (!Number.isFinite(startMs) || typeof dest.host !== 'string' || typeof dest.port !== 'number') {
      // A refusal before any destination was named (a SOCKS5 login, a malformed request) has none to judge.
      if (r['verdict'] === 'block') continue;
      throw new Error(`${file}:${n}: ${NOT_A_RECORD}`);
    }
    const wrong = flowRecordFieldError(r);
    if (wrong !== null) throw new Error(`${file}:${n}: not a flow record: ${wrong}`);
    // A failed attempt is what the gateway's engine counted (outcomeOfUnconnected, the one rule):
    // the destination failing the dial. The verdict is the replayed policy's (the driver applies it),
    // so the record's is not asked here. A flow that never reached the destination (`connected:
    // false`; in a log without the field, the gateway's own refusals past admission: a parent proxy
    // down, no descriptor, …) is no connection, as the engine folds it. Any other end (closed,
    // client-reset, idle-timeout, …) is replayed as a connection, whatever it carried; a name that
    // did not resolve as `dns-fail`. A destination's reset before any payload, connected or not, is
    // a failed attempt (isResetBeforeData), replayed as a dial that failed.
    const bytesOut = typeof r['bytesOut'] === 'number' ? r['bytesOut'] : 0;
    const bytesIn = typeof r['bytesIn'] === 'number' ? r['bytesIn'] : 0;
    const dial = outcomeOfUnconnected({
      verdict: 'allow',
      reason: null,
      closeReason,
      destination: { host: dest.host, ip: dest.ip ?? null, port: dest.port },
      bytesOut,
      bytesIn,
    });
    const outcome: ConnOutcome =
      closeReason !== null && UNJUDGED.has(closeReason)
        ? 'unjudged'
        : dial === 'refused'
          ? 'refused'
          : dial === 'failed'
            ? 'timeout'
            : closeReason === 'dns-failed'
              ? 'dns-fail'
              : r['connected'] === false || (closeReason !== null && GATEWAY_REFUSALS.has(closeReason))
                ? 'unconnected'
                : 'ok';
    (isRefused ? refused : out).push({
      scenario: `log:${file}`,
      identity: {
        name: ident.user ?? ident.host ?? client.ip ?? '-',
        host: ident.host ?? null,
        user: ident.user ?? null,
        // Roles are re-derived by the replayed policy: the recorded ones belong to the old one.
        roles: null,
        clientIp: client.ip ?? '0.0.0.0',
        process: ident.process ?? null,
      },
      startMs,
      durationMs: typeof r['durationMs'] === 'number' ? r['durationMs'] : 0,
      host: dest.host,
      ip: dest.ip ?? null,
      port: dest.port,
      protocol: (r['protocol'] ?? 'connect') as Protocol,
      bytesOut,
      bytesIn,
      outcome,
    });
  }
  const byStart = (a: ConnSpec, b: ConnSpec): number => a.startMs - b.startMs;
  return { connections: out.sort(byStart), refused: refused.sort(byStart) };
}

/** The base config with a scenario's allowlist additions, re-validated. */
export function configWith(base: Config, additions: readonly (Record<string, unknown> | null)[]): Config {
  const c = structuredClone(base) as Config;
  for (const a of additions) {
    if (!a) continue;
    const arr = <T>(k: string): T[] => (Array.isArray(a[k]) ? (a[k] as T[]) : []);
    c.approvedUploadDestinations.push(...arr<string>('approvedUploadDestinations'));
    c.exceptions.push(...arr<Config['exceptions'][number]>('exceptions'));
    c.expectedScanSources.push(...arr<Config['expectedScanSources'][number]>('expectedScanSources'));
    const roles = (a['roles'] ?? {}) as Record<string, { allow?: Config['roles'][string]['allow'] }>;
    for (const [name, r] of Object.entries(roles)) {
      // Own keys only, and defined rather than assigned: a role named "constructor" is not
      // Object's, and "__proto__" reaches validation (which refuses it) instead of the prototype.
      const cur = Object.hasOwn(c.roles, name) ? c.roles[name]! : { allow: [] };
      cur.allow = [...cur.allow, ...(r.allow ?? [])];
      Object.defineProperty(c.roles, name, { value: cur, enumerable: true, writable: true, configurable: true });
    }
  }
  const v = validateConfig(c);
  if (!v.ok) throw new Error(`allowlist additions make the policy invalid: ${v.errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
  return v.config;
}

/** Expected vs got for one scenario in one run. */
export function judge(
  scenario: string,
  kind: Judgement['kind'],
  variant: Variant,
  exp: Expectation | null,
  result: ReplayResult,
): Judgement {
  const fs = result.findings.filter((f) => f.scenario === scenario);
  const tally = result.tallies.get(scenario);
  let strongest: ExpectedAction = 'none';
  let maxSev = -1;
  for (const f of fs) {
    if (RANK[f.finding.action] > RANK[strongest]) strongest = f.finding.action;
    maxSev = Math.max(maxSev, severityLevel(f.finding.severity));
  }
  const top = fs.filter((f) => f.finding.action === strongest);
  const dets = [...new Set(top.map((f) => f.finding.detector))];
  let ok = true;
  let hit: ReplayFinding | undefined = top[0];
  if (exp) {
    ok = exp.actions.includes(strongest);
    if (ok && strongest !== 'none' && exp.detectors.length > 0 && !exp.actions.includes('none')) {
      hit = top.find((f) => exp.detectors.includes(f.finding.detector));
      ok = hit !== undefined;
    }
    if (ok && exp.maxSeverity !== null && maxSev > severityLevel(exp.maxSeverity)) ok = false;
  }
  const firstStart = tally?.firstStartMs ?? 0;
  const sevName = maxSev < 0 ? '-' : (['low', 'medium', 'high'][maxSev] ?? 'high');
  return {
    scenario,
    kind,
    variant,
    expected: exp ? describe(exp) : '-',
    got: strongest === 'none' ? 'none' : `${strongest} ${dets.join(',')}`,
    strongest,
    maxSeverity: sevName,
    ok,
    timeToDetectMs: strongest !== 'none' && hit ? hit.atMs - firstStart : null,
    bytesPastBudget: tally?.bytesPastBudget ?? 0,
  };
}

function describe(e: Expectation): string {
  const a = e.actions.join('|');
  const d = e.detectors.length > 0 && !e.actions.includes('none') ? ` ${e.detectors.join(',')}` : '';
  return `${a}${d}${e.maxSeverity ? ` ≤${e.maxSeverity}` : ''}`;
}

const WITHOUT_DEFAULT: Expectation = { actions: ['none', 'flag'], detectors: [], maxSeverity: null };

export interface SuiteOptions {
  readonly stepMs?: number;
  readonly modeOverride?: Mode | null;
  /** Skip the without-allowlist and mixed runs. */
  readonly singleOnly?: boolean;
  /** Which runs to do (default all three); flow logs always run. */
  readonly runs?: ReadonlyArray<'allowlist' | 'no-allowlist' | 'mixed'>;
}

export interface SuiteResult {
  readonly judgements: Judgement[];
  readonly findings: ReplayFinding[];
  readonly steps: number;
}

/** Runs every scenario (and flow log) through the three runs and judges them. */
export function runSuite(base: Config, scenarios: readonly Scenario[], logs: readonly FlowLog[], opts: SuiteOptions = {}): SuiteResult {
  const judgements: Judgement[] = [];
  const findings: ReplayFinding[] = [];
  let steps = 0;
  const play = (conns: readonly ConnSpec[], cfg: Config, known: readonly string[]): ReplayResult => {
    const r = replayConnections(conns, {
      snapshot: compilePolicy(cfg),
      known,
      ...(opts.stepMs !== undefined ? { stepMs: opts.stepMs } : {}),
      modeOverride: opts.modeOverride ?? null,
    });
    steps += r.steps;
    return r;
  };
  const runs = new Set(opts.singleOnly ? ['allowlist'] : (opts.runs ?? ['allowlist', 'no-allowlist', 'mixed']));
  for (const s of scenarios) {
    if (runs.has('allowlist')) {
      const r = play(s.connections, configWith(base, [s.allowlist]), s.known);
      findings.push(...r.findings);
      judgements.push(judge(s.id, s.kind, 'allowlist', s.expect, r));
    }
    if (s.kind === 'benign' && runs.has('no-allowlist')) {
      const r2 = play(s.connections, base, s.known);
      findings.push(...r2.findings.map((f) => ({ ...f, scenario: `${f.scenario} (no allowlist)` })));
      judgements.push(judge(s.id, s.kind, 'no-allowlist', s.withoutAllowlist ?? WITHOUT_DEFAULT, r2));
    }
  }
  const benign = scenarios.filter((s) => s.kind === 'benign');
  if (benign.length > 1 && runs.has('mixed')) {
    const conns = benign.flatMap((s) => s.connections).sort((a, b) => a.startMs - b.startMs);
    const r = play(conns, configWith(base, benign.map((s) => s.allowlist)), benign.flatMap((s) => s.known));
    findings.push(...r.findings.map((f) => ({ ...f, scenario: `${f.scenario} (mixed)` })));
    for (const s of benign) judgements.push(judge(s.id, s.kind, 'mixed', s.expect, r));
  }
  for (const log of logs) {
    if (log.connections.length === 0) continue;
    const r = play(log.connections, base, []);
    findings.push(...r.findings);
    judgements.push(judge(`log:${log.file}`, 'log', 'flow-log', null, r));
  }
  return { judgements, findings, steps };
}
