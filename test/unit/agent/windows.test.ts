/** Windows sources on fixtures built from the documented formats (test/fixtures/windows/README.md). */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { validateReportBatch } from '../../../agent/report.ts';
import {
  NO_LOGIN_SESSION,
  buildWindowsReports,
  decodeWindowsText,
  gatewayFilter,
  parseNetTcpConnectionJson,
  parseProcessOwnersJson,
  parsePsDate,
  parseSysmonJson,
  parseSysmonXml,
  parseWin32ProcessJson,
  sysmonToReports,
} from '../../../agent/windows.ts';

const FIX = new URL('../../fixtures/windows/', import.meta.url).pathname;
const text = async (name: string): Promise<string> => decodeWindowsText(await readFile(FIX + name));
const toGateway = gatewayFilter(['10.0.0.5', 'fe80::5'], [3128, 1080]);

describe('Get-NetTCPConnection + Win32_Process', () => {
  it('parses the 5.1 array form: numeric states, /Date()/ times, zone ids dropped', async () => {
    const conns = parseNetTcpConnectionJson(await text('net-tcp-connection.ps51.json'));
    expect(conns).toHaveLength(7);
    expect(conns[0]).toEqual({
      localIp: '10.2.3.17',
      localPort: 50123,
      remoteIp: '10.0.0.5',
      remotePort: 3128,
      state: 'Established',
      pid: 6100,
      createdAt: '2025-11-25T12:00:00.000Z',
    });
    expect(conns.map((c) => c.state)).toEqual(['Established', 'Established', 'TimeWait', 'Established', 'Listen', 'Established', 'Established']);
    expect(conns[5]?.localIp).toBe('fe80::1c2d:3e4f:5a6b:7c8d');
  });

  it('parses the 7.x single-object form with enum names and mapped addresses', async () => {
    const conns = parseNetTcpConnectionJson(await text('net-tcp-connection.ps7-single.json'));
    expect(conns).toEqual([
      { localIp: '10.2.3.17', localPort: 50400, remoteIp: '10.0.0.5', remotePort: 3128, state: 'Established', pid: 6100, createdAt: '2025-11-25T12:00:05.000Z' },
    ]);
  });

  it('reads UTF-16LE output of PowerShell 5.1 redirection the same as UTF-8', async () => {
    expect(parseWin32ProcessJson(await text('win32-process.utf16le.json'))).toEqual(parseWin32ProcessJson(await text('win32-process.json')));
  });

  it('joins connections to processes and parents; keeps only live connections to the gateway', async () => {
    const conns = parseNetTcpConnectionJson(await text('net-tcp-connection.ps51.json'));
    const owners = parseProcessOwnersJson(await text('process-owners.json'));
    const procs = parseWin32ProcessJson(await text('win32-process.json'), owners);
    const reports = buildWindowsReports(conns, procs, toGateway);
    // curl → 3128, svchost → 1080, powershell over IPv6; not TIME_WAIT, not 443, not the listener,
    // not the connection whose owner exited.
    expect(reports.map((r) => [r.name, r.localPort, r.remotePort])).toEqual([
      ['curl.exe', 50123, 3128],
      ['svchost.exe', 50124, 1080],
      ['powershell.exe', 50200, 3128],
    ]);
    expect(reports[0]).toEqual({
      proto: 'tcp',
      localIp: '10.2.3.17',
      localPort: 50123,
      remoteIp: '10.0.0.5',
      remotePort: 3128,
      pid: 6100,
      ppid: 6000,
      name: 'curl.exe',
      exe: 'C:\\Windows\\System32\\curl.exe',
      cmdline: 'curl.exe -x http://10.0.0.5:3128 -T C:\\Users\\alice\\Documents\\q3.zip https://files.example.net/up',
      user: 'CORP\\alice',
      uid: null,
      loginuid: null,
      parentName: 'powershell.exe',
      parentExe: 'C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe',
      startedAt: null,
    });
    expect(reports[1]).toMatchObject({ user: 'NT AUTHORITY\\SYSTEM', loginuid: NO_LOGIN_SESSION, parentName: 'services.exe', parentExe: null });
    expect(reports[2]).toMatchObject({ parentName: 'WINWORD.EXE' });
    expect(validateReportBatch({ host: 'ws-17', reports }).ok).toBe(true);
  });

  it('does not take a younger process for the parent (PID reuse)', () => {
    const reports = buildWindowsReports(
      [{ localIp: '10.2.3.17', localPort: 5, remoteIp: '10.0.0.5', remotePort: 3128, state: 'Established', pid: 2, createdAt: null }],
      [
        { pid: 1, ppid: null, name: 'newcomer.exe', exe: null, cmdline: null, user: null, startedAt: '2025-11-25T12:00:00.000Z' },
        { pid: 2, ppid: 1, name: 'child.exe', exe: null, cmdline: null, user: null, startedAt: '2025-11-25T11:00:00.000Z' },
      ],
    );
    expect(reports[0]?.parentName).toBeNull();
  });

  it('reports no socket of pid 0 (Idle: the gateway refuses a report naming it)', () => {
    const reports = buildWindowsReports(
      [{ localIp: '10.2.3.17', localPort: 5, remoteIp: '10.0.0.5', remotePort: 3128, state: 'Established', pid: 0, createdAt: null }],
      [{ pid: 0, ppid: 0, name: 'System Idle Process', exe: null, cmdline: null, user: null, startedAt: null }],
    );
    expect(reports).toEqual([]);
  });

  it('parses the date forms ConvertTo-Json and CIM use', () => {
    expect(parsePsDate('/Date(1764072000000)/')).toBe('2025-11-25T12:00:00.000Z');
    expect(parsePsDate('20251125130000.000000+060')).toBe('2025-11-25T12:00:00.000Z');
    expect(parsePsDate({ value: '/Date(0)/', DisplayHint: 2 })).toBe('1970-01-01T00:00:00.000Z');
    expect(parsePsDate('not a date')).toBeNull();
  });

  it('an empty output (no connections) is no records, malformed JSON throws', () => {
    expect(parseNetTcpConnectionJson('')).toEqual([]);
    expect(() => parseNetTcpConnectionJson('{oops')).toThrow();
  });
});

