import { describe, expect, it } from 'vitest';
import { toAlert } from '../../../policy/detectors/alert.ts';
import { detectorSettings } from '../../../policy/detectors/defaults.ts';
import { detectionContext } from '../../../policy/detectors/context.ts';
import { registrableDomain } from '../../../policy/detectors/match.ts';
import { type Modifier, modifiersFor, score } from '../../../policy/detectors/scoring.ts';
import { DetectionState } from '../../../policy/detectors/state.ts';
import type { Finding } from '../../../policy/detectors/types.ts';
import { isOverUploadBudget, uploadBudgetFor } from '../../../policy/detectors/upload.ts';
import { DAY, MiB, WED_02, WED_10, facts, flow, ident, learnedState, proc, snap } from './fixtures.ts';

const names = (ms: Modifier[]) => ms.map((m) => `${m.delta > 0 ? '+' : '-'}${m.name}`).sort();

describe('modifiers', () => {
  const s = snap((c) => c.approvedUploadDestinations.push('backup.example.net'));
  const ctx = detectionContext(s);
  it.each([
    { name: 'rare destination', p: proc('git'), dest: 'new.example.org', port: 443, now: WED_10, known: [], want: ['+rare'] },
    { name: 'long-known destination', p: proc('git'), dest: 'git.example.com', port: 443, now: WED_10, known: ['example.com'], want: ['-known'] },
    { name: 'approved destination', p: proc('git'), dest: 'backup.example.net', port: 443, now: WED_10, known: ['example.net'], want: ['-approved', '-known'] },
    { name: 'off-hours', p: proc('git'), dest: 'git.example.com', port: 443, now: WED_02, known: ['example.com'], want: ['+off-hours', '-known'] },
    { name: 'unusual port', p: proc('git'), dest: 'git.example.com', port: 8443, now: WED_10, known: ['example.com'], want: ['+port', '-known'] },
    { name: 'ssh on 22 is standard', p: proc('ssh'), dest: 'git.example.com', port: 22, now: WED_10, known: ['example.com'], want: ['-known'] },
    {
      name: 'service context: client tool outside a login session',
      p: proc('curl', { loginuid: 4294967295, parentName: 'sh' }),
      dest: 'git.example.com',
      port: 443,
      now: WED_10,
      known: ['example.com'],
      want: ['+context', '-known'],
    },
    {
      name: 'daemon account (and lineage for a client tool)',
      p: proc('python3', { user: 'www-data' }),
      dest: 'git.example.com',
      port: 443,
      now: WED_10,
      known: ['example.com'],
      want: ['+context', '+lineage', '-known'],
    },
    { name: 'user-initiated client tool: no context step', p: proc('curl'), dest: 'git.example.com', port: 443, now: WED_10, known: ['example.com'], want: ['-known'] },
  ])('$name', ({ p, dest, port, now, known, want }) => {
    const state = learnedState(now, known);
    const got = modifiersFor({ identity: ident(p), idKey: 'k', destination: { host: dest, ip: null, port }, now, state, ctx });
    expect(names(got)).toEqual(want);
  });

  it('beacon: regular starts over >= 6 hours raise one step', () => {
    const state = learnedState(WED_10, ['example.com']);
    const who = ident(proc('curl'));
    const ids: string[] = [];
    for (let i = 0; i < 8; i++) {
      const now = WED_10 + i * 3_600_000;
      const f = flow(who, 'c2.example.com:443', { now, ageMs: 0, outcome: 'closed', endedAtMs: now });
      ids.push(f.id);
      state.observe([f], now, { slowResetMs: 900_000, isApproved: () => false });
    }
    expect(state.isBeacon('ws1|alice|curl', 'c2.example.com')).toBe(true);
    expect(state.isBeacon('ws1|alice|curl', 'other.example.org')).toBe(false);
  });
});

describe('score', () => {
  const settings = detectorSettings(snap().config, 'an0081.proxyjack'); // kill, corroborate: true
  const mod = (name: Modifier['name'], delta: 1 | -1, corroborates = true): Modifier => ({ name, delta, corroborates, reason: name });
  it.each([
    { name: 'alone it only flags', mods: [], others: [], want: { action: 'flag', severity: 'medium' } },
    { name: 'off-hours raises but does not corroborate', mods: [mod('off-hours', 1, false)], others: [], want: { action: 'flag', severity: 'high' } },
    { name: 'a modifier corroborates', mods: [mod('rare', 1)], others: [], want: { action: 'kill', severity: 'high' } },
    { name: 'a second detector of another kind corroborates', mods: [], others: ['an0080.exfil-tool'], want: { action: 'kill', severity: 'medium' } },
    { name: 'lowering modifiers floor at low', mods: [mod('known', -1, false), mod('approved', -1, false)], others: [], want: { action: 'flag', severity: 'low' } },
  ] as const)('$name', ({ mods, others, want }) => {
    const got = score({ detector: 'an0081.proxyjack', baseLevel: 1, modifiers: mods, settings, otherDetectors: others, gate: 'config', connectTime: false });
    expect({ action: got.action, severity: got.severity }).toEqual(want);
  });
  it('connect-time kill becomes block; minLevelForAction holds it to flag', () => {
    const lineage = detectorSettings(snap().config, 'an0080.lineage');
    const base = { detector: 'an0080.lineage', modifiers: [], settings: lineage, otherDetectors: [], gate: 'config', connectTime: true } as const;
    expect(score({ ...base, baseLevel: 2 }).action).toBe('block');
    expect(score({ ...base, baseLevel: 1, minLevelForAction: 2 }).action).toBe('flag');
  });
});

