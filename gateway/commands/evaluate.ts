/**
 * `egressgate evaluate --config FILE --dest HOST:PORT [...]` — the verdict a new connection would
 * get under a policy file, with the rule that matched or why none did, then the connect-time
 * detectors admission runs (proxyware, scanner and exfil tools, lineage: gateway/detection/dry-run.ts)
 * with the policy's detector settings, as JSON on stdout. There is no running gateway here: no
 * quarantine, fan-out windows, first-seen history or recent detector firings (`detectors.state`
 * "none" says so).
 *
 * No network: the destination address comes from `--ip`, an IP literal in `--dest`, the policy's
 * `resolver.hosts`, or for a name under `localhost` 127.0.0.1 (as the gateway answers it, no DNS);
 * otherwise `destIp` is null and the output says deny ranges and CIDR
 * entries were not checked. With identity.requireAuth on, a connection without --user is refused
 * auth-required, as the gateway refuses one that did not log in. Exit 0 with any verdict, 1 on an invalid policy, 2 on usage errors.
 */
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { parseIp } from '../../policy/cidr.ts';
import { compilePolicy } from '../../policy/compile.ts';
import { loadConfigFile } from '../../policy/load-config.ts';
import type { ConnectFacts, Identity, Mode, Protocol } from '../../policy/types.ts';
import { addressWithoutDns, EMPTY_USER, NO_SOURCE_IP, unauthenticatedRefusal } from '../control-evaluate.ts';
import { dryRunConnect } from '../detection/dry-run.ts';
import { HostInventory } from '../identity/host-inventory.ts';
import { parseAuthority } from '../protocol/authority.ts';
import { withoutRepeatedFlags } from './repeated-flag.ts';

export interface CommandIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const PROTOCOLS: readonly Protocol[] = ['http', 'connect', 'socks5', 'socks5-udp'];

const HELP = `usage: egressgate evaluate --config FILE --dest HOST:PORT [--user U] [--source IP]
                          [--process NAME] [--protocol P] [--ip IP] [--mode M]

Prints, as JSON, the verdict a new connection would get: verdict, reason, detector, mode,
matchedRule (role, allow index, entry), reasons, plus the identity and destination used.
The connect-time detectors (proxyware, scanner and exfil tools, lineage) judge it as the gateway
would, with the policy's detector settings: findings lists what they found, detectors which were
judged or skipped. No running gateway: quarantine, fan-out and first-seen history are not consulted.
No DNS lookups: the destination address is --ip, an IP in --dest, resolver.hosts, or 127.0.0.1
for a name under localhost (as the gateway answers it); otherwise destIp is null and deny ranges / CIDR entries are not evaluated. With identity.requireAuth on,
no --user is a client that did not log in: block auth-required, as the gateway answers 407.

options:
  -c, --config FILE     the policy file (default: $EGRESSGATE_CONFIG)
  -d, --dest HOST:PORT  destination (IPv6 in brackets: [2001:db8::1]:443)
  -u, --user U          authenticated user name (not empty: the gateway refuses that login)
  -s, --source IP       client address (selects identity.hosts; without it: a client with no
                        address, 0.0.0.0, that no hosts, exceptions or expectedScanSources entry names)
  -p, --process NAME    process name (as attribution would report it)
      --protocol P      ${PROTOCOLS.join(' | ')} (default connect)
      --ip IP           the address the gateway would dial for --dest
      --mode M          runtime global mode override: monitor | enforce
  -h, --help            this text
`;

type Values = {
  config?: string;
  dest?: string;
  user?: string;
  source?: string;
  process?: string;
  protocol?: string;
  ip?: string;
  mode?: string;
  help?: boolean;
};

function usageError(io: CommandIo, message: string): number {
  io.stderr.write(`egressgate evaluate: ${message}\n${HELP}`);
  return 2;
}

