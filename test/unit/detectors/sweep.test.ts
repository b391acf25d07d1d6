import { describe, expect, it } from 'vitest';
import { DetectionState, emptyObserveResult, outcomeOfEnded, outcomeOfRefusal, outcomeOfUnconnected } from '../../../policy/detectors/state.ts';
import { identityKeyOf } from '../../../policy/detectors/match.ts';
import { evaluateSweep } from '../../../policy/detectors/sweep.ts';
import type { Finding, FlowView } from '../../../policy/detectors/types.ts';
import { MiB, WED_02, WED_10, flow, ident, learnedState, proc, snap } from './fixtures.ts';

/** Plays `make(i)` flows, one sweep per `stepMs`, and returns every finding. */
function play(
  count: number,
  stepMs: number,
  make: (i: number, now: number) => FlowView[],
  opts: { start?: number; known?: string[]; patch?: Parameters<typeof snap>[0] } = {},
): Finding[] {
  const start = opts.start ?? WED_10;
  const state = learnedState(start, opts.known ?? []);
  const s = snap(opts.patch);
  const out: Finding[] = [];
  for (let i = 0; i < count; i++) {
    const now = start + i * stepMs;
    out.push(...evaluateSweep(make(i, now), state, s, now));
  }
  return out;
}

const pick = (fs: Finding[]) => fs.map((f) => `${f.detector}:${f.action}`);

describe('folding at close, then the sweep', () => {
  it('counts every byte once: short flows folded as they end, a long one seen live and then at its end', () => {
    const who = ident(proc('curl'));
    const s = snap();
    const state = learnedState(WED_10);
    const opts = { slowResetMs: 900_000, isApproved: () => false };
    const key = identityKeyOf(who, '10.1.2.3');
    const long = flow(who, 'up.example:443', { now: WED_10, bytesOut: 1000 });
    // Sweep 1 sees the long flow live.
    evaluateSweep([long], state, s, WED_10, emptyObserveResult());
    // Between sweeps: three short flows and the long one end, each folded at its close.
    let folded = emptyObserveResult();
    const ended = [1, 2, 3].map((i) => flow(who, `s${i}.example:443`, { now: WED_10 + 100 * i, bytesOut: 10 * i, outcome: 'closed', endedAtMs: WED_10 + 100 * i, ageMs: 5 }));
    const longEnded = { ...long, bytesOut: 1500, outcome: 'closed' as const, endedAtMs: WED_10 + 500 };
    for (const v of [...ended, longEnded]) state.observeEnded(v, v.endedAtMs ?? WED_10, opts, folded);
    // Sweep 2 is handed the ended flows again (their per-flow checks) with what folding changed.
    evaluateSweep([...ended, longEnded], state, s, WED_10 + 1000, folded);
    folded = emptyObserveResult();
    // A sweep without `folded` (the replay driver's way) would observe them; here they are done.
    evaluateSweep([...ended, longEnded], state, s, WED_10 + 2000, folded);
    expect(state.windows(key)?.out.sumSince(WED_10 - 60_000)).toBe(1500 + 10 + 20 + 30);
  });

  it('observe (sweeps without folding, as replay runs them) still counts an ended flow passed twice once', () => {
    const who = ident(proc('curl'));
    const state = learnedState(WED_10);
    const opts = { slowResetMs: 900_000, isApproved: () => false };
    const ended = flow(who, 'once.example:443', { now: WED_10, bytesOut: 700, outcome: 'closed', endedAtMs: WED_10, ageMs: 5 });
    state.observe([ended], WED_10, opts);
    state.observe([ended], WED_10 + 1000, opts);
    expect(state.windows(identityKeyOf(who, '10.1.2.3'))?.out.sumSince(WED_10 - 60_000)).toBe(700);
  });
});

