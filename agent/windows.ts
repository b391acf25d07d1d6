/**
 * Windows attribution sources → the same `AgentReport`s the Linux agent sends (SPEC §7).
 *
 * Inputs (all produced on the Windows host; this code never runs there, it parses their output):
 * - `Get-NetTCPConnection | ConvertTo-Json` (MSFT_NetTCPConnection: LocalAddress, LocalPort,
 *   RemoteAddress, RemotePort, State, OwningProcess, CreationTime),
 * - `Get-CimInstance Win32_Process | Select ProcessId,ParentProcessId,Name,ExecutablePath,CommandLine
 *   | ConvertTo-Json` (CreationDate optional),
 * - optionally `Get-Process -IncludeUserName | Select Id,UserName | ConvertTo-Json` for owners,
 * - Sysmon event 3 / event 1 records (see `windows-sysmon.ts`).
 *
 * Windows has no numeric uid and no audit loginuid: `uid` is null; `loginuid` is 4294967295 for the
 * built-in service accounts (SYSTEM, LOCAL SERVICE, NETWORK SERVICE: never a login session) and null
 * when unknown. Sysmon's LogonId gives a real session number (see `windows-sysmon.ts`).
 */

import { DEFAULT_UDP_RELAY_PORTS } from './agent.ts';
import { normalizeIp } from './attribution.ts';
import { type AgentReport, makeReport } from './report.ts';
import { loginuidForWindowsUser } from './windows-common.ts';

export { NO_LOGIN_SESSION, baseName, loginuidForWindowsUser } from './windows-common.ts';
export { parseSysmonJson, parseSysmonXml, type SysmonEvent, sysmonToReports } from './windows-sysmon.ts';


export interface WinTcpConnection {
  readonly localIp: string;
  readonly localPort: number;
  readonly remoteIp: string;
  readonly remotePort: number;
  /** State name, e.g. `Established` (numbers from ConvertTo-Json are mapped to names). */
  readonly state: string;
  readonly pid: number;
  readonly createdAt: string | null;
}

export interface WinProcess {
  readonly pid: number;
  readonly ppid: number | null;
  readonly name: string;
  readonly exe: string | null;
  readonly cmdline: string | null;
  readonly user: string | null;
  readonly startedAt: string | null;
}

/** MSFT_NetTCPConnection.State values (the PowerShell enum ConvertTo-Json prints as a number). */
const TCP_STATE_NAMES: Record<number, string> = {
  1: 'Closed',
  2: 'Listen',
  3: 'SynSent',
  4: 'SynReceived',
  5: 'Established',
  6: 'FinWait1',
  7: 'FinWait2',
  8: 'CloseWait',
  9: 'Closing',
  10: 'LastAck',
  11: 'TimeWait',
  12: 'DeleteTCB',
  100: 'Bound',
};

/**
 * Text of a file PowerShell wrote: `>` in Windows PowerShell 5.1 writes UTF-16LE with a BOM,
 * `Out-File -Encoding utf8` writes a UTF-8 BOM.
 */
export function decodeWindowsText(buf: Uint8Array): string {
  if (buf[0] === 0xff && buf[1] === 0xfe) return new TextDecoder('utf-16le').decode(buf.subarray(2));
  if (buf[0] === 0xfe && buf[1] === 0xff) return new TextDecoder('utf-16be').decode(buf.subarray(2));
  const text = new TextDecoder('utf-8').decode(buf);
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** ConvertTo-Json prints one object bare and several as an array; both become an array. */
export function jsonRecords(text: string): Record<string, unknown>[] {
  const trimmed = text.replace(/^\uFEFF/, '').trim();
  if (trimmed.length === 0) return [];
  const v: unknown = JSON.parse(trimmed);
  const list = Array.isArray(v) ? v : [v];
  return list.filter((x): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x));
}

function num(v: unknown): number | null {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'string' && /^\d+$/.test(v.trim())) return Number(v.trim());
  return null;
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v.length > 0 ? v : null;
}

/**
 * A PowerShell date as ConvertTo-Json writes it: `"\/Date(1700000000000)\/"` (5.1), an ISO string
 * (7.x), or a CIM datetime `20231114221320.000000+060`. Returns ISO 8601 UTC or null.
 */
export function parsePsDate(v: unknown): string | null {
  if (typeof v === 'object' && v !== null && 'value' in v) return parsePsDate((v as { value: unknown }).value);
  if (typeof v !== 'string') return null;
  const ms = /^\/Date\((-?\d+)(?:[+-]\d{4})?\)\/$/.exec(v);
  if (ms) return new Date(Number(ms[1])).toISOString();
  const cim = /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)\.(\d{6})([+-])(\d{3})$/.exec(v);
  if (cim) {
    const [, y, mo, d, h, mi, s, us, sign, off] = cim;
    const utc = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), Math.floor(Number(us) / 1000));
    return new Date(utc - (sign === '-' ? -1 : 1) * Number(off) * 60_000).toISOString();
  }
  const t = Date.parse(v);
  return Number.isNaN(t) ? null : new Date(t).toISOString();
}

