import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../../gateway/commands/replay.ts';
import { configWith } from '../../../gateway/replay/suite.ts';
import { loadConfig } from '../../../policy/load-config.ts';
import { expand, parseBytes, parseDuration, parseScenario } from '../../../gateway/replay/scenario.ts';

const POLICY = `
mode: enforce
roles: { everyone: { allow: [ { host: "*" }, { cidr: 0.0.0.0/0 } ] } }
defaultRoles: [everyone]
`;
const OLD_POLICY = `
mode: enforce
roles: { everyone: { allow: [ { host: "*.example.com", ports: [443] } ] } }
defaultRoles: [everyone]
`;
const UPLOAD = (expectAction: string) => `
id: T1
kind: malicious
start: 2026-03-04T11:00:00Z
identities:
  u: { host: ws1, user: u, process: { name: curl, user: u, loginuid: 1000, parentName: bash } }
connections:
  - { identity: u, dest: "upload.example.org:443", duration: 2m, bytesOut: 60MiB, bytesIn: 10KiB }
expect: { action: ${expectAction}, detectors: [an0080.bulk-upload] }
`;

// bulk-upload kill, corroborate: true. The upload alone (known destination, port 443, a user's
// python3, in hours) has no corroboration at its connect; 5 s in, the same identity's refused
// fan-out raises an0081.scan, which corroborates it. 100 MiB over 125 s reaches the 50 MiB budget at
// 62.5 s: the gateway cuts it there (corroboration judged at the budget), so 0 bytes past; the
// next sweep (63 s) would have let 100 MiB × 63/125 − 50 MiB = 419,430 bytes through.
const CORROBORATE_POLICY = `
mode: enforce
roles: { everyone: { allow: [ { host: "*" }, { cidr: 0.0.0.0/0 } ] } }
defaultRoles: [everyone]
detection:
  sampleIntervalMs: 1000
  detectors:
    an0081.scan: { action: block, windowSec: 300, failedDestinations: 25 }
    an0080.bulk-upload: { action: kill, corroborate: true, bytesOut: 52428800, minRatio: 10 }
`;
const LATE_CORROBORATION = `
id: T3
kind: malicious
start: 2026-03-04T11:00:00Z
known: [upload.example.net]
identities:
  dev: { host: ws9, user: carol, process: { name: python3, loginuid: 1000, parentName: bash } }
connections:
  - { identity: dev, dest: "upload.example.net:443", duration: 125s, bytesOut: 100MiB, bytesIn: 1MiB }
  - { identity: dev, at: 5s, dest: "203.0.113.{i+1}:443", outcome: refused, repeat: 30, every: 100ms }
expect: { action: kill, detectors: [an0080.bulk-upload] }
`;

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-replay-'));
  await writeFile(join(dir, 'policy.yaml'), POLICY);
  await writeFile(join(dir, 'old.yaml'), OLD_POLICY);
  await writeFile(join(dir, 'pass.yaml'), UPLOAD('kill'));
  await writeFile(join(dir, 'fail.yaml'), UPLOAD('none'));
  await writeFile(join(dir, 'typo.yaml'), UPLOAD('kill').replace('expect: { action:', 'expect: { actoin:'));
  await writeFile(join(dir, 'ftp.yaml'), UPLOAD('kill').replace('duration: 2m,', 'protocol: ftp, duration: 2m,'));
  await writeFile(join(dir, 'negative.yaml'), UPLOAD('kill').replace('duration: 2m,', 'repeat: -3, duration: 2m,'));
  await writeFile(join(dir, 'broken.yaml'), 'id: T9\nkind: [\n');
  await writeFile(join(dir, 'corroborate.yaml'), CORROBORATE_POLICY);
  await writeFile(join(dir, 'late.yaml'), LATE_CORROBORATION);
  const rec = {
    id: 'x1',
    protocol: 'connect',
    client: { ip: '10.1.1.1', port: 5000 },
    identity: { user: 'bob', host: 'ws9', roles: [], process: null },
    destination: { host: 'drop.example.net', ip: '198.51.100.9', port: 443 },
    startedAt: '2026-03-04T12:00:00.000Z',
    durationMs: 120_000,
    bytesOut: 80 * 1024 * 1024,
    bytesIn: 1000,
    verdict: 'allow',
    closeReason: 'client-closed',
  };
  await writeFile(join(dir, 'flows.jsonl'), `${JSON.stringify(rec)}\n${JSON.stringify({ ...rec, id: 'x2', intermediate: true })}\n`);
  // What a gateway on OLD_POLICY wrote: bob's CONNECT to api.example.com allowed, his CONNECT to
  // drop.example.net refused (403 not-allowlisted), and an unauthenticated attempt (407).
  const refusedAt = { ...rec, durationMs: 0, bytesOut: 0, bytesIn: 0, verdict: 'block', reason: 'not-allowlisted', closeReason: 'not-allowlisted' };
  const lines = [
    { ...rec, id: 'r1', destination: { host: 'api.example.com', ip: '198.51.100.10', port: 443 }, bytesOut: 2000, bytesIn: 9000 },
    { ...refusedAt, id: 'r2' },
    { ...refusedAt, id: 'r3', identity: { user: null, host: null, roles: [], process: null }, destination: { host: 'other.example.net', ip: null, port: 443 }, reason: 'auth-required', closeReason: 'auth-required' },
    // A SOCKS5 login refused at RFC 1929: no destination at all (docs/spec-notes.md).
    { ...refusedAt, id: 'r4', protocol: 'socks5', identity: { user: null, host: null, roles: [], process: null }, destination: { host: null, ip: null, port: null }, reason: 'auth-required', closeReason: 'auth-required' },
    { ...refusedAt, id: 'r5', destination: { host: null, ip: null, port: null }, reason: 'bad-request', closeReason: 'bad-request' },
  ];
  await writeFile(join(dir, 'refused.jsonl'), lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function io() {
  let out = '';
  let err = '';
  return {
    io: { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } },
    out: () => out,
    err: () => err,
  };
}