describe('an0081.scan', () => {
  const user = ident(proc('python3'));
  it('fast: 25 distinct failed ip:port within 5 min blocks at the 25th', () => {
    const fs = play(30, 1000, (i, now) => [
      flow(user, `45.0.${i}.9:443`, { now, outcome: 'failed', endedAtMs: now, ageMs: 0 }),
    ]);
    // Without a quarantine in between, each further failure re-emits the block (new flows).
    expect([...new Set(pick(fs))]).toEqual(['an0081.scan:block']);
    expect(fs[0]?.evidence['failedDestinations']).toBe(25);
  });
  it('port scan: 15 ports on one host', () => {
    const fs = play(20, 1000, (i, now) => [flow(user, `203.0.113.10:${i + 1}`, { now, outcome: 'refused', endedAtMs: now, ageMs: 0 })]);
    expect(fs[0]?.evidence['kind']).toBe('port-scan');
    expect(fs[0]?.evidence['maxFailedPortsOnOneHost']).toBe(15);
  });
  it('slow: one failure per 20 s is missed by the fast rule but caught at 25', () => {
    const fs = play(30, 20_000, (i, now) => [flow(user, `81.0.${i}.1:80`, { now, outcome: 'failed', endedAtMs: now, ageMs: 0 })]);
    expect(fs[0]?.evidence['kind']).toBe('slow-scan');
    expect(fs[0]?.evidence['slowFailedExternal']).toBe(25);
  });
  it('slow set resets after slowResetSec without failures', () => {
    const fs = play(40, 1_000_000, (i, now) => [flow(user, `81.0.${i}.1:80`, { now, outcome: 'failed', endedAtMs: now, ageMs: 0 })]);
    expect(fs).toEqual([]);
  });
  it('attempts refused by policy at an address (denied) count as failed, with the refused count; blocked ones do not', () => {
    const fs = play(30, 1000, (i, now) => [flow(user, `10.9.${i}.1:80`, { now, outcome: 'denied', endedAtMs: now, ageMs: 0 })]);
    expect(fs[0]?.evidence).toMatchObject({ kind: 'address-scan', failedDestinations: 25, refusedDestinations: 25, slowFailedInternal: 25 });
    expect(fs[0]?.reasons[0]).toMatch(/25 of the destinations within 300 s refused by policy/);
    // Mixed with failed dials, only the refused ones are in refusedDestinations.
    const mixed = play(30, 1000, (i, now) => [flow(user, `10.9.${i}.1:80`, { now, outcome: i % 2 === 0 ? 'denied' : 'failed', endedAtMs: now, ageMs: 0 })]);
    expect(mixed[0]?.evidence).toMatchObject({ failedDestinations: 25, refusedDestinations: 13 });
    expect(play(40, 1000, (i, now) => [flow(user, `10.9.${i}.1:80`, { now, outcome: 'blocked', endedAtMs: now, ageMs: 0 })])).toEqual([]);
  });
  it('denied attempts are no connections: no fan-out, domains, first-seen or bytes', () => {
    const state = learnedState(WED_10);
    const s = snap();
    for (let i = 0; i < 300; i++) {
      const now = WED_10 + i * 100;
      evaluateSweep([flow(user, `d${i}.example:443`, { now, outcome: 'denied', endedAtMs: now, ageMs: 0 })], state, s, now);
    }
    const w = state.windows(identityKeyOf(user, '10.1.2.3'));
    expect([w?.distinctHour.map.size, w?.domains.map.size, w?.perDest.size, w?.out.sumSince(0)]).toEqual([0, 0, 0, 0]);
    expect(state.firstSeenMs('d1.example')).toBeNull();
  });
  it('outcomeOfRefusal: deny-range at any address, not-allowlisted only at an IP literal, nothing else', () => {
    const cases: Array<[Parameters<typeof outcomeOfRefusal>[0], string, string | null, 'denied' | 'blocked']> = [
      ['deny-range', '10.0.0.1', '10.0.0.1', 'denied'],
      ['deny-range', 'intranet.example', '10.0.0.1', 'denied'],
      ['not-allowlisted', '203.0.113.9', '203.0.113.9', 'denied'],
      ['not-allowlisted', '::1', '::1', 'denied'],
      ['not-allowlisted', 'ads.example', '203.0.113.9', 'blocked'],
      ['not-allowlisted', 'ads.example', null, 'blocked'],
      ['quarantine', '10.0.0.1', '10.0.0.1', 'blocked'],
      ['detector', '10.0.0.1', '10.0.0.1', 'blocked'],
      ['rate-limit', '10.0.0.1', null, 'blocked'],
      ['auth-required', '10.0.0.1', null, 'blocked'],
      [null, '10.0.0.1', '10.0.0.1', 'blocked'],
    ];
    for (const [reason, host, ip, want] of cases) expect([reason, host, outcomeOfRefusal(reason, { host, ip, port: 80 })]).toEqual([reason, host, want]);
  });
  it('outcomeOfUnconnected: only the destination failing the dial (allowed flows), refusals as outcomeOfRefusal', () => {
    const cases: Array<[string | null, string | null, string]> = [
      ['connection-refused', '10.0.0.1', 'refused'],
      ['unreachable', '10.0.0.1', 'failed'],
      ['connect-timeout', '10.0.0.1', 'failed'],
      // The destination reset the dial before any data (research D3).
      ['upstream-reset', '10.0.0.1', 'failed'],
      ['dns-failed', null, 'blocked'],
      ['connect-timeout', null, 'blocked'],
      ['upstream-proxy', '10.0.0.1', 'blocked'],
      ['out-of-descriptors', '10.0.0.1', 'blocked'],
      ['out-of-sockets', '10.0.0.1', 'blocked'],
      ['admin', '10.0.0.1', 'blocked'],
      ['shutdown', '10.0.0.1', 'blocked'],
      ['client-reset', '10.0.0.1', 'blocked'],
      ['gateway-error', '10.0.0.1', 'blocked'],
      ['flow-log-unavailable', '10.0.0.1', 'blocked'],
      [null, '10.0.0.1', 'blocked'],
    ];
    const destination = (ip: string | null) => ({ host: 'svc.example', ip, port: 80 });
    for (const [closeReason, ip, want] of cases) {
      expect([closeReason, outcomeOfUnconnected({ verdict: 'allow', reason: 'allowed', closeReason, destination: destination(ip) })]).toEqual([closeReason, want]);
    }
    expect(outcomeOfUnconnected({ verdict: 'block', reason: 'deny-range', closeReason: 'deny-range', destination: destination('10.0.0.1') })).toBe('denied');
    expect(outcomeOfUnconnected({ verdict: 'block', reason: 'quarantine', closeReason: 'quarantine', destination: destination('10.0.0.1') })).toBe('blocked');
    // Monitor mode: a would-block flow's failed dial is folded as enforce mode's refusal of it.
    expect(outcomeOfUnconnected({ verdict: 'would-block', reason: 'not-allowlisted', closeReason: 'connection-refused', destination: destination('10.0.0.1') })).toBe('blocked');
    expect(outcomeOfUnconnected({ verdict: 'would-block', reason: 'quarantine', closeReason: 'connect-timeout', destination: destination('10.0.0.1') })).toBe('blocked');
    expect(outcomeOfUnconnected({ verdict: 'would-block', reason: 'deny-range', closeReason: 'connection-refused', destination: destination('10.0.0.1') })).toBe('denied');
  });
  it('outcomeOfEnded: a connected flow the destination reset before any payload is a failed attempt', () => {
    const flow = (closeReason: string, bytesOut: number, bytesIn: number) => ({ verdict: 'allow' as const, reason: 'allowed' as const, closeReason, destination: { host: 'svc.example', ip: '10.0.0.1', port: 80 }, bytesOut, bytesIn });
    expect(outcomeOfEnded(flow('upstream-reset', 0, 0), true)).toBe('failed');
    expect(outcomeOfEnded(flow('upstream-reset', 0, 1), true)).toBe('closed');
    expect(outcomeOfEnded(flow('upstream-reset', 1, 0), true)).toBe('closed');
    expect(outcomeOfEnded(flow('closed', 0, 0), true)).toBe('closed');
    expect(outcomeOfEnded(flow('client-reset', 0, 0), true)).toBe('closed');
    expect(outcomeOfUnconnected(flow('upstream-reset', 0, 1))).toBe('blocked');
  });
  it('DNS failures (no ip) do not count', () => {
    const fs = play(40, 1000, (i, now) => [
      { ...flow(user, `nx${i}.example:443`, { now, outcome: 'failed', endedAtMs: now, ageMs: 0 }), destination: { host: `nx${i}.example`, ip: null, port: 443 } },
    ]);
    expect(fs).toEqual([]);
  });
  it('expected scan sources are skipped', () => {
    const fs = play(
      30,
      1000,
      (i, now) => [flow(user, `10.0.${i}.9:443`, { now, outcome: 'failed', endedAtMs: now, ageMs: 0 })],
      { patch: (c) => c.expectedScanSources.push({ host: 'ws1' }) },
    );
    expect(fs).toEqual([]);
  });
  it('successful fan-out > 250 destinations/h only flags without corroboration; browsers are exempt', () => {
    const mk = (who: ReturnType<typeof ident>) => (i: number, now: number) => [
      flow(who, `www.s${i}.example:443`, { now, outcome: 'closed', endedAtMs: now, ageMs: 0, bytesIn: 1000, bytesOut: 100 }),
    ];
    expect(pick(play(260, 1000, mk(user)))).toEqual(['an0081.scan:flag']);
    expect(play(260, 1000, mk(ident(proc('chrome'))))).toEqual([]);
  });
  it('port fan-out: > 100 distinct ports on one address in 1 h flags (never blocks), a name by its address; an unnamed process counts, a browser not', () => {
    const mk = (who: ReturnType<typeof ident>, host = '203.0.113.7') => (i: number, now: number) => [
      flow(who, `${i % 2 === 0 ? host : 'svc.example'}:${1000 + i}`, { now, outcome: 'closed', endedAtMs: now, ageMs: 0, bytesIn: 10 }),
    ];
    // svc.example is 198.51.100.20 (fixtures): its ports count for that address, the literal's for its own.
    const found = play(203, 1000, mk(user, '198.51.100.20'));
    expect(pick(found)).toEqual(['an0081.scan:flag']);
    expect(found[0]?.evidence).toMatchObject({ kind: 'port-fan-out', address: '198.51.100.20', distinctPorts: 101, windowSec: 3600, threshold: 100 });
    expect(found[0]?.reasons[0]).toBe('port fan-out: 101 distinct ports on 198.51.100.20 in 1 h, > 100 (non-browser python3)');
    // 100 on each of two addresses: at the threshold, not over it.
    expect(play(200, 1000, mk(user))).toEqual([]);
    const single = (who: ReturnType<typeof ident>) => (i: number, now: number) => [flow(who, `203.0.113.7:${1000 + i}`, { now, outcome: 'closed', endedAtMs: now, ageMs: 0 })];
    expect(pick(play(101, 1000, single(ident(null))))).toEqual(['an0081.scan:flag']);
    expect(play(150, 1000, single(ident(proc('firefox'))))).toEqual([]);
    // 101 ports over more than an hour: the first ones have left the window.
    expect(play(101, 37_000, single(user))).toEqual([]);
    // The configured action (block) does not apply: flag only.
    expect(pick(play(101, 1000, single(user), { patch: (c) => (c.detection.detectors['an0081.scan'] = { enabled: true, corroborate: false, action: 'block', distinctPortsOnOneHostPerHour: 100 }) }))).toEqual(['an0081.scan:flag']);
  });
  it('the further destinations of one flow (a UDP association) count towards fan-out; its bytes are not counted again', () => {
    const state = learnedState(WED_10);
    const s = snap();
    const association = { ...flow(user, 'dns0.example:53', { now: WED_10, bytesOut: 600, bytesIn: 900 }), protocol: 'socks5-udp' as const };
    expect(evaluateSweep([association], state, s, WED_10, emptyObserveResult())).toEqual([]);
    const found: Finding[] = [];
    for (let i = 1; i <= 251; i++) {
      const folded = emptyObserveResult();
      const now = WED_10 + i * 1000;
      state.observeDestination({ ...association, destination: { host: `dns${i}.example`, ip: '198.51.100.53', port: 53 }, startedAtMs: now }, folded);
      found.push(...evaluateSweep([{ ...association, lastActivityAtMs: now }], state, s, now, folded));
    }
    expect(pick(found)).toEqual(['an0081.scan:flag']);
    expect(found[0]?.evidence).toMatchObject({ kind: 'fan-out', distinctDestinations: 251 });
    expect(state.windows(identityKeyOf(user, '10.1.2.3'))?.out.sumSince(WED_10 - 60_000)).toBe(600);
  });
});