/** Parse `Get-NetTCPConnection | ConvertTo-Json`; entries without ports or owner are skipped. */
export function parseNetTcpConnectionJson(text: string): WinTcpConnection[] {
  const out: WinTcpConnection[] = [];
  for (const r of jsonRecords(text)) {
    const localIp = str(r['LocalAddress']);
    const remoteIp = str(r['RemoteAddress']);
    const localPort = num(r['LocalPort']);
    const remotePort = num(r['RemotePort']);
    const pid = num(r['OwningProcess']);
    if (!localIp || !remoteIp || localPort === null || remotePort === null || pid === null) continue;
    const st = r['State'];
    const state = typeof st === 'number' ? (TCP_STATE_NAMES[st] ?? String(st)) : typeof st === 'string' ? st : 'Unknown';
    out.push({
      localIp: normalizeIp(localIp),
      localPort,
      remoteIp: normalizeIp(remoteIp),
      remotePort,
      state,
      pid,
      createdAt: parsePsDate(r['CreationTime']),
    });
  }
  return out;
}

/** Parse `Get-CimInstance Win32_Process | Select … | ConvertTo-Json` (and the owners list, if given). */
export function parseWin32ProcessJson(text: string, owners?: ReadonlyMap<number, string>): WinProcess[] {
  const out: WinProcess[] = [];
  for (const r of jsonRecords(text)) {
    const pid = num(r['ProcessId']);
    const name = str(r['Name']);
    if (pid === null || name === null) continue;
    out.push({
      pid,
      ppid: num(r['ParentProcessId']),
      name,
      exe: str(r['ExecutablePath']),
      cmdline: str(r['CommandLine']),
      user: owners?.get(pid) ?? str(r['UserName']) ?? str(r['User']),
      startedAt: parsePsDate(r['CreationDate']),
    });
  }
  return out;
}

/** Parse `Get-Process -IncludeUserName | Select Id,UserName | ConvertTo-Json` into pid → `DOMAIN\user`. */
export function parseProcessOwnersJson(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const r of jsonRecords(text)) {
    const pid = num(r['Id']);
    const user = str(r['UserName']);
    if (pid !== null && user !== null) out.set(pid, user);
  }
  return out;
}

/** Whether a connection's remote end is the gateway; `proto` 'udp' for a datagram socket's. */
export type GatewayFilter = (remoteIp: string, remotePort: number, proto?: 'tcp' | 'udp') => boolean;

/**
 * Which remote ends count as "the gateway": exact address and, for TCP when ports are given, one of
 * them (the listeners); for UDP a port of the relay range, as the Linux agent's --udp-relay-ports
 * (default DEFAULT_UDP_RELAY_PORTS; the gateway's limits.udpRelayPorts when it sets one). A SOCKS5
 * client's datagram socket sends to the relay the UDP ASSOCIATE reply names, never to a listener
 * port, and a DNS or NTP socket to the gateway's address names no association.
 */
export function gatewayFilter(ips: readonly string[], ports: readonly number[], udpRelayPorts: readonly [number, number] = DEFAULT_UDP_RELAY_PORTS): GatewayFilter {
  const ipSet = new Set(ips.map(normalizeIp));
  const portSet = new Set(ports);
  const [udpLow, udpHigh] = udpRelayPorts;
  return (ip, port, proto = 'tcp') => {
    if (!ipSet.has(normalizeIp(ip))) return false;
    if (proto === 'udp') return port >= udpLow && port <= udpHigh;
    return portSet.size === 0 || portSet.has(port);
  };
}

const LIVE_STATES = new Set(['Established', 'SynSent', 'CloseWait']);

/**
 * Join a `Get-NetTCPConnection` snapshot with a `Win32_Process` snapshot into reports, one per live
 * connection whose remote end passes `isGateway`. A connection whose owner is not in the process
 * list (it exited between the two commands) is skipped.
 */
export function buildWindowsReports(
  connections: readonly WinTcpConnection[],
  processes: readonly WinProcess[],
  isGateway: GatewayFilter = () => true,
): AgentReport[] {
  const byPid = new Map(processes.map((p) => [p.pid, p] as const));
  const out: AgentReport[] = [];
  for (const c of connections) {
    if (!LIVE_STATES.has(c.state) || !isGateway(c.remoteIp, c.remotePort, 'tcp')) continue;
    // pid 0 (Idle) owns only closing sockets; the gateway refuses a report naming it.
    const p = c.pid === 0 ? undefined : byPid.get(c.pid);
    if (!p) continue;
    let parent = p.ppid !== null ? byPid.get(p.ppid) : undefined;
    // Windows reuses PIDs and never re-parents: a "parent" younger than its child is a stranger.
    if (parent?.startedAt && p.startedAt && parent.startedAt > p.startedAt) parent = undefined;
    out.push(
      makeReport(
        { proto: 'tcp', localIp: c.localIp, localPort: c.localPort, remoteIp: c.remoteIp, remotePort: c.remotePort },
        {
          pid: p.pid,
          ppid: p.ppid,
          name: p.name,
          exe: p.exe,
          cmdline: p.cmdline,
          user: p.user,
          uid: null,
          loginuid: loginuidForWindowsUser(p.user),
          parentName: parent?.name ?? null,
          parentExe: parent?.exe ?? null,
          startedAt: p.startedAt,
        },
      ),
    );
  }
  return out;
}
