/**
 * `egressgate serve`: parse the flags, load the config (file, EGRESSGATE_CONFIG or the embedded
 * default), start the gateway (main.ts's startGateway), install the signal and fatal-error handlers,
 * then print the listening line. SIGHUP reloads the config and reopens the log files, SIGUSR2 only
 * reopens the log files; SIGTERM/SIGINT drain and exit 0; a fatal error records every live flow and exits 1.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { adminExposureWarning } from '../../admin/host-check.ts';
import { type RunningGateway, startGateway } from '../../main.ts';
import { defaultConfig } from '../../policy/config.ts';
import { parseHostPort } from '../../policy/config-schema.ts';
import { configFileFormat, loadConfig } from '../../policy/load-config.ts';
import type { Mode } from '../../policy/types.ts';
import { exitAfterDrain } from '../exit-after-drain.ts';
import { nodeFlagsWarning } from '../node-flags.ts';
import { BEARER_WHITESPACE_REASON, hasWhitespace } from './bearer-token.ts';
import { withoutRepeatedFlags } from './repeated-flag.ts';

const HELP = `usage: egressgate serve [--config FILE] [--mode monitor|enforce] [--http HOST:PORT]
                        [--socks HOST:PORT] [--admin HOST:PORT] [--redis URL]

Runs the HTTP forward proxy, the SOCKS5 gateway and the admin API. Port 0 = any free port.
Without --config (or EGRESSGATE_CONFIG) the embedded default policy is used: monitor mode,
loopback listeners, in-memory state. SIGHUP reloads the config file (an unchanged file keeps
the running policy) and reopens the flow and audit log files; SIGUSR2 only reopens the log files
(rotation); SIGTERM drains and exits 0.
`;

/** How long a fatal error leaves the gateway to record its flows before it exits anyway. */
const FATAL_EXIT_MS = 5000;
let isFatal = false;

/**
 * A bug that escaped every handler (an uncaught exception or unhandled rejection): node's own
 * handling would exit at once, and every live flow would go unrecorded. Instead: log it, close the
 * live flows (closeReason "gateway-error") so each has its record, flush, and exit 1 for the
 * supervisor to restart us — within FATAL_EXIT_MS, whatever state the process is in.
 */
function onFatal(gw: RunningGateway, err: unknown, origin: string): void {
  const stack = err instanceof Error ? (err.stack ?? err.message) : String(err);
  if (isFatal) {
    process.stderr.write(`egressgate: another fatal error while stopping (${origin}): ${stack}\n`);
    return;
  }
  isFatal = true;
  gw.ctx.log.error({ origin, err: stack }, 'fatal error: recording live flows and exiting');
  setTimeout(() => exitAfterDrain(1), FATAL_EXIT_MS);
  gw.drain(0, 'gateway-error').then(
    () => exitAfterDrain(1),
    () => exitAfterDrain(1),
  );
}

function ignoreStreamError(): void {}

