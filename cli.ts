/**
 * egressgate command line: one module per subcommand, loaded on demand so `check` never pays for
 * the data plane. Every command exports `run(argv): Promise<number>` (the exit code).
 */
import { applyV8Defaults } from './gateway/node-flags.ts';

const COMMANDS: Record<string, { summary: string; load: () => Promise<{ run: (argv: string[]) => Promise<number> }> }> = {
  serve: { summary: 'run the gateway (HTTP proxy, SOCKS5, admin API)', load: () => import('./gateway/commands/serve.ts') },
  check: { summary: 'validate a policy file', load: () => import('./gateway/commands/check.ts') },
  evaluate: { summary: 'the verdict a new connection would get', load: () => import('./gateway/commands/evaluate.ts') },
  agent: { summary: 'the endpoint agent (process attribution reports)', load: () => import('./gateway/commands/agent.ts') },
  replay: { summary: 'run policy and detectors over recorded flows or scenarios', load: () => import('./gateway/commands/replay.ts') },
  'hash-password': { summary: 'hash a proxy user password (scrypt)', load: () => import('./gateway/commands/hash-password.ts') },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(14)} ${c.summary}`);
  return `usage: egressgate <command> [options]\n\ncommands:\n${lines.join('\n')}\n\n'egressgate <command> --help' for a command's options.\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  // Asked for (--help): stdout, exit 0. No command at all is a usage error: stderr, exit 2, as every
  // command's own usage errors (a script's `egressgate $CMD` with CMD unset must not pass usage off as output).
  if (name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return 0;
  }
  if (!name) {
    process.stderr.write(`egressgate: a command is required\n${usage()}`);
    return 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`egressgate: unknown command '${name}'\n${usage()}`);
    return 2;
  }
  if (name === 'serve') applyV8Defaults();
  const mod = await command.load();
  return mod.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    // serve keeps the process alive itself; the other commands exit with their code.
    if (code !== -1) process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`egressgate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
