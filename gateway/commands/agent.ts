/**
 * `egressgate agent` — the Linux endpoint agent (SPEC §2, §7).
 *
 *   egressgate agent --gateway URL --token TOKEN [--interval-ms N] [--host NAME]
 *                    [--gateway-ports 3128,1080] [--gateway-host H[,H…]] [--udp-relay-ports LO-HI] [--once]
 *
 * The token may also come from `EGRESSGATE_AGENT_TOKEN` or `--token-file`, so it need not appear
 * in /proc/PID/cmdline where every local user can read it.
 */

import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent } from '../../agent/agent.ts';
import { BEARER_WHITESPACE_REASON, hasWhitespace } from './bearer-token.ts';
import { digitsValue } from './digits-flag.ts';
import { withoutRepeatedFlags } from './repeated-flag.ts';

const USAGE = `Usage: egressgate agent --gateway URL --token TOKEN [options]

Reports which local process owns each connection to the gateway (POST /v1/agents/reports).

Options:
  --gateway URL           admin API base URL of the gateway, e.g. http://10.0.0.5:9180 (required)
  --token TOKEN           agent token (or EGRESSGATE_AGENT_TOKEN, or --token-file FILE)
  --token-file FILE       read the token from FILE
  --interval-ms N         time between passes, 50..3600000 (default 1000)
  --host NAME             host name to report as (default: this machine's host name)
  --gateway-ports LIST    gateway listener ports, comma-separated (default 3128,1080)
  --gateway-host LIST     addresses/names of the proxy listeners if not the --gateway host
  --udp-relay-ports LO-HI ports the gateway's SOCKS5 UDP relays get: its limits.udpRelayPorts,
                          else its host's ephemeral range; UDP sockets to the gateway on other
                          ports are not reported. Default: the range the gateway's report
                          answers name, 32768-60999 until one does or when it names none
  --once                  one pass, send, exit (0 = delivered, 1 = not delivered); with nothing
                          to send it asks the gateway whether it takes this agent's reports
  -h, --help              this text
`;

class UsageError extends Error {}

function parsePorts(s: string): number[] {
  const ports = s.split(',').map((p) => p.trim());
  const out: number[] = [];
  for (const p of ports) {
    const n = Number(p);
    if (!/^\d+$/.test(p) || n < 1 || n > 65535) throw new UsageError(`--gateway-ports: bad port "${p}"`);
    out.push(n);
  }
  return out;
}

function parsePortRange(s: string): [number, number] {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(s.trim());
  const lo = Number(m?.[1]);
  const hi = Number(m?.[2]);
  if (!m || lo < 1 || hi > 65535 || lo > hi) throw new UsageError(`--udp-relay-ports: want LO-HI within 1-65535, got "${s}"`);
  return [lo, hi];
}

interface AgentArgs {
  gateway: string;
  token: string;
  intervalMs: number;
  host: string;
  ports: number[];
  gatewayHosts: string[] | null;
  udpRelayPorts: [number, number] | null;
  isOnce: boolean;
}

