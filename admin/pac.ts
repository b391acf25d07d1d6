/**
 * The proxy auto-config file served at `/proxy.pac`: every URL goes through the gateway's HTTP
 * listener (never DIRECT — the gateway is the chokepoint and decides, the browser does not), with
 * the allowlists as comments so whoever reads it sees what the policy lets through.
 */
import type { Config } from '../policy/config.ts';

/** A comment-safe, single-line rendering (no line breaks can escape a `//` comment). */
function oneLine(text: string): string {
  return text.replace(/[\r\n\u2028\u2029]+/g, ' ');
}

/**
 * The proxy address browsers should use: the bound listener, with an unspecified bind address
 * (0.0.0.0, ::) replaced by the host name the client used to fetch the PAC file.
 */
export function pacProxyAddress(bound: string, requestHost: string | null): string {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(bound);
  if (!m) return bound;
  let host = m[1] as string;
  if ((host === '0.0.0.0' || host === '::' || host === '') && requestHost) host = requestHost;
  return host.includes(':') ? `[${host}]:${m[2]}` : `${host}:${m[2]}`;
}

/** Build the PAC file text for a policy. */
export function buildPac(config: Readonly<Config>, version: number, proxy: string): string {
  const lines = [
    `// egressgate proxy auto-config — policy version ${version}, mode ${config.mode}`,
    '// Every destination goes through the gateway, which decides; nothing is DIRECT.',
    '// Allowlists by role:',
  ];
  const roles = Object.entries(config.roles);
  if (roles.length === 0) lines.push('//   (no roles: nothing is allowlisted)');
  for (const [name, role] of roles) {
    const mode = role.mode ? ` [${role.mode}]` : '';
    lines.push(oneLine(`//   ${name}${mode}:`));
    if (role.allow.length === 0) lines.push('//     (nothing)');
    for (const e of role.allow) {
      const target = e.host ?? e.cidr ?? '?';
      const ports = e.ports ? ` ports ${e.ports.join(',')}` : ' any port';
      const proto = e.protocol ? ` (${e.protocol})` : '';
      lines.push(oneLine(`//     ${target}${ports}${proto}`));
    }
  }
  if (config.defaultRoles.length > 0) lines.push(oneLine(`// Clients matching no user or host get roles: ${config.defaultRoles.join(', ')}`));
  lines.push(
    '',
    'function FindProxyForURL(url, host) {',
    `  return ${JSON.stringify(`PROXY ${proxy}`)};`,
    '}',
    '',
  );
  return lines.join('\n');
}
