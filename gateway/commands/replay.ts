/**
 * `egressgate replay --config FILE INPUT…` (SPEC §2): the same policy and detectors on a virtual
 * clock over scenario scripts (YAML), directories of them, and flow logs (JSON lines). Prints the
 * alerts and a score table; exit 0 when every scenario is as expected, 1 otherwise or on an
 * unreadable or invalid policy (as `check` and `evaluate`), 2 on usage errors. `--against
 * OLD_CONFIG` lists the connect-time verdicts a policy change would turn.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { compilePolicy } from '../../policy/compile.ts';
import type { Config } from '../../policy/config.ts';
import { configFileFormat, loadConfig } from '../../policy/load-config.ts';
import type { ConnectFacts, Mode } from '../../policy/types.ts';
import { alertLines, scoreTable } from '../replay/report.ts';
import { formatAuthority } from '../protocol/authority.ts';
import type { ConnSpec } from '../replay/scenario.ts';
import { loadInputs, runSuite } from '../replay/suite.ts';
import { digitsValue } from './digits-flag.ts';
import { withoutRepeatedFlags } from './repeated-flag.ts';

export interface CommandIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const HELP = `usage: egressgate replay --config FILE [options] INPUT...

Runs the policy and the AN0081/AN0080 detectors on a virtual clock over
scenario scripts (YAML files or directories of them; format in
test/scenarios/README.md) and flow logs (JSON lines of flow records).
Prints the alerts, then for scenarios a table: expected, got, time to detect
(virtual), bytes past a kill budget, and totals.
Exit 0 when every scenario is as expected, 1 otherwise or on an unreadable or
invalid policy (--config, --against), 2 on usage errors.

options:
  -c, --config FILE        the policy (default: $EGRESSGATE_CONFIG)
      --against OLD_CONFIG also list connect-time verdicts the change would turn
      --mode monitor|enforce  override the policy's global mode
      --step-ms N          sweep interval of the virtual clock (default: detection.sampleIntervalMs)
      --single             only the with-allowlist run (skip no-allowlist and mixed runs)
  -q, --quiet              do not print alert lines
  -h, --help               this text
`;

async function readConfig(path: string): Promise<{ config: Config } | { error: string }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    return { error: `cannot read ${path}: ${(e as Error).message}` };
  }
  const r = loadConfig(text, { format: configFileFormat(path) });
  if (!r.ok) return { error: `${path} is invalid:\n${r.errors.map((e) => `  ${e.path}: ${e.message}`).join('\n')}` };
  return { config: r.config };
}

/** Connect-time verdicts that differ between two policies over the inputs' connections. */
export function policyImpact(newConfig: Config, oldConfig: Config, conns: readonly ConnSpec[]): string[] {
  const next = compilePolicy(newConfig, 2);
  const prev = compilePolicy(oldConfig, 1);
  const seen = new Set<string>();
  const lines: string[] = [];
  let total = 0;
  for (const c of conns) {
    const key = `${c.identity.host}|${c.identity.user}|${c.identity.roles?.join(',')}|${c.protocol}|${c.host}|${c.ip}|${c.port}`;
    if (seen.has(key)) continue;
    seen.add(key);
    total++;
    const facts = (roles: readonly string[]): ConnectFacts => ({
      protocol: c.protocol,
      clientIp: c.identity.clientIp,
      clientPort: 40000,
      identity: { user: c.identity.user, host: c.identity.host, roles, process: c.identity.process },
      destHost: c.host,
      destPort: c.port,
      destIp: c.ip,
    });
    const a = prev.decide(facts(c.identity.roles ?? prev.rolesFor(c.identity.user, c.identity.host)), c.startMs);
    const b = next.decide(facts(c.identity.roles ?? next.rolesFor(c.identity.user, c.identity.host)), c.startMs);
    if (a.verdict !== b.verdict || a.reason !== b.reason) {
      const who = `${c.identity.host ?? '-'}/${c.identity.user ?? '-'}`;
      lines.push(`  ${who} -> ${formatAuthority(c.host, c.port)} (${c.protocol}): ${a.verdict} (${a.reason}) -> ${b.verdict} (${b.reason})`);
    }
  }
  return [`policy change turns ${lines.length} of ${total} distinct connections:`, ...lines];
}

/** Runs the command; returns the exit code. */
export async function run(argv: string[], io: CommandIo = process): Promise<number> {
  let values: { config?: string; against?: string; mode?: string; 'step-ms'?: string; single?: boolean; quiet?: boolean; help?: boolean };
  let inputs: string[];
  try {
    ({ values, positionals: inputs } = withoutRepeatedFlags(parseArgs({
      tokens: true,
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        against: { type: 'string' },
        mode: { type: 'string' },
        'step-ms': { type: 'string' },
        single: { type: 'boolean' },
        quiet: { type: 'boolean', short: 'q' },
        help: { type: 'boolean', short: 'h' },
      },
    })));
  } catch (e) {
    io.stderr.write(`egressgate replay: ${(e as Error).message}\n${HELP}`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const configPath = values.config ?? process.env['EGRESSGATE_CONFIG'];
  if (!configPath) {
    io.stderr.write(`egressgate replay: --config FILE is required\n${HELP}`);
    return 2;
  }
  if (inputs.length === 0) {
    io.stderr.write(`egressgate replay: at least one INPUT (scenario file, directory or flow log) is required\n${HELP}`);
    return 2;
  }
  if (values.mode !== undefined && values.mode !== 'monitor' && values.mode !== 'enforce') {
    io.stderr.write(`egressgate replay: --mode must be monitor or enforce, got '${values.mode}'\n`);
    return 2;
  }
  let stepMs: number | undefined;
  if (values['step-ms'] !== undefined) {
    // Digits only, as agent's --interval-ms: Number() took "1e3", "0x64" and " 100".
    stepMs = digitsValue(values['step-ms']);
    if (!Number.isInteger(stepMs) || stepMs < 1) {
      io.stderr.write(`egressgate replay: --step-ms must be a positive integer, got '${values['step-ms']}'\n`);
      return 2;
    }
  }
  // An unreadable or invalid policy is exit 1, as `check` and `evaluate` answer it: not a usage error.
  const cfg = await readConfig(configPath);
  if ('error' in cfg) {
    io.stderr.write(`egressgate replay: ${cfg.error}\n`);
    return 1;
  }
  let loaded: Awaited<ReturnType<typeof loadInputs>>;
  try {
    loaded = await loadInputs(inputs);
  } catch (e) {
    io.stderr.write(`egressgate replay: ${(e as Error).message}\n`);
    return 2;
  }
  const result = runSuite(cfg.config, loaded.scenarios, loaded.logs, {
    ...(stepMs !== undefined ? { stepMs } : {}),
    modeOverride: (values.mode as Mode | undefined) ?? null,
    singleOnly: values.single === true,
  });
  if (!values.quiet) for (const l of alertLines(result.findings)) io.stdout.write(`${l}\n`);
  if (values.against) {
    const old = await readConfig(values.against);
    if ('error' in old) {
      io.stderr.write(`egressgate replay: ${old.error}\n`);
      return 1;
    }
    const conns = [...loaded.scenarios.flatMap((s) => s.connections), ...loaded.logs.flatMap((l) => [...l.connections, ...l.refused])];
    io.stdout.write(`\n${policyImpact(cfg.config, old.config, conns).join('\n')}\n`);
  }
  const scored = result.judgements.filter((j) => j.kind !== 'log');
  if (scored.length > 0) io.stdout.write(`\n${scoreTable(scored).join('\n')}\n`);
  return result.judgements.every((j) => j.ok) ? 0 : 1;
}