async function parse(argv: string[]): Promise<AgentArgs | 'help'> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = withoutRepeatedFlags(parseArgs({
      tokens: true,
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        gateway: { type: 'string' },
        token: { type: 'string' },
        'token-file': { type: 'string' },
        'interval-ms': { type: 'string' },
        host: { type: 'string' },
        'gateway-ports': { type: 'string' },
        'gateway-host': { type: 'string' },
        'udp-relay-ports': { type: 'string' },
        once: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    })).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values['help']) return 'help';
  const gateway = values['gateway'];
  if (typeof gateway !== 'string') throw new UsageError('--gateway URL is required');
  let url: URL;
  try {
    url = new URL(gateway);
  } catch {
    throw new UsageError(`--gateway: not a URL: "${gateway}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError('--gateway: must be an http:// or https:// URL');
  let token = typeof values['token'] === 'string' ? values['token'] : process.env['EGRESSGATE_AGENT_TOKEN'];
  const tokenFile = values['token-file'];
  // Two tokens on one command line: the file's was used without a word, the other dropped.
  if (typeof tokenFile === 'string' && typeof values['token'] === 'string') throw new UsageError('--token and --token-file both given: give one');
  if (typeof tokenFile === 'string') {
    try {
      token = (await readFile(tokenFile, 'utf8')).trim();
    } catch (err) {
      throw new UsageError(`--token-file: ${(err as Error).message}`);
    }
  }
  if (!token) throw new UsageError('--token TOKEN (or EGRESSGATE_AGENT_TOKEN, or --token-file) is required');
  // Whitespace at its ends is dropped on the way (the header value is trimmed; the admin API takes
  // `Bearer[ \t]+` and a trailing `[ \t]*`), so a trailing newline from a secret file authenticates.
  // Inside it, none could: every report was refused 401 (a newline: every POST failed, the error
  // printing the token). Refused here, never printed, as serve refuses such an admin token.
  if (hasWhitespace(token.trim())) {
    const from = typeof tokenFile === 'string' ? '--token-file' : typeof values['token'] === 'string' ? '--token' : 'EGRESSGATE_AGENT_TOKEN';
    throw new UsageError(`${from}: the token has whitespace inside it: ${BEARER_WHITESPACE_REASON}`);
  }
  const intervalRaw = values['interval-ms'];
  // Digits only, as --gateway-ports' ports: Number() took "1e3", "0x64" and " 100" (and "" as 0).
  const intervalMs = typeof intervalRaw === 'string' ? digitsValue(intervalRaw) : 1000;
  if (!Number.isInteger(intervalMs) || intervalMs < 50 || intervalMs > 3_600_000) {
    throw new UsageError(`--interval-ms: must be an integer in 50..3600000, got "${intervalRaw}"`);
  }
  const host = typeof values['host'] === 'string' ? values['host'] : hostname();
  if (host.length === 0 || host.length > 253) throw new UsageError('--host: must be 1..253 characters');
  const portsRaw = values['gateway-ports'];
  const ports = parsePorts(typeof portsRaw === 'string' ? portsRaw : '3128,1080');
  const gh = values['gateway-host'];
  const gatewayHosts = typeof gh === 'string' ? gh.split(',').map((h) => h.trim()).filter((h) => h.length > 0) : null;
  // A list that names no host (`--gateway-host "$PROXY_HOSTS"` with the variable unset) watched no
  // address at all: every pass found 0 sockets, reported nothing and --once said delivered, exit 0.
  if (gatewayHosts !== null && gatewayHosts.length === 0) {
    throw new UsageError(`--gateway-host: no host in ${JSON.stringify(gh)} (an unset variable?); leave the flag out to mean the --gateway host`);
  }
  const relayRaw = values['udp-relay-ports'];
  const udpRelayPorts = typeof relayRaw === 'string' ? parsePortRange(relayRaw) : null;
  return { gateway: url.toString(), token, intervalMs, host, ports, gatewayHosts, udpRelayPorts, isOnce: values['once'] === true };
}

/** Entry point for `egressgate agent`; resolves to the process exit code (0 ok, 1 failure, 2 usage). */
export async function run(argv: string[]): Promise<number> {
  let args: AgentArgs | 'help';
  try {
    args = await parse(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`egressgate agent: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  if (args === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  const agent = new Agent({
    gatewayUrl: args.gateway,
    token: args.token,
    host: args.host,
    intervalMs: args.intervalMs,
    gatewayPorts: args.ports,
    ...(args.gatewayHosts ? { gatewayHosts: args.gatewayHosts } : {}),
    ...(args.udpRelayPorts ? { udpRelayPorts: args.udpRelayPorts } : {}),
  });

  if (args.isOnce) {
    // Two passes: a socket table read can miss an entry while other sockets churn; the second
    // pass only adds what the first missed (reported sockets are remembered).
    const relayRange = agent.udpRelayRange.join('-');
    const first = await agent.collect();
    const second = await agent.collect();
    const pass = {
      sockets: Math.max(first.sockets, second.sockets),
      queued: first.queued + second.queued,
      unattributed: second.unattributed,
    };
    // A few quick retries so a one-shot run from cron survives a gateway blip.
    for (let attempt = 0; attempt < 4 && agent.queued > 0; attempt++) {
      if (await agent.flush()) break;
      await sleep(Math.min(agent.backoffRemainingMs(), 2000));
    }
    // Nothing to send: ask the gateway anyway, so a wrong token or URL is not reported as delivered.
    const check = agent.totals.posts === 0 ? await agent.check() : null;
    // The gateway's answer named another relay range (limits.udpRelayPorts, no --udp-relay-ports
    // given): the passes above looked for UDP sockets on the old one, so look again on it.
    if (agent.udpRelayRange.join('-') !== relayRange) {
      const again = await agent.collect();
      pass.sockets = Math.max(pass.sockets, again.sockets);
      pass.queued += again.queued;
      for (let attempt = 0; attempt < 4 && agent.queued > 0; attempt++) {
        if (await agent.flush()) break;
        await sleep(Math.min(agent.backoffRemainingMs(), 2000));
      }
    }
    const isAccepted = check === null || (check.status >= 200 && check.status < 300);
    const isDelivered = agent.queued === 0 && agent.totals.dropped === 0 && isAccepted;
    const checked = check === null ? {} : { gatewayStatus: check.status, ...(check.error === null ? {} : { error: check.error }) };
    process.stdout.write(`${JSON.stringify({ event: 'agent-pass', host: args.host, ...pass, sent: agent.totals.sent, delivered: isDelivered, ...checked })}\n`);
    return isDelivered ? 0 : 1;
  }

  const controller = new AbortController();
  const stop = (): void => controller.abort();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.stdout.write(`${JSON.stringify({ event: 'agent-started', host: args.host, gateway: args.gateway, intervalMs: args.intervalMs })}\n`);
  try {
    await agent.run(controller.signal);
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
  }
  process.stdout.write(`${JSON.stringify({ event: 'agent-stopped', ...agent.totals })}\n`);
  return 0;
}