describe('an0081.sustained and an0080.long-session', () => {
  it('sustained after 1 h at >= 8 kB/s; not before', () => {
    const who = ident(proc('wget'));
    const base = flow(who, 'releases.ubuntu.com:443', { now: WED_10, ageMs: 0 });
    const at = (ageMs: number) => ({ ...base, startedAtMs: WED_10, bytesIn: Math.round((ageMs / 1000) * 9000), lastActivityAtMs: WED_10 + ageMs });
    const state = learnedState(WED_10, ['ubuntu.com']);
    expect(evaluateSweep([at(59 * 60_000)], state, snap(), WED_10 + 59 * 60_000)).toEqual([]);
    const fs = evaluateSweep([at(61 * 60_000)], state, snap(), WED_10 + 61 * 60_000);
    expect(pick(fs)).toEqual(['an0081.sustained:flag']);
    expect(fs[0]?.severity).toBe('low'); // low base, long-known destination cannot go lower
  });
  it('long session to a first-seen destination flags; to a known one nothing', () => {
    const who = ident(proc('ssh', { parentName: 'bash' }));
    const mk = (host: string) => flow(who, `${host}:22`, { now: WED_10, ageMs: 2 * 3_600_000, bytesOut: 1000, bytesIn: 1000 });
    expect(pick(evaluateSweep([mk('vps.new.example')], learnedState(WED_10), snap(), WED_10))).toEqual(['an0080.long-session:flag']);
    expect(evaluateSweep([mk('bastion.corp.example')], learnedState(WED_10, ['corp.example']), snap(), WED_10)).toEqual([]);
  });
  it('long-session stays silent while the baseline is learning', () => {
    const who = ident(proc('ssh'));
    const f = flow(who, 'vps.new.example:22', { now: WED_10, ageMs: 2 * 3_600_000 });
    const learning = new DetectionState({ learningStartedAtMs: WED_10 - 86_400_000, maxTrackedIdentities: 100, maxTrackedDestinations: 100 });
    expect(evaluateSweep([f], learning, snap(), WED_10)).toEqual([]);
  });
});

