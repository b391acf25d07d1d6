/**
 * Process facts the detectors read from an attribution (research D9, D10, D12): login session,
 * daemon accounts, client tools, suspicious paths, unusual lineage, upload flags, browsers.
 */
import type { ProcessInfo } from '../types.ts';
import { NameList, baseName } from './match.ts';

/** loginuid 4294967295 (or unknown) = not part of a login session: a daemon or service. */
export const UNSET_LOGINUID = 4294967295;

/** True when the process is not in a login session (Linux audit loginuid unset). */
export function isNonLogin(p: ProcessInfo): boolean {
  return p.loginuid === null || p.loginuid === UNSET_LOGINUID;
}

const DAEMON_USERS = new Set([
  'www-data',
  'apache',
  'nginx',
  'httpd',
  'postgres',
  'mysql',
  'nobody',
  'tomcat',
  'daemon',
  'nt authority\\network service',
  'nt authority\\local service',
  'network service',
  'local service',
]);
const SYSTEM_USERS = new Set(['root', 'system', 'nt authority\\system']);

/** Daemon / web-server / service accounts (AN0923 UserContext; `svc_*` service accounts). */
export function isDaemonAccount(user: string | null | undefined): boolean {
  if (!user) return false;
  const u = user.toLowerCase();
  if (DAEMON_USERS.has(u)) return true;
  if (u.startsWith('iis apppool\\')) return true;
  const local = u.includes('\\') ? u.slice(u.lastIndexOf('\\') + 1) : u;
  return /^svc[_-]/.test(local);
}

/** root / SYSTEM. */
export function isSystemAccount(user: string | null | undefined): boolean {
  return !!user && SYSTEM_USERS.has(user.toLowerCase());
}

/** Network-intensive client tools (research D9 children, D10 "client tool"). */
export const CLIENT_TOOLS = new NameList([
  'curl',
  'wget',
  'powershell',
  'pwsh',
  'python*',
  'perl',
  'ruby',
  'php',
  'bitsadmin',
  'certutil',
  'rclone',
  'mega*',
  'scp',
  'sftp',
  'ftp',
  'nc',
  'ncat',
  'netcat',
  'socat',
  'ssh',
]);

/** Parents that should never spawn a network client (Office, script hosts, servers; research D9). */
const SUSPICIOUS_PARENTS = new NameList([
  'winword',
  'excel',
  'powerpnt',
  'outlook',
  'onenote',
  'acrord32',
  'wscript',
  'cscript',
  'mshta',
  'rundll32',
  'regsvr32',
  'w3wp',
  'sqlservr',
  'java',
  'tomcat*',
  'httpd',
  'nginx',
  'php-fpm*',
  'apache2',
]);

/** Browsers: excluded from the successful fan-out rule (D3c) and from relay symmetry (D4b). */
export const BROWSERS = new NameList(['chrome', 'msedge', 'firefox', 'safari', 'brave', 'opera', 'chromium*', 'iexplore', 'vivaldi']);

/** Executables started from world-writable or hidden places (Elastic "suspicious executable"). */
export function isSuspiciousPath(p: ProcessInfo): boolean {
  const exe = (p.exe ?? p.name ?? '').toLowerCase();
  if (exe.startsWith('/tmp/') || exe.startsWith('/var/tmp/') || exe.startsWith('/dev/shm/') || exe.startsWith('./')) return true;
  if (exe.includes('/.')) return true;
  return baseName(exe).startsWith('.');
}

/** Why the process is in a service / non-standard context (D10), or null when it is not. */
export function serviceContext(p: ProcessInfo): string | null {
  if (isDaemonAccount(p.user)) return `runs as daemon/service account ${p.user}`;
  const client = CLIENT_TOOLS.has(p.name) || CLIENT_TOOLS.has(p.exe);
  if (isNonLogin(p) && client) return `client tool ${baseName(p.name)} outside a login session (loginuid unset)`;
  if (isNonLogin(p) && isSuspiciousPath(p)) return `executable ${p.exe ?? p.name} from a suspicious path outside a login session`;
  return null;
}

/**
 * Unusual lineage (D9): a network client whose parent is an Office app, script host or server
 * process, or which runs as a daemon account. Returns the reason, or null.
 */
export function lineageReason(p: ProcessInfo): string | null {
  if (!(CLIENT_TOOLS.has(p.name) || CLIENT_TOOLS.has(p.exe))) return null;
  const child = baseName(p.name || p.exe);
  if (SUSPICIOUS_PARENTS.has(p.parentName) || SUSPICIOUS_PARENTS.has(p.parentExe)) {
    return `${baseName(p.parentName ?? p.parentExe)} → ${child}`;
  }
  if (isDaemonAccount(p.user)) return `${child} run by daemon account ${p.user}`;
  return null;
}

// Upload options per client (Sigma curl file-upload, Elastic curl/wget exfiltration, Splunk
// PowerShell upload): `-T` is an upload for curl but a timeout for wget, so the tool matters.
const CURL_UPLOAD_RE = /(?:^|\s)(?:(?:-T|--upload-file|-F|--form)(?:\s|=|$)|(?:-d|--data|--data-binary)\s*@)/;
const WGET_UPLOAD_RE = /(?:^|\s)--(?:post-file|body-file)(?:\s|=|$)/;
const POWERSHELL_UPLOAD_RE = /-InFile\b|UploadFile|UploadString|UploadData/i;

/** True when the command line of `tool` (basename) carries an upload option. */
export function hasUploadFlags(cmdline: string | null, tool = ''): boolean {
  if (cmdline === null) return false;
  const t = baseName(tool);
  if (t === 'wget') return WGET_UPLOAD_RE.test(cmdline);
  if (t === 'powershell' || t === 'pwsh') return POWERSHELL_UPLOAD_RE.test(cmdline);
  if (t === 'curl') return CURL_UPLOAD_RE.test(cmdline);
  return CURL_UPLOAD_RE.test(cmdline) || WGET_UPLOAD_RE.test(cmdline) || POWERSHELL_UPLOAD_RE.test(cmdline);
}