/** Runs the command; returns the exit code. */
export async function run(argv: string[], io: CommandIo = process): Promise<number> {
  let values: Values;
  try {
    ({ values } = withoutRepeatedFlags(parseArgs({
      tokens: true,
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        dest: { type: 'string', short: 'd' },
        user: { type: 'string', short: 'u' },
        source: { type: 'string', short: 's' },
        process: { type: 'string', short: 'p' },
        protocol: { type: 'string' },
        ip: { type: 'string' },
        mode: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    })));
  } catch (e) {
    return usageError(io, (e as Error).message);
  }
  if (values.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const file = values.config ?? process.env['EGRESSGATE_CONFIG'];
  if (!file) return usageError(io, '--config FILE is required');
  if (!values.dest) return usageError(io, '--dest HOST:PORT is required');
  const dest = parseAuthority(values.dest);
  if (!dest) return usageError(io, `--dest must be HOST:PORT (IPv6 in brackets), got ${JSON.stringify(values.dest)}`);
  const protocol = (values.protocol ?? 'connect') as Protocol;
  if (!PROTOCOLS.includes(protocol)) return usageError(io, `--protocol must be one of ${PROTOCOLS.join(', ')}`);
  if (values.user === '') return usageError(io, `--user ${EMPTY_USER}`);
  if (values.source !== undefined && isIP(values.source) === 0) return usageError(io, '--source must be an IP address');
  if (values.ip !== undefined && isIP(values.ip) === 0) return usageError(io, '--ip must be an IP address');
  if (values.mode !== undefined && values.mode !== 'monitor' && values.mode !== 'enforce') return usageError(io, '--mode must be monitor or enforce');

  const loaded = await loadConfigFile(file);
  if (!loaded.ok) {
    for (const e of loaded.errors) io.stderr.write(`${e.path}: ${e.message}\n`);
    return 1;
  }
  const snapshot = compilePolicy(loaded.config);
  const modeOverride = (values.mode as Mode | undefined) ?? null;
  const source = values.source ?? null;
  // identity.requireAuth without --user: refused auth-required as the gateway refuses it, anonymous.
  const refused = unauthenticatedRefusal(snapshot, values.user ?? null, modeOverride);
  const parsedSource = source === null || refused ? null : parseIp(source);
  const inventoryHost = parsedSource ? new HostInventory(snapshot.config.identity.hosts).lookup(parsedSource) : null;
  const user = refused ? null : (values.user ?? null);
  const host = inventoryHost?.name ?? null;
  const identity: Identity = refused?.identity ?? {
    user,
    host,
    roles: snapshot.rolesFor(user, host),
    process: values.process
      ? { pid: 0, name: values.process, exe: null, cmdline: null, user: null, uid: null, loginuid: null, ppid: null, parentName: null, parentExe: null }
      : null,
  };
  const known = dest.isIp ? null : addressWithoutDns(snapshot, dest.host);
  const destIp = values.ip ?? (dest.isIp ? dest.host : (known?.ip ?? null));
  const destIpSource = values.ip !== undefined ? '--ip' : dest.isIp ? 'literal' : (known?.source ?? null);
  const facts: ConnectFacts = {
    protocol,
    clientIp: source ?? NO_SOURCE_IP,
    clientPort: 0,
    identity,
    destHost: dest.host,
    destPort: dest.port,
    destIp,
  };
  const now = Date.now();
  const { decision, findings, detectors } = dryRunConnect(snapshot, facts, refused?.decision ?? snapshot.decide(facts, now, modeOverride), now, null);
  const notes = destIp === null && !decision.reasons.some((r) => r.startsWith('destination address unknown')) ? ['destination address unknown (no DNS lookups here): deny ranges and CIDR entries not checked; pass --ip to check them'] : [];
  const out = {
    ...decision,
    reasons: [...decision.reasons, ...notes],
    destIp,
    destIpSource,
    destination: { host: dest.host, port: dest.port, ip: destIp },
    identity: { user, host, roles: identity.roles, process: values.process ?? null },
    protocol,
    findings,
    detectors,
  };
  io.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  return 0;
}
