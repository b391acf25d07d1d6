/**
 * `egressgate hash-password` — prints a `passwordHash` for `identity.users[]`.
 *
 * The password comes from `--password` or, by default, from stdin (first line; a trailing newline
 * is not part of it), so it need not appear in shell history or `ps`. Output is one line:
 * `scrypt$N$r$p$saltB64$hashB64` (see gateway/identity/password-hash.ts for the format and why
 * N=16384, r=8, p=1 is the default). `--verify HASH` checks a password against a hash instead:
 * exit 0 on a match, 1 on a mismatch.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_SCRYPT_PARAMS, hashPassword, parsePasswordHash, verifyParsedHash } from '../identity/password-hash.ts';
import { withoutRepeatedFlags } from './repeated-flag.ts';

export interface CommandIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const HELP = `usage: egressgate hash-password [--password P] [--cost N] [--block-size R] [--parallelism P]
       egressgate hash-password --verify HASH [--password P]

Prints scrypt$N$r$p$saltB64$hashB64 for identity.users[].passwordHash.
The password is read from stdin (first line) unless --password is given.

options:
  --password P        the password (visible to other local users via ps; prefer stdin)
  --cost N            scrypt N, a power of two (default ${DEFAULT_SCRYPT_PARAMS.N})
  --block-size R      scrypt r (default ${DEFAULT_SCRYPT_PARAMS.r})
  --parallelism P     scrypt p (default ${DEFAULT_SCRYPT_PARAMS.p})
  --verify HASH       check the password against HASH: exit 0 if it matches, 1 if not
  -h, --help          this text
`;

const MAX_STDIN_BYTES = 64 * 1024;

/** Reads the password: everything up to the first newline (or EOF). */
async function readPassword(stdin: CommandIo['stdin']): Promise<string> {
  let text = '';
  for await (const chunk of stdin) {
    text += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
    if (text.length > MAX_STDIN_BYTES) throw new Error('password on stdin is longer than 64 KiB');
    // Stop at the first line on a terminal; piped input is read to its end.
    if (stdin.isTTY && text.includes('\n')) break;
  }
  const nl = text.indexOf('\n');
  const line = nl === -1 ? text : text.slice(0, nl);
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}

function intOption(v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  return /^[1-9]\d{0,9}$/.test(v) ? Number(v) : Number.NaN;
}

/** Runs the command; returns the exit code (0 ok, 1 verify mismatch, 2 usage error). */
export async function run(argv: string[], io: CommandIo = process): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = withoutRepeatedFlags(parseArgs({
      tokens: true,
      args: argv,
      options: {
        password: { type: 'string' },
        cost: { type: 'string' },
        'block-size': { type: 'string' },
        parallelism: { type: 'string' },
        verify: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    })));
  } catch (err) {
    io.stderr.write(`egressgate hash-password: ${(err as Error).message}\n${HELP}`);
    return 2;
  }
  if (values['help'] === true) {
    io.stdout.write(HELP);
    return 0;
  }

  const verify = values['verify'] as string | undefined;
  const parsedHash = verify === undefined ? null : parsePasswordHash(verify);
  if (parsedHash !== null && 'error' in parsedHash) {
    io.stderr.write(`egressgate hash-password: --verify: ${parsedHash.error}\n`);
    return 2;
  }

  const params = {
    N: intOption(values['cost'] as string | undefined, DEFAULT_SCRYPT_PARAMS.N),
    r: intOption(values['block-size'] as string | undefined, DEFAULT_SCRYPT_PARAMS.r),
    p: intOption(values['parallelism'] as string | undefined, DEFAULT_SCRYPT_PARAMS.p),
  };

  let password = values['password'] as string | undefined;
  if (password === undefined) {
    try {
      password = await readPassword(io.stdin);
    } catch (err) {
      io.stderr.write(`egressgate hash-password: ${(err as Error).message}\n`);
      return 2;
    }
  }
  if (password.length === 0) {
    io.stderr.write('egressgate hash-password: empty password (give it on stdin or with --password)\n');
    return 2;
  }

  if (parsedHash !== null) {
    const ok = await verifyParsedHash(password, parsedHash);
    io.stdout.write(ok ? 'match\n' : 'mismatch\n');
    return ok ? 0 : 1;
  }

  try {
    io.stdout.write(`${await hashPassword(password, params)}\n`);
  } catch (err) {
    io.stderr.write(`egressgate hash-password: bad scrypt parameters: ${(err as Error).message}\n`);
    return 2;
  }
  return 0;
}