describe('uploadBudgetFor / isOverUploadBudget', () => {
  const s = snap();
  it.each([
    { name: 'ordinary destination: 50 MiB', f: facts(proc('git'), 'git.example.com:443'), want: 50 * MiB },
    { name: 'storage domain: 10 MiB', f: facts(proc('git'), 'content.dropboxapi.com:443'), want: 10 * MiB },
    { name: 'untrusted uploader: 10 MiB', f: facts(proc('powershell.exe', { parentName: 'winword.exe' }), 'api.example.com:443'), want: 10 * MiB },
    { name: 'approved destination: none', f: facts(proc('git'), 'git.example.com:443'), patch: true, want: null },
  ])('$name', ({ f, patch, want }) => {
    const sn = patch ? snap((c) => c.approvedUploadDestinations.push('*.example.com')) : s;
    expect(uploadBudgetFor(f, sn, WED_10, learnedState(WED_10, ['example.com', 'dropboxapi.com']))).toBe(want);
  });
  it('no budget when the action is not kill, or corroboration is missing', () => {
    const flagOnly = snap((c) => {
      c.detection.detectors['an0080.bulk-upload'] = { enabled: true, action: 'flag', corroborate: false };
    });
    expect(uploadBudgetFor(facts(proc('git'), 'git.example.com:443'), flagOnly, WED_10)).toBeNull();
    const corroborate = snap((c) => {
      c.detection.detectors['an0080.bulk-upload'] = { enabled: true, action: 'kill', corroborate: true };
    });
    const state = learnedState(WED_10, ['example.com']);
    expect(uploadBudgetFor(facts(proc('git'), 'git.example.com:443'), corroborate, WED_10, state)).toBeNull();
    expect(uploadBudgetFor(facts(proc('git'), 'git.rare.example:443'), corroborate, WED_10, state)).toBe(50 * MiB);
  });
  it('the ratio decides at the budget', () => {
    expect(isOverUploadBudget(10 * MiB, 100, 10 * MiB, s)).toBe(true);
    expect(isOverUploadBudget(10 * MiB, 5 * MiB, 10 * MiB, s)).toBe(false);
    expect(isOverUploadBudget(10 * MiB - 1, 0, 10 * MiB, s)).toBe(false);
  });
});

describe('toAlert', () => {
  const finding: Finding = {
    detector: 'an0080.bulk-upload',
    analytic: 'AN0080',
    severity: 'high',
    action: 'kill',
    flowIds: ['f1'],
    identity: { user: 'u', host: 'h', roles: ['r'], process: null, key: 'h|u|-' },
    destination: { host: 'x.example', ip: null, port: 443 },
    evidence: { bytesOut: 1 },
    reasons: ['why'],
    key: 'k',
  };
  it.each([
    { mode: 'monitor', action: 'kill', want: 'would-kill', enforced: false },
    { mode: 'enforce', action: 'kill', want: 'kill', enforced: true },
    { mode: 'monitor', action: 'block', want: 'would-block', enforced: false },
    { mode: 'monitor', action: 'flag', want: 'flag', enforced: false },
    { mode: 'enforce', action: 'flag', want: 'flag', enforced: false },
  ] as const)('$action in $mode -> $want', ({ mode, action, want, enforced }) => {
    const a = toAlert({ ...finding, action }, mode, 'a1', WED_10);
    expect(a).toMatchObject({ id: 'a1', action: want, enforced, analytic: 'AN0080', time: '2026-03-04T10:00:00.000Z', flowIds: ['f1'] });
    expect(a.identity).toEqual({ user: 'u', host: 'h', roles: ['r'], process: null });
  });
});

describe('DetectionState', () => {
  it('baselines round-trip through JSON', () => {
    const a = learnedState(WED_10, ['example.com']);
    const who = ident(proc('curl'));
    a.observe([flow(who, 'files.new.example:443', { now: WED_10, bytesOut: 5000 })], WED_10, { slowResetMs: 1, isApproved: () => false });
    const b = DetectionState.fromJSON(JSON.parse(JSON.stringify(a.toJSON())), { now: WED_10 + DAY });
    expect(b.firstSeenMs('www.example.com')).toBe(WED_10 - 90 * DAY);
    expect(b.firstSeenMs('files.new.example')).toBe(WED_10 - 1000);
    expect(b.hourlyVolumes('ws1|alice|curl')).toEqual([[Math.floor(WED_10 / 3_600_000), 5000]]);
    expect(b.learningStartedAtMs).toBe(WED_10 - 30 * DAY);
  });
  it('malformed JSON yields a fresh state', () => {
    const s = DetectionState.fromJSON({ version: 9 }, { now: WED_10 });
    expect(s.learningStartedAtMs).toBe(WED_10);
    expect(s.firstSeenMs('example.com')).toBeNull();
  });
  it('is bounded by maxTrackedDestinations', () => {
    const s = new DetectionState({ learningStartedAtMs: 0, maxTrackedDestinations: 20 });
    for (let i = 0; i < 100; i++) s.seedFirstSeen(`d${i}.example${i}.com`, i);
    expect(s.toJSON().firstSeen.length).toBeLessThanOrEqual(20);
  });
  it('registrable domains', () => {
    expect(registrableDomain('a.b.example.com')).toBe('example.com');
    expect(registrableDomain('x.corp.co.uk')).toBe('corp.co.uk');
    expect(registrableDomain('203.0.113.7')).toBe('203.0.113.7');
  });
});
