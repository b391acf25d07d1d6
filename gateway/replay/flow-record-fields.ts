/**
 * The fields of a flow record (SPEC §5) that `egressgate replay` reads, checked for the types the
 * gateway writes them with before the policy and the detectors see them. A log edited by hand, cut
 * and joined by another tool, or written by something else is refused at its line with the field
 * and what is wrong, as a line that is not JSON is. Unchecked, a wrong type either reached the
 * detectors (`"user": 5`, `"process": {"name": 5}`, `"client": {"ip": 7}` ended the replay with a
 * TypeError's stack, exit 1) or was read as something else without a word (`"bytesOut": "12"` as 0
 * bytes, `"protocol": "gopher"` judged as given, a port of 1e9).
 */
import type { Protocol } from '../../policy/types.ts';

const PROTOCOLS: ReadonlySet<string> = new Set<Protocol>(['http', 'connect', 'socks5', 'socks5-udp']);
const PROCESS_TEXT = ['exe', 'cmdline', 'user', 'parentName', 'parentExe'] as const;
const PROCESS_NUMBERS = ['pid', 'uid', 'loginuid', 'ppid'] as const;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const isTextOrNull = (v: unknown): boolean => v === undefined || v === null || typeof v === 'string';

/** A count or a duration: absent, or a finite number ≥ 0. */
const isCount = (v: unknown): boolean => v === undefined || (typeof v === 'number' && Number.isFinite(v) && v >= 0);

/**
 * What is wrong with a parsed record's fields (`field: why`), or null when the replay can read it.
 * Its `startedAt`, `destination.host` and `destination.port` are present (the caller checked).
 */
export function flowRecordFieldError(r: Record<string, unknown>): string | null {
  const dest = r['destination'] as Record<string, unknown>;
  if (dest['host'] === '') return 'destination.host: empty';
  const port = dest['port'];
  if (!Number.isInteger(port) || (port as number) < 0 || (port as number) > 65535) return `destination.port: ${JSON.stringify(port)} is not a port (0-65535)`;
  if (!isTextOrNull(dest['ip'])) return 'destination.ip: not a string or null';
  const protocol = r['protocol'];
  if (protocol !== undefined && (typeof protocol !== 'string' || !PROTOCOLS.has(protocol))) return `protocol: ${JSON.stringify(protocol)} is not one of ${[...PROTOCOLS].join(', ')}`;
  const client = r['client'];
  if (client !== undefined && client !== null && (!isObject(client) || !isTextOrNull(client['ip']))) return 'client.ip: not a string or null';
  for (const key of ['bytesOut', 'bytesIn', 'durationMs'] as const) if (!isCount(r[key])) return `${key}: not a number ≥ 0`;
  if (r['connected'] !== undefined && typeof r['connected'] !== 'boolean') return 'connected: not true or false';
  const ident = r['identity'];
  if (ident === undefined || ident === null) return null;
  if (!isObject(ident)) return 'identity: not an object or null';
  for (const key of ['user', 'host'] as const) if (!isTextOrNull(ident[key])) return `identity.${key}: not a string or null`;
  const proc = ident['process'];
  if (proc === undefined || proc === null) return null;
  if (!isObject(proc)) return 'identity.process: not an object or null';
  if (typeof proc['name'] !== 'string') return 'identity.process.name: not a string';
  for (const key of PROCESS_TEXT) if (!isTextOrNull(proc[key])) return `identity.process.${key}: not a string or null`;
  for (const key of PROCESS_NUMBERS) if (proc[key] !== undefined && proc[key] !== null && typeof proc[key] !== 'number') return `identity.process.${key}: not a number or null`;
  return null;
}
