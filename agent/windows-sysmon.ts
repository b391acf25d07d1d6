/**
 * Sysmon event ID 3 (NetworkConnect) and ID 1 (ProcessCreate) → `AgentReport`s.
 *
 * Accepted forms (fields as in the Sysmon event schema: `sysmon -s`):
 * - XML: `<Event>` elements as `wevtutil qe Microsoft-Windows-Sysmon/Operational /f:xml` or
 *   `(Get-WinEvent …).ToXml()` print them; several may be concatenated without a root element.
 * - JSON: Winlogbeat/ECS (`winlog.event_id`, `winlog.event_data`), `Get-WinEvent | Select
 *   Id,MachineName,Message | ConvertTo-Json` (the rendered "Key: Value" message), or flat records
 *   (`EventID` beside the data fields, as NXLog writes them). An array, one object, or JSON lines.
 *
 * Event 3 gives the connection, Image, User and ProcessGuid; event 1 of the same ProcessGuid adds
 * CommandLine, the parent and LogonId. A connection whose event 1 is missing is still reported,
 * with what event 3 knows.
 */

import { normalizeIp } from './attribution.ts';
import { type AgentReport, makeReport } from './report.ts';
import { NO_LOGIN_SESSION, baseName, loginuidForWindowsUser } from './windows-common.ts';

export interface SysmonEvent {
  readonly eventId: number;
  readonly computer: string | null;
  /** EventData fields by name (`SourceIp`, `Image`, …), values as text. */
  readonly fields: Readonly<Record<string, string>>;
}

function decodeXml(s: string): string {
  return s.replace(/&(lt|gt|amp|quot|apos|#x[0-9a-fA-F]+|#\d+);/g, (_m, e: string) => {
    switch (e) {
      case 'lt':
        return '<';
      case 'gt':
        return '>';
      case 'amp':
        return '&';
      case 'quot':
        return '"';
      case 'apos':
        return "'";
      default:
        return String.fromCodePoint(e.startsWith('#x') ? Number.parseInt(e.slice(2), 16) : Number(e.slice(1)));
    }
  });
}

/** Parse Sysmon events in XML; non-Sysmon events and malformed ones are skipped. */
export function parseSysmonXml(text: string): SysmonEvent[] {
  const out: SysmonEvent[] = [];
  const events = text.match(/<Event[\s>][\s\S]*?<\/Event>/g) ?? [];
  for (const ev of events) {
    const provider = /<Provider\b[^>]*\bName=['"]([^'"]+)['"]/.exec(ev)?.[1];
    if (provider !== undefined && provider !== 'Microsoft-Windows-Sysmon') continue;
    const id = /<EventID\b[^>]*>(\d+)<\/EventID>/.exec(ev)?.[1];
    if (id === undefined) continue;
    const computer = /<Computer>([^<]*)<\/Computer>/.exec(ev)?.[1];
    const fields: Record<string, string> = {};
    for (const m of ev.matchAll(/<Data\s+Name=['"]([^'"]+)['"]\s*(?:\/>|>([\s\S]*?)<\/Data>)/g)) {
      fields[m[1] as string] = decodeXml(m[2] ?? '');
    }
    out.push({ eventId: Number(id), computer: computer === undefined ? null : decodeXml(computer), fields });
  }
  return out;
}

function asText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return null;
}

function textFields(obj: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj)) {
    const t = asText(v);
    if (t !== null) out[k] = t;
  }
  return out;
}

/** "Network connection detected:\r\nRuleName: -\r\nUtcTime: …" → fields (split at the first ": "). */
function messageFields(message: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of message.split(/\r?\n/)) {
    const i = line.indexOf(': ');
    if (i > 0 && !line.slice(0, i).includes(' ')) out[line.slice(0, i)] = line.slice(i + 2).trim();
  }
  return out;
}

function fromJsonRecord(r: Record<string, unknown>): SysmonEvent | null {
  const winlog = r['winlog'];
  if (typeof winlog === 'object' && winlog !== null) {
    const w = winlog as Record<string, unknown>;
    const provider = asText(w['provider_name']);
    if (provider !== null && provider !== 'Microsoft-Windows-Sysmon') return null;
    const id = Number(asText(w['event_id']));
    const data = w['event_data'];
    if (!Number.isInteger(id) || typeof data !== 'object' || data === null) return null;
    return { eventId: id, computer: asText(w['computer_name']), fields: textFields(data as Record<string, unknown>) };
  }
  const idRaw = r['Id'] ?? r['EventID'] ?? r['EventId'];
  const id = Number(asText(idRaw));
  if (!Number.isInteger(id)) return null;
  const provider = asText(r['ProviderName'] ?? r['SourceName'] ?? r['Provider']);
  if (provider !== null && provider !== 'Microsoft-Windows-Sysmon') return null;
  const computer = asText(r['MachineName'] ?? r['Hostname'] ?? r['Computer']);
  const message = asText(r['Message']);
  // The rendered message carries the data in Get-WinEvent output; flat records carry it beside EventID.
  const fields = message !== null && r['Image'] === undefined ? messageFields(message) : textFields(r);
  return { eventId: id, computer, fields };
}

