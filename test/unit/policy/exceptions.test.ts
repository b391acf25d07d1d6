import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../policy/compile.ts';
import { exceptionApplies, isApprovedUploadDestination, isExpectedScanSource } from '../../../policy/exceptions.ts';
import { loadConfig } from '../../../policy/load-config.ts';
import type { ProcessInfo } from '../../../policy/types.ts';

const r = loadConfig(`
exceptions:
  - { process: [apt, apt-get, restic], detectors: [an0081.sustained, an0080.bulk-upload] }
  - { user: [backup], host: [nas1], detectors: [an0080.long-session] }
  - { destination: ["*.backup.example"], process: [rclone.exe], detectors: [an0080.exfil-tool] }
approvedUploadDestinations: [ backup.example.net, "*.sharepoint.example" ]
expectedScanSources: [ { host: scan1, process: [nessusd] }, { user: auditor } ]
`);
if (!r.ok) throw new Error(JSON.stringify(r.errors));
const snap = compilePolicy(r.config);

const proc = (name: string, exe: string | null = null): ProcessInfo => ({
  pid: 1, name, exe, cmdline: null, user: null, uid: null, loginuid: null, ppid: null, parentName: null, parentExe: null,
});

describe('exceptionApplies', () => {
  const table: Array<[string, string, Parameters<typeof exceptionApplies>[2], boolean]> = [
    ['process by name', 'an0081.sustained', { process: 'apt-get' }, true],
    ['process from ProcessInfo exe', 'an0080.bulk-upload', { process: proc('http', '/usr/bin/restic') }, true],
    ['other detector', 'an0081.scan', { process: 'apt' }, false],
    ['other process', 'an0081.sustained', { process: 'curl' }, false],
    ['unknown process', 'an0081.sustained', {}, false],
    ['user and host both required', 'an0080.long-session', { user: 'backup', host: 'nas1' }, true],
    ['user without host', 'an0080.long-session', { user: 'backup', host: 'ws1' }, false],
    ['destination wildcard + windows exe', 'an0080.exfil-tool', { process: 'C:\\Tools\\RCLONE.EXE', destination: 'eu.backup.example' }, true],
    ['destination apex not a subdomain', 'an0080.exfil-tool', { process: 'rclone', destination: 'backup.example' }, false],
    ['destination missing', 'an0080.exfil-tool', { process: 'rclone' }, false],
  ];
  it.each(table)('%s', (_n, detector, subject, want) => {
    expect(exceptionApplies(snap, detector, subject)).toBe(want);
  });
});

describe('isApprovedUploadDestination', () => {
  it.each([
    ['backup.example.net', true],
    ['BACKUP.example.net.', true],
    ['x.backup.example.net', false],
    ['team.sharepoint.example', true],
    ['sharepoint.example', false],
    ['evil.example', false],
  ])('%s -> %s', (host, want) => {
    expect(isApprovedUploadDestination(snap, host)).toBe(want);
  });
});

describe('isExpectedScanSource', () => {
  it.each([
    [{ host: 'scan1', process: 'nessusd' }, true],
    [{ host: 'scan1', process: proc('nessusd') }, true],
    [{ host: 'scan1', process: 'nmap' }, false],
    [{ host: 'ws1', process: 'nessusd' }, false],
    [{ user: 'auditor', process: 'nmap' }, true],
    [{ user: 'alice' }, false],
  ])('%j -> %s', (who, want) => {
    expect(isExpectedScanSource(snap, who)).toBe(want);
  });
});