describe('an0081.proxyjack', () => {
  // A relay: one tunnel (upload-heavy) plus many short download-heavy flows to distinct sites.
  const relay = (who: ReturnType<typeof ident>, tunnelHost: string) => (i: number, now: number): FlowView[] => [
    { ...flow(who, `${tunnelHost}:443`, { now, ageMs: 0 }), id: 'tunnel', startedAtMs: WED_10, bytesOut: i * 30_000 * 10, bytesIn: i * 5_000 * 10 },
    flow(who, `www.shop${i}.example:443`, { now, ageMs: 0, outcome: 'closed', endedAtMs: now, bytesOut: 5_000, bytesIn: 250_000 }),
  ];
  it('kills with a corroborating modifier (service context)', () => {
    const who = ident(proc('kworkerd', { exe: '/tmp/kworkerd', loginuid: 4294967295, user: 'root' }), 'srv3', null);
    const fs = play(120, 10_000, relay(who, 'relay.known.example'), { known: ['known.example'] });
    const pj = fs.filter((f) => f.detector === 'an0081.proxyjack');
    expect(pj[0]?.action).toBe('kill');
    expect(pj[0]?.flowIds).toContain('tunnel');
    expect(Number(pj[0]?.evidence['ratio'])).toBeGreaterThanOrEqual(0.5);
  });
  it('only flags when nothing corroborates (corroborate: true)', () => {
    const who = ident(proc('relayd', { loginuid: 1001 }), 'srv3', 'alice');
    const fs = play(120, 10_000, relay(who, 'relay.known.example'), { known: ['known.example'] });
    const pj = fs.filter((f) => f.detector === 'an0081.proxyjack');
    expect(pj.length).toBeGreaterThan(0);
    expect(pj.every((f) => f.action === 'flag')).toBe(true);
  });
  it('download-heavy browsing with many sites is not a relay', () => {
    const who = ident(proc('firefox'), 'ws1');
    const fs = play(120, 10_000, (i, now) => [flow(who, `www.s${i}.example:443`, { now, ageMs: 0, outcome: 'closed', endedAtMs: now, bytesOut: 5_000, bytesIn: 2_000_000 })]);
    expect(fs.filter((f) => f.detector === 'an0081.proxyjack')).toEqual([]);
  });
});

