import { describe, expect, it } from 'vitest';
import { Flow, type FlowInit } from '../../../gateway/flow/flow.ts';
import type { ProcessInfo } from '../../../policy/types.ts';

const proc: ProcessInfo = {
  pid: 4242,
  name: 'curl',
  exe: '/usr/bin/curl',
  cmdline: 'curl -H "X-A: \\"q\\"" https://example.com/ \u0001 caf\u00e9 \u2028 \ud83d\ude00',
  user: 'alice',
  uid: 1000,
  loginuid: 4294967295,
  ppid: 1,
  parentName: 'bash',
  parentExe: null,
  source: 'agent',
};

function make(i: number): Flow {
  const init: FlowInit = {
    protocol: (['http', 'connect', 'socks5', 'socks5-udp'] as const)[i % 4] ?? 'http',
    listener: i % 2 === 0 ? 'http' : 'socks',
    client: i % 3 === 0 ? { ip: '2001:db8::7', port: 40000 + i } : { ip: '10.1.2.3', port: 50000 + i },
    identity: {
      user: i % 5 === 0 ? null : `user-${i} "quoted" \\ ü`,
      host: i % 4 === 0 ? null : `ws-${i}`,
      roles: i % 2 === 0 ? ['dev', 'ops'] : [],
      process: i % 3 === 1 ? proc : null,
    },
    // Every 11th: a SOCKS5 login refused before its request, which named no destination.
    destination: i % 11 === 10 ? { host: null, ip: null, port: null } : { host: i % 6 === 0 ? 'xn--bcher-kva.example' : `d${i}.example.net`, ip: null, port: 443 },
    ...(i % 7 === 0 ? { startedAt: 1_764_000_000_000 + i } : {}),
  };
  const f = new Flow(`id-${i}`, init, 1_764_000_000_500 + i * 37);
  if (i % 4 !== 3 && f.destination.host !== null) f.destination = { ...f.destination, ip: i % 3 === 0 ? '2001:db8::1' : '203.0.113.9' };
  f.bytesOut = i * 1000;
  f.bytesIn = i * 7;
  f.lastActivityAt = f.startedAt + i;
  if (i % 2 === 0) f.applyDecision({ verdict: 'would-block', reason: 'detector', detector: 'an0081.scan', mode: 'monitor', matchedRule: { role: 'dev', index: 3, entry: 'host=*.example.com ports=443' }, reasons: ['fan-out: "12" hosts', 'x\ny'] }, false);
  else f.applyDecision({ verdict: 'allow', reason: 'allowed', detector: null, mode: 'enforce', matchedRule: null, reasons: [] }, false);
  if (i % 3 === 2) f.isUnattributed = true;
  // Every 4th through a parent proxy (its record's `upstream`), one with a name JSON must escape.
  if (i % 4 === 1) f.upstream = i % 8 === 1 ? 'http://10.0.0.5:3128' : 'socks5://[2001:db8::9]:1080';
  if (i % 5 !== 4) {
    f.state = 'closed';
    f.closeReason = i % 2 === 0 ? 'closed' : 'client-reset';
    f.endedAt = f.startedAt + 1234 + i;
  }
  return f;
}

describe('Flow.toJsonLine', () => {
  it('is exactly JSON.stringify(toRecord()) for every field shape, live and closed, interim or not', () => {
    for (let i = 0; i < 60; i++) {
      const f = make(i);
      const now = f.startedAt + 99_999;
      for (const intermediate of [false, true]) {
        expect(f.toJsonLine(now, intermediate), `flow ${i} intermediate=${intermediate}`).toBe(JSON.stringify(f.toRecord(now, intermediate)));
      }
    }
  });

  it('writes the same timestamps as Date#toISOString across seconds, days, years and odd dates', () => {
    // The per-second text cache in isoString must never hand out another second's prefix.
    const base = Date.UTC(2026, 11, 31, 23, 59, 58, 990);
    const times = [base, base + 9, base + 10, base + 1009, base + 1010, base + 2010, base, base + 1_000_000, -1, -1001, 0, 253_402_300_799_999, 253_402_300_800_000];
    for (const t0 of times) {
      for (const t1 of times) {
        const f = make(2);
        (f as { startedAt: number }).startedAt = t0;
        f.lastActivityAt = t1;
        f.endedAt = t1;
        const rec = JSON.parse(f.toJsonLine(t1)) as { startedAt: string; lastActivityAt: string; endedAt: string };
        expect([rec.startedAt, rec.lastActivityAt, rec.endedAt]).toEqual([new Date(t0).toISOString(), new Date(t1).toISOString(), new Date(t1).toISOString()]);
      }
    }
  });

  it('writes each identity as itself when flows with the same roles differ in user, host or process', () => {
    const roles = ['dev'];
    const ids = [
      { user: 'a', host: 'h', roles, process: null },
      { user: 'b', host: 'h', roles, process: null },
      { user: 'b', host: null, roles, process: null },
      { user: 'b', host: null, roles, process: proc },
      { user: 'a', host: 'h', roles: ['dev'], process: null },
    ];
    for (const identity of [...ids, ...ids.reverse()]) {
      const f = make(1);
      f.identity = identity;
      expect(JSON.parse(f.toJsonLine(f.startedAt)).identity).toEqual(identity);
    }
  });

  it('writes shared decisions and repeated strings as JSON.stringify does, whichever flow came first', () => {
    const shared = Object.freeze({
      verdict: 'allow' as const,
      reason: 'allowed' as const,
      detector: null,
      mode: 'enforce' as const,
      matchedRule: Object.freeze({ role: 'dev', index: 0, entry: 'host="odd\\name" ports=443' }),
      reasons: Object.freeze(['allowed by role dev allow[0]: "quoted" \\ \u2028']),
    });
    const other = { ...shared, reasons: ['other reason'], matchedRule: { role: 'ops', index: 1, entry: 'cidr 0.0.0.0/0' } };
    for (let i = 0; i < 6; i++) {
      const f = make(i * 4 + 1);
      f.applyDecision(i % 3 === 2 ? other : shared, true);
      f.destination = { host: i % 2 === 0 ? 'same.example' : 'quo"te\\d.example', ip: '203.0.113.9', port: 443 };
      f.closeReason = i % 2 === 0 ? 'closed' : 'client "reset"';
      expect(f.toJsonLine(f.startedAt + 9)).toBe(JSON.stringify(f.toRecord(f.startedAt + 9)));
    }
  });

  it('writes a decision that is not frozen as it is now, not as it was first written', () => {
    const reasons = ['first'];
    const f = make(5);
    f.applyDecision({ verdict: 'block', reason: 'not-allowlisted', detector: 'policy.deny', mode: 'enforce', matchedRule: null, reasons }, true);
    expect(JSON.parse(f.toJsonLine(f.startedAt)).reasons).toEqual(['first']);
    reasons.push('second');
    expect(f.toJsonLine(f.startedAt)).toBe(JSON.stringify(f.toRecord(f.startedAt)));
  });

  it('parses back to the record', () => {
    const f = make(8);
    expect(JSON.parse(f.toJsonLine(f.startedAt + 5))).toEqual(JSON.parse(JSON.stringify(f.toRecord(f.startedAt + 5))));
  });
});