describe('egressgate replay', () => {
  it.each([
    { name: 'no config', argv: ['x.yaml'] },
    { name: 'no input', argv: ['--config', 'p.yaml'] },
    { name: 'unknown flag', argv: ['--config', 'p.yaml', '--bogus', 'x.yaml'] },
    { name: 'bad mode', argv: ['--config', 'p.yaml', '--mode', 'loud', 'x.yaml'] },
    { name: 'bad step', argv: ['--config', 'p.yaml', '--step-ms', '0', 'x.yaml'] },
  ])('usage error exits 2: $name', async ({ argv }) => {
    const c = io();
    expect(await run(argv, c.io)).toBe(2);
    expect(c.err()).toMatch(/egressgate replay: /);
  });

  it('exit 0 when the scenario is as expected; prints the alert and the table', async () => {
    const c = io();
    expect(await run(['--config', join(dir, 'policy.yaml'), join(dir, 'pass.yaml')], c.io)).toBe(0);
    expect(c.out()).toMatch(/an0080\.bulk-upload \w+ kill ws1\/u\/curl -> upload\.example\.org:443/);
    expect(c.out()).toMatch(/T1\s+allowlist\s+kill an0080\.bulk-upload\s+kill an0080\.bulk-upload/);
    expect(c.out()).toMatch(/bytes past a kill budget: 0/);
  });

  it('a bulk upload corroborated after its connect is cut at the budget: 0 bytes past it, as the gateway does', async () => {
    const c = io();
    expect(await run(['--config', join(dir, 'corroborate.yaml'), '--single', join(dir, 'late.yaml')], c.io)).toBe(0);
    expect(c.out()).toMatch(/\[T3\] an0081\.scan \w+ block ws9\/carol\/python3/);
    expect(c.out()).toMatch(/\[T3\] an0080\.bulk-upload \w+ kill ws9\/carol\/python3 -> upload\.example\.net:443: flow sent 50\.0 MiB/);
    expect(c.out()).toMatch(/T3\s+allowlist\s+kill an0080\.bulk-upload\s+kill an0080\.bulk-upload\s+\w+\s+63s\s+0\s+ok/);
    expect(c.out()).toMatch(/bytes past a kill budget: 0\n/);
  });

  it('exit 1 when a scenario is not as expected', async () => {
    const c = io();
    expect(await run(['--config', join(dir, 'policy.yaml'), '-q', join(dir, 'fail.yaml')], c.io)).toBe(1);
    expect(c.out()).toMatch(/FAIL/);
  });

  it('monitor mode records would-kill and lets the bytes through', async () => {
    const c = io();
    expect(await run(['--config', join(dir, 'policy.yaml'), '--mode', 'monitor', join(dir, 'pass.yaml')], c.io)).toBe(0);
    expect(c.out()).toMatch(/an0080\.bulk-upload \w+ would-kill/);
  });

  it('replays a flow log and prints its alerts', async () => {
    const c = io();
    expect(await run(['--config', join(dir, 'policy.yaml'), join(dir, 'flows.jsonl')], c.io)).toBe(0);
    expect(c.out()).toMatch(/an0080\.bulk-upload .* ws9\/bob\/- -> drop\.example\.net:443/);
  });

  it('--against lists the connect-time verdicts a policy change turns', async () => {
    const c = io();
    const code = await run(['--config', join(dir, 'policy.yaml'), '--against', join(dir, 'old.yaml'), '-q', join(dir, 'pass.yaml'), join(dir, 'flows.jsonl')], c.io);
    expect(code).toBe(0);
    expect(c.out()).toMatch(/policy change turns 2 of 2 distinct connections/);
    expect(c.out()).toMatch(/upload\.example\.org:443 \(connect\): block \(not-allowlisted\) -> allow \(allowed\)/);
  });
});

