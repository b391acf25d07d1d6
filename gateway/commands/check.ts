/**
 * `egressgate check --config FILE` — validates a policy file with the same function the gateway
 * uses at start-up and on reload, and the files `tls` names as the HTTPS listener reads them. Every
 * error goes to stderr as `path: message` (exit 1); a valid file prints a one-line summary on
 * stdout (exit 0). Usage errors exit 2. With EGRESSGATE_ADMIN_TOKEN set, an entry repeating it is
 * an error too, as `serve` and a reload with that environment refuse it.
 */
import { parseArgs } from 'node:util';
import { repeatsOutsideToken, tokenDigest } from '../../admin/auth.ts';
import type { Config } from '../../policy/config.ts';
import { type LoadResult, loadConfigFile } from '../../policy/load-config.ts';
import { readTlsFiles } from '../listeners/tls-files.ts';
import { withoutRepeatedFlags } from './repeated-flag.ts';

export interface CommandIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const HELP = `usage: egressgate check --config FILE [--json]

Validates a policy file (YAML, or JSON when FILE ends in .json),
and the certificate and key files its tls names.
Prints each error as "path: message" on stderr and exits 1,
or prints a one-line summary on stdout and exits 0.

options:
  -c, --config FILE   the policy file (default: $EGRESSGATE_CONFIG)
      --json          print the result as one JSON object on stdout
  -h, --help          this text

With $EGRESSGATE_ADMIN_TOKEN set, an entry with that token is an error
(serve and a reload refuse it).
`;

/** One line describing a valid config: roles, allow entries, modes, identities. */
export function summarize(c: Config): string {
  const roles = Object.entries(c.roles);
  const entries = roles.reduce((n, [, r]) => n + r.allow.length, 0);
  const overrides = roles.filter(([, r]) => r.mode !== undefined && r.mode !== c.mode).map(([name, r]) => `${name}=${r.mode}`);
  const parts = [
    `mode ${c.mode}${overrides.length ? ` (role overrides: ${overrides.join(', ')})` : ''}`,
    `${roles.length} role${roles.length === 1 ? '' : 's'}`,
    `${entries} allow entr${entries === 1 ? 'y' : 'ies'}`,
    `${c.identity.users.length} user${c.identity.users.length === 1 ? '' : 's'}`,
    `${c.identity.hosts.length} host${c.identity.hosts.length === 1 ? '' : 's'}`,
    `defaultRoles [${c.defaultRoles.join(', ')}]`,
    `privateRanges ${c.deny.privateRanges ? 'denied' : 'allowed'}`,
  ];
  return `ok: ${parts.join(', ')}`;
}

/** Runs the command; returns the exit code (0 valid, 1 invalid, 2 usage error). */
export async function run(argv: string[], io: CommandIo = process): Promise<number> {
  let values: { config?: string; json?: boolean; help?: boolean };
  try {
    ({ values } = withoutRepeatedFlags(parseArgs({
      tokens: true,
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    })));
  } catch (e) {
    io.stderr.write(`egressgate check: ${(e as Error).message}\n${HELP}`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const file = values.config ?? process.env['EGRESSGATE_CONFIG'];
  if (!file) {
    io.stderr.write(`egressgate check: --config FILE is required\n${HELP}`);
    return 2;
  }
  const loaded = await loadConfigFile(file);
  // As serve reads it (`|| null`): an empty value sets no token.
  const envToken = process.env['EGRESSGATE_ADMIN_TOKEN'] || null;
  const repeated = loaded.ok && envToken ? repeatsOutsideToken(loaded.config, [{ label: 'EGRESSGATE_ADMIN_TOKEN', digest: tokenDigest(envToken) }]) : [];
  // The files `tls` names, checked as serve checks them at start and on every reload.
  const files = loaded.ok && repeated.length === 0 && loaded.config.tls ? await readTlsFiles(loaded.config.tls) : null;
  const r: LoadResult = repeated.length > 0 ? { ok: false, errors: repeated } : files && !files.ok ? { ok: false, errors: files.errors } : loaded;
  if (values.json) {
    io.stdout.write(`${JSON.stringify(r.ok ? { ok: true, file, summary: summarize(r.config) } : { ok: false, file, errors: r.errors })}\n`);
    return r.ok ? 0 : 1;
  }
  if (!r.ok) {
    for (const e of r.errors) io.stderr.write(`${e.path}: ${e.message}\n`);
    io.stderr.write(`${file}: ${r.errors.length} error${r.errors.length === 1 ? '' : 's'}\n`);
    return 1;
  }
  io.stdout.write(`${summarize(r.config)}\n`);
  return 0;
}