describe('Sysmon', () => {
  it('XML: event 3 joined with event 1 of the same ProcessGuid; inbound and non-Sysmon ignored', async () => {
    const events = parseSysmonXml(await text('sysmon-events.xml'));
    expect(events.map((e) => e.eventId)).toEqual([1, 3, 3, 3, 3]);
    const reports = sysmonToReports(events, toGateway);
    expect(reports).toHaveLength(2);
    expect(reports[0]).toEqual({
      proto: 'tcp',
      localIp: '10.2.3.17',
      localPort: 50123,
      remoteIp: '10.0.0.5',
      remotePort: 3128,
      pid: 6100,
      ppid: 6000,
      name: 'curl.exe',
      exe: 'C:\\Windows\\System32\\curl.exe',
      cmdline: 'curl.exe -x http://10.0.0.5:3128 -T "C:\\Users\\alice\\Documents\\q3 & q4.zip" https://files.example.net/up',
      user: 'CORP\\alice',
      uid: null,
      loginuid: 0xbc1a3,
      parentName: 'powershell.exe',
      parentExe: 'C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe',
      startedAt: '2025-11-25T12:00:00.120Z',
    });
    // No event 1 for svchost: reported from event 3 alone; SYSTEM is never a login session. Its
    // datagram socket sent to the relay the UDP ASSOCIATE reply named (40001), not to a listener.
    expect(reports[1]).toMatchObject({
      proto: 'udp',
      localIp: 'fe80::1c2d:3e4f:5a6b:7c8d',
      remoteIp: 'fe80::5',
      remotePort: 40001,
      name: 'svchost.exe',
      cmdline: null,
      ppid: null,
      loginuid: NO_LOGIN_SESSION,
    });
    expect(validateReportBatch({ host: 'ws-17', reports }).ok).toBe(true);
  });

  it('UDP: reported on a port of the relay range, not on a listener port or another port of the gateway address', async () => {
    const xml = await text('sysmon-events.xml');
    const udpTo = (port: number, filter = toGateway) =>
      sysmonToReports(parseSysmonXml(xml.replace('<Data Name="DestinationPort">40001</Data>', `<Data Name="DestinationPort">${port}</Data>`)), filter).filter((r) => r.proto === 'udp');
    // Before, the filter took the TCP listener ports for UDP too: the relay's datagrams were dropped,
    // and one to 1080 (where nothing listens for UDP) was reported.
    expect(udpTo(40001).map((r) => r.remotePort)).toEqual([40001]);
    expect(udpTo(1080)).toEqual([]);
    expect(udpTo(53)).toEqual([]);
    // The gateway's limits.udpRelayPorts: the same range given to the filter.
    const ranged = gatewayFilter(['10.0.0.5', 'fe80::5'], [3128, 1080], [20000, 20999]);
    expect(udpTo(20001, ranged).map((r) => r.remotePort)).toEqual([20001]);
    expect(udpTo(40001, ranged)).toEqual([]);
    // TCP is still judged by the listener ports.
    expect(ranged('10.0.0.5', 3128, 'tcp')).toBe(true);
    expect(ranged('10.0.0.5', 20001, 'tcp')).toBe(false);
  });

  it('an event 3 of pid 0 is not reported (the gateway refuses a report naming it)', async () => {
    const xml = (await text('sysmon-events.xml')).replaceAll('<Data Name="ProcessId">6100</Data>', '<Data Name="ProcessId">0</Data>');
    expect(sysmonToReports(parseSysmonXml(xml), toGateway).map((r) => r.pid)).not.toContain(0);
  });

  it('Winlogbeat JSON lines, Get-WinEvent messages and NXLog flat records give the same curl report', async () => {
    const beat = sysmonToReports(parseSysmonJson(await text('sysmon-winlogbeat.ndjson')), toGateway);
    const winevent = sysmonToReports(parseSysmonJson(await text('sysmon-getwinevent.json')), toGateway);
    const nx = sysmonToReports(parseSysmonJson(await text('sysmon-nxlog.json')), toGateway);
    for (const reports of [beat, winevent, nx]) {
      expect(reports).toHaveLength(1);
      expect(reports[0]).toMatchObject({ pid: 6100, name: 'curl.exe', localPort: 50123, remoteIp: '10.0.0.5', remotePort: 3128, user: 'CORP\\alice' });
    }
    // Event 1 present: lineage and session from it.
    for (const reports of [beat, winevent]) expect(reports[0]).toMatchObject({ ppid: 6000, parentName: 'powershell.exe', loginuid: 0xbc1a3 });
    // A ": " inside the command line survives the message form.
    expect(winevent[0]?.cmdline).toBe('curl.exe -x http://10.0.0.5:3128 -H "X-Note: a: b" https://files.example.net/up');
    // NXLog record has only event 3.
    expect(nx[0]).toMatchObject({ ppid: null, cmdline: null });
  });
});