describe('an0080.bulk-upload', () => {
  const up = (who: ReturnType<typeof ident>, dest: string, out: number, inn = 1000) => flow(who, dest, { now: WED_10, ageMs: 60_000, bytesOut: out, bytesIn: inn });
  const run = (f: FlowView, known: string[] = [], patch?: Parameters<typeof snap>[0], now = WED_10) => pick(evaluateSweep([f], learnedState(now, known), snap(patch), now));
  const user = ident(proc('git', { parentName: 'bash' }));
  it.each([
    { name: 'below 50 MiB: nothing', f: up(user, 'git.example.com:443', 49 * MiB), known: ['example.com'], want: [] },
    { name: '50 MiB asymmetric: kill (SPEC default, no corroboration)', f: up(user, 'git.example.com:443', 50 * MiB), known: ['example.com'], want: ['an0080.bulk-upload:kill'] },
    { name: 'symmetric 60 MiB: nothing (ratio < 10)', f: up(user, 'git.example.com:443', 60 * MiB, 30 * MiB), known: ['example.com'], want: [] },
    { name: 'storage domain: 10 MiB triggers', f: up(user, 'content.dropboxapi.com:443', 11 * MiB), known: ['dropboxapi.com'], want: ['an0080.bulk-upload:kill'] },
  ])('$name', ({ f, known, want }) => {
    expect(run(f, known)).toEqual(want);
  });
  it('corroborate: true holds a behaviour-only upload to flag', () => {
    const patch = (c: ReturnType<typeof snap>['config']) => {
      c.detection.detectors['an0080.bulk-upload'] = { enabled: true, action: 'kill', corroborate: true };
    };
    expect(run(up(user, 'git.example.com:443', 60 * MiB), ['example.com'], patch)).toEqual(['an0080.bulk-upload:flag']);
    // …but a rare destination corroborates,
    expect(run(up(user, 'git.new.example:443', 60 * MiB), [], patch)).toContain('an0080.bulk-upload:kill');
    // …off-hours alone does not,
    expect(run(up(user, 'git.example.com:443', 60 * MiB), ['example.com'], patch, WED_02)).toEqual(['an0080.bulk-upload:flag']);
    // …and an untrusted uploader (lineage) is its own corroboration at the 10 MiB storage budget.
    const macro = ident(proc('powershell.exe', { parentName: 'winword.exe' }));
    expect(run(up(macro, 'api.example.com:443', 11 * MiB), ['example.com'], patch)).toEqual(['an0080.bulk-upload:kill']);
  });
  it('approved destinations and exceptions skip it', () => {
    expect(run(up(user, 'git.example.com:443', 60 * MiB), ['example.com'], (c) => c.approvedUploadDestinations.push('*.example.com'))).toEqual([]);
    expect(
      run(up(ident(proc('restic')), 's3.example.com:443', 60 * MiB), ['example.com'], (c) =>
        c.exceptions.push({ process: ['restic'], detectors: ['an0080.bulk-upload'] }),
      ),
    ).toEqual([]);
  });
});