describe('egressgate replay: a malformed scenario file', () => {
  it.each([
    { file: 'typo.yaml', error: /typo\.yaml: T1\.expect\.actoin: unknown key \(allowed here: action, detectors, maxSeverity\)/ },
    { file: 'ftp.yaml', error: /ftp\.yaml: T1\.connections\[0\]\.protocol: connect\|http\|socks5\|socks5-udp, got "ftp"/ },
    { file: 'negative.yaml', error: /negative\.yaml: T1\.connections\[0\]\.repeat: expected an integer ≥ 1, got -3/ },
    { file: 'broken.yaml', error: /broken\.yaml: not YAML: .*line 3/ },
  ])('$file is a usage error naming the file and the path (exit 2), nothing scored', async ({ file, error }) => {
    const c = io();
    expect(await run(['--config', join(dir, 'policy.yaml'), join(dir, 'pass.yaml'), join(dir, file)], c.io)).toBe(2);
    expect(c.err()).toMatch(error);
    expect(c.out()).toBe('');
  });
});

describe('egressgate replay --against over a flow log', () => {
  it('lists a connection the old policy refused that the new one lets through', async () => {
    const c = io();
    const code = await run(['--config', join(dir, 'policy.yaml'), '--against', join(dir, 'old.yaml'), '-q', join(dir, 'refused.jsonl')], c.io);
    expect(code).toBe(0);
    // api.example.com is allowed by both; the refused drop.example.net turns; the 407 has no identity to judge.
    expect(c.out()).toMatch(/policy change turns 1 of 2 distinct connections:\n {2}ws9\/bob -> drop\.example\.net:443 \(connect\): block \(not-allowlisted\) -> allow \(allowed\)\n/);
    expect(c.out()).not.toMatch(/other\.example\.net/);
  });
});

describe('scenario parsing', () => {
  it.each([
    ['{i}', 7, '7'],
    ['{i%1024+1}', 1023, '1024'],
    ['10.20.{i/1024%250}.{i%250+1}', 2050, '10.20.2.51'],
    ['host{i+1}.example', 0, 'host1.example'],
  ])('expand(%s, %i) = %s', (t, i, want) => {
    expect(expand(t, i)).toBe(want);
  });
  it('units', () => {
    expect(parseDuration('90s', 'p')).toBe(90_000);
    expect(parseDuration('1.5h', 'p')).toBe(5_400_000);
    expect(parseBytes('800MiB', 'p')).toBe(800 * 1024 * 1024);
    expect(parseBytes('5KB', 'p')).toBe(5000);
    expect(() => parseBytes('lots', 'x.bytesOut')).toThrow(/x\.bytesOut/);
  });
  it('errors name the path', () => {
    expect(() => parseScenario('id: Z\nkind: odd\nstart: 2026-01-01T00:00:00Z', 'z.yaml')).toThrow(/Z\.kind/);
    expect(() => parseScenario(UPLOAD('kill').replace('identity: u,', 'identity: nobody,'), 'z.yaml')).toThrow(/unknown identity nobody/);
  });
});

// Regression: a scenario allowlist adding a role named "constructor" took Object's constructor for an
// existing role and threw; "__proto__" never reached validation.
describe('configWith: scenario roles are plain names', () => {
  const base = loadConfig('roles: { dev: { allow: [] } }\n');
  it('adds a role named "constructor"; refuses "__proto__" with the validator\'s error', () => {
    if (!base.ok) throw new Error('base config invalid');
    const add = (name: string) => JSON.parse(`{"roles": {${JSON.stringify(name)}: {"allow": [{"host": "a.example.com"}]}}}`) as Record<string, unknown>;
    const c = configWith(base.config, [add('constructor')]);
    expect(Object.keys(c.roles)).toEqual(['dev', 'constructor']);
    expect(c.roles['constructor']?.allow).toEqual([{ host: 'a.example.com' }]);
    expect(() => configWith(base.config, [add('__proto__')])).toThrow(/roles\.__proto__: the name "__proto__" is reserved/);
  });
});