/** Parse Sysmon events from JSON (array, single object, or JSON lines). */
export function parseSysmonJson(text: string): SysmonEvent[] {
  const trimmed = text.replace(/^\uFEFF/, '').trim();
  if (trimmed.length === 0) return [];
  let records: unknown[];
  if (trimmed.startsWith('[')) records = JSON.parse(trimmed) as unknown[];
  else {
    try {
      records = [JSON.parse(trimmed)];
    } catch {
      records = trimmed
        .split(/\r?\n/)
        .filter((l) => l.trim().length > 0)
        .map((l) => JSON.parse(l) as unknown);
    }
  }
  const out: SysmonEvent[] = [];
  for (const r of records) {
    if (typeof r !== 'object' || r === null || Array.isArray(r)) continue;
    const ev = fromJsonRecord(r as Record<string, unknown>);
    if (ev) out.push(ev);
  }
  return out;
}

/** Sysmon UtcTime `2023-11-14 22:13:20.123` (UTC, no zone) → ISO 8601. */
function utcTime(v: string | undefined): string | null {
  if (!v) return null;
  const t = Date.parse(`${v.trim().replace(' ', 'T')}Z`);
  return Number.isNaN(t) ? null : new Date(t).toISOString();
}

function intField(v: string | undefined): number | null {
  return v !== undefined && /^\d+$/.test(v.trim()) ? Number(v.trim()) : null;
}

function orNull(v: string | undefined): string | null {
  return v === undefined || v === '' || v === '-' ? null : v;
}

/**
 * LogonId (hex LUID) → loginuid: the service logon sessions 0x3e7 (SYSTEM), 0x3e4 (NETWORK SERVICE),
 * 0x3e5 (LOCAL SERVICE) are not login sessions; others are kept as the session number.
 */
export function loginuidFromLogonId(logonId: string | undefined, user: string | null): number | null {
  if (logonId === undefined || !/^0x[0-9a-f]+$/i.test(logonId.trim())) return loginuidForWindowsUser(user);
  const v = Number.parseInt(logonId.trim().slice(2), 16);
  if (v === 0x3e7 || v === 0x3e4 || v === 0x3e5) return NO_LOGIN_SESSION;
  return v < NO_LOGIN_SESSION ? v : null;
}

/**
 * Turn Sysmon events into reports: one per outbound (Initiated=true) event 3 whose destination
 * passes `isGateway` (gatewayFilter: a TCP listener port, or for UDP a relay port), enriched from the event 1 of the same process (by ProcessGuid, else ProcessId).
 */
export function sysmonToReports(
  events: readonly SysmonEvent[],
  isGateway: (remoteIp: string, remotePort: number, proto: 'tcp' | 'udp') => boolean = () => true,
): AgentReport[] {
  const byGuid = new Map<string, Readonly<Record<string, string>>>();
  const byPid = new Map<number, Readonly<Record<string, string>>>();
  for (const e of events) {
    if (e.eventId !== 1) continue;
    const guid = e.fields['ProcessGuid'];
    if (guid) byGuid.set(guid.toLowerCase(), e.fields);
    const pid = intField(e.fields['ProcessId']);
    if (pid !== null) byPid.set(pid, e.fields);
  }
  const out: AgentReport[] = [];
  for (const e of events) {
    if (e.eventId !== 3) continue;
    const f = e.fields;
    if (f['Initiated'] !== undefined && f['Initiated'].toLowerCase() !== 'true') continue;
    const proto = f['Protocol']?.toLowerCase();
    const localPort = intField(f['SourcePort']);
    const remotePort = intField(f['DestinationPort']);
    const pid = intField(f['ProcessId']);
    const src = f['SourceIp'];
    const dst = f['DestinationIp'];
    // pid 0 (Idle) is no process a connection belongs to: the gateway refuses a report naming it.
    if ((proto !== 'tcp' && proto !== 'udp') || localPort === null || remotePort === null || pid === null || pid === 0 || !src || !dst) continue;
    const remoteIp = normalizeIp(dst);
    // A UDP event's destination is where the datagram went: for a SOCKS5 client, its relay's port.
    if (!isGateway(remoteIp, remotePort, proto)) continue;
    const guid = f['ProcessGuid']?.toLowerCase();
    const create = (guid ? byGuid.get(guid) : undefined) ?? byPid.get(pid);
    const image = orNull(create?.['Image']) ?? orNull(f['Image']);
    const user = orNull(create?.['User']) ?? orNull(f['User']);
    const parentImage = orNull(create?.['ParentImage']);
    out.push(
      makeReport(
        { proto, localIp: normalizeIp(src), localPort, remoteIp, remotePort },
        {
          pid,
          ppid: intField(create?.['ParentProcessId']),
          name: image ? baseName(image) : `pid-${pid}`,
          exe: image,
          cmdline: orNull(create?.['CommandLine']),
          user,
          uid: null,
          loginuid: loginuidFromLogonId(create?.['LogonId'], user),
          parentName: parentImage ? baseName(parentImage) : null,
          parentExe: parentImage,
          startedAt: utcTime(create?.['UtcTime']),
        },
      ),
    );
  }
  return out;
}