describe('an0080.split-upload', () => {
  it('10 chunks of 5 MiB in an hour to one domain', () => {
    const who = ident(proc('curl'));
    const fs = play(12, 60_000, (_i, now) => [
      flow(who, 'vps.example-hosting.net:8443', { now, ageMs: 0, outcome: 'closed', endedAtMs: now, bytesOut: 5 * MiB, bytesIn: 1024 }),
    ]);
    const sp = fs.filter((f) => f.detector === 'an0080.split-upload');
    expect(sp.length).toBeGreaterThan(0);
    expect(sp[0]?.evidence['bytesOut']).toBe(50 * MiB); // fires at the 10th chunk, not before
    expect(sp[0]?.action).toBe('block'); // rare destination + port 8443 corroborate
  });
  it('a flow observed on every sweep is counted once (delta accounting)', () => {
    const who = ident(proc('curl'));
    const f = flow(who, 'vps.example-hosting.net:443', { now: WED_10, ageMs: 0, bytesOut: 30 * MiB, bytesIn: 1024 });
    const state = learnedState(WED_10);
    for (let i = 0; i < 5; i++) evaluateSweep([f], state, snap(), WED_10 + i * 1000);
    expect(state.windows([...['ws1|alice|curl']][0]!)?.perDest.get('example-hosting.net')?.out.sumSince(0)).toBe(30 * MiB);
  });
});