/** `egressgate serve`. Returns -1 while serving (the process stays up until SIGTERM). */
export async function run(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = withoutRepeatedFlags(parseArgs({
      tokens: true,
      args: argv,
      options: {
        config: { type: 'string' },
        mode: { type: 'string' },
        http: { type: 'string' },
        socks: { type: 'string' },
        admin: { type: 'string' },
        redis: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    })));
  } catch (err) {
    process.stderr.write(`egressgate serve: ${(err as Error).message}\n${HELP}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const mode = values.mode as string | undefined;
  if (mode !== undefined && mode !== 'monitor' && mode !== 'enforce') {
    process.stderr.write(`egressgate serve: --mode must be monitor or enforce, not '${mode}'\n`);
    return 2;
  }
  for (const flag of ['http', 'socks', 'admin'] as const) {
    const v = values[flag];
    // The check listen.http/socks/admin get in the config: an empty host (all interfaces) and a port
    // past 65535 are refused here too, not left to the bind.
    const parsed = typeof v === 'string' ? parseHostPort(v) : null;
    if (parsed && 'error' in parsed) {
      process.stderr.write(`egressgate serve: --${flag}: ${parsed.error}\n`);
      return 2;
    }
  }
  // An empty value (`--config "$UNSET"`) is a mistake, not the flag left out: taken as absent, it ran
  // the embedded default policy (monitor mode, EGRESSGATE_CONFIG passed over) without a word.
  for (const flag of ['config', 'redis'] as const) {
    if (values[flag] === '') {
      process.stderr.write(`egressgate serve: --${flag}: empty value (an unset variable?); leave the flag out to mean ${flag === 'config' ? 'EGRESSGATE_CONFIG or the embedded default policy' : 'in-memory state'}\n`);
      return 2;
    }
  }
  if (values.redis !== undefined) {
    process.stderr.write('egressgate serve: --redis (shared state across replicas) is not available in this build; state stays in memory\n');
    return 2;
  }
  // A Bearer token is sent with no whitespace in it (admin/auth.ts reads `Bearer \S+`): a token with
  // any (a trailing newline from a secret file) authenticated no request, and as a token was set none
  // was generated, so the admin API answered 401 to everyone without a word. Never printed.
  const envToken = process.env.EGRESSGATE_ADMIN_TOKEN || null;
  if (envToken !== null && hasWhitespace(envToken)) {
    process.stderr.write(`egressgate: cannot start: EGRESSGATE_ADMIN_TOKEN has whitespace in it (a trailing newline from a file?): ${BEARER_WHITESPACE_REASON}\n`);
    return 1;
  }
  // 1. config
  const configPath = (values.config as string | undefined) ?? process.env.EGRESSGATE_CONFIG ?? null;
  let config = defaultConfig();
  let configText: string | null = null;
  if (configPath) {
    try {
      configText = await readFile(configPath, 'utf8');
    } catch (err) {
      process.stderr.write(`egressgate serve: cannot read ${configPath}: ${(err as Error).message}\n`);
      return 1;
    }
    const loaded = loadConfig(configText, { format: configFileFormat(configPath) });
    if (!loaded.ok) {
      for (const e of loaded.errors) process.stderr.write(`${configPath}: ${e.path || '(root)'}: ${e.message}\n`);
      return 1;
    }
    config = loaded.config;
  }
  let gw: RunningGateway;
  try {
    gw = await startGateway({
      config,
      configPath,
      configText,
      mode: mode as Mode | undefined,
      http: values.http as string | undefined,
      socks: values.socks as string | undefined,
      admin: values.admin as string | undefined,
      // Set but empty is unset: no token, so one is generated (and accepted).
      adminToken: envToken,
    });
  } catch (err) {
    // A start that failed half-way (the admin address taken, a TLS file unreadable) has bound some
    // listeners already, which would keep this process alive and proxying with no admin API, no
    // readiness and no listening line, and a supervisor's Restart=on-failure would never fire.
    process.stderr.write(`egressgate: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
  if (gw.generatedAdminToken) {
    process.stderr.write(`egressgate: no admin token configured; generated one for this run: ${gw.generatedAdminToken}\n`);
  }
  const flagsWarning = nodeFlagsWarning();
  if (flagsWarning) process.stderr.write(`egressgate: ${flagsWarning}\n`);
  const exposure = adminExposureWarning(gw.admin, gw.policy.current().config.admin.allowedHosts);
  if (exposure) process.stderr.write(`egressgate: ${exposure}\n`);
  // 5. signals, before the listening line
  process.on('SIGHUP', () => {
    void gw.reloadFromFile('SIGHUP');
    void gw.reopenLogs();
  });
  // Log rotation without touching the policy (SIGUSR1 is node's: it opens the inspector).
  process.on('SIGUSR2', () => {
    void gw.reopenLogs();
  });
  let stopSignals = 0;
  const stop = (signal: NodeJS.Signals): void => {
    // A second SIGTERM or SIGINT (an impatient supervisor, Ctrl-C twice) ends the grace period now;
    // the flows still live are recorded `shutdown` and the log flushed, as when the grace runs out.
    // Left to node's default, it killed the process mid-drain and those flows had no record.
    if (++stopSignals > 1) {
      gw.ctx.log.warn({ signal }, 'stop signal during the drain: ending the grace period now');
      void gw.drain(0, 'shutdown');
      return;
    }
    gw.drain().then(
      // A fatal error during the drain (onFatal) makes it a failure. Lookups the OS resolver still
      // has under way do not hold the exit up (exit-after-drain.ts).
      () => exitAfterDrain(isFatal ? 1 : 0),
      (err: unknown) => {
        process.stderr.write(`egressgate: drain failed: ${String(err)}\n`);
        exitAfterDrain(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // A closed stdout or stderr (a log shipper that went away) must not take the gateway down: the
  // flow log on stdout handles its own errors (flow-log.ts); other writes there are best effort.
  process.stdout.on('error', ignoreStreamError);
  process.stderr.on('error', ignoreStreamError);
  process.on('uncaughtException', (err, origin) => onFatal(gw, err, origin));
  // Last: whoever reads this line may signal us at once (SIGHUP before the handler was there killed us).
  process.stdout.write(
    `${JSON.stringify({ event: 'listening', http: gw.http, socks: gw.socks, admin: gw.admin, ...(gw.https ? { https: gw.https } : {}), mode: gw.policy.modeOverride() ?? gw.policy.current().config.mode, pid: process.pid })}\n`,
  );
  return -1;
}