describe('grouping', () => {
  // Regression: grouping suppressed a repeat kill, so relay flows opened after the first kill (and
  // after the quarantine) were never killed for an hour.
  it('a repeat with no new flows is grouped; a kill naming a new flow is returned again', () => {
    const who = ident(proc('x', { exe: '/tmp/x', loginuid: 4294967295, user: 'root' }), 'srv3', null);
    const state = learnedState(WED_10);
    const s = snap();
    const big = (id: string, now: number): FlowView => ({
      ...flow(who, 'drop.new.example:443', { now, ageMs: 60_000, bytesOut: 60 * MiB, bytesIn: 1000 }),
      id,
    });
    const kills = (fs: ReturnType<typeof evaluateSweep>) => fs.filter((f) => f.action === 'kill').map((f) => f.flowIds.join(','));
    expect(kills(evaluateSweep([big('a', WED_10)], state, s, WED_10))).toEqual(['a']);
    expect(kills(evaluateSweep([big('a', WED_10 + 1000)], state, s, WED_10 + 1000))).toEqual([]);
    // bulk-upload keys per flow, so a new flow is a new finding anyway; split-upload groups per
    // destination and must still name the new flow with a fresh block.
    const fs = evaluateSweep([big('b', WED_10 + 2000)], state, s, WED_10 + 2000);
    expect(kills(fs)).toEqual(['b']);
    const split = fs.filter((f) => f.detector === 'an0080.split-upload');
    expect(split.map((f) => f.action)).toEqual(['block']);
    expect(evaluateSweep([big('b', WED_10 + 3000)], state, s, WED_10 + 3000).filter((f) => f.detector === 'an0080.split-upload')).toEqual([]);
    const again = evaluateSweep([big('c', WED_10 + 4000)], state, s, WED_10 + 4000).filter((f) => f.detector === 'an0080.split-upload');
    // It names every flow whose bytes are in the window, the new one last.
    expect(again.map((f) => f.flowIds)).toEqual([['a', 'b', 'c']]);
  });
});
