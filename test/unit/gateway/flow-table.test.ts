import { describe, expect, it } from 'vitest';
import { communityId } from '../../../gateway/flow/community-id.ts';
import type { FlowRecord } from '../../../gateway/flow/flow.ts';
import { FlowTable } from '../../../gateway/flow/flow-table.ts';
import type { FlowSink } from '../../../gateway/flow/flow-log.ts';

function table(now: { t: number }, opts: { keepClosed?: number; interimSec?: number } = {}) {
  const written: FlowRecord[] = [];
  const sink: FlowSink = { write: (r) => written.push(r), flush: async () => {} };
  const flows = new FlowTable({ sink, now: () => now.t, keepClosed: opts.keepClosed, interimSec: opts.interimSec ?? 60 });
  return { flows, written };
}

const init = (port: number, user: string | null = null) => ({
  protocol: 'connect' as const,
  listener: 'http' as const,
  client: { ip: '127.0.0.1', port },
  identity: { user, host: null, roles: [], process: null },
  destination: { host: 'example.test', ip: null, port: 443 },
});

describe('FlowTable', () => {
  it('gives the requests of one keep-alive connection the Community ID of their own 5-tuple', () => {
    const now = { t: 1_000_000 };
    const { flows, written } = table(now);
    // Same client address, origins changing and coming back; then another client port.
    const hops: Array<[number, string, number]> = [
      [41000, '203.0.113.5', 80],
      [41000, '203.0.113.5', 80],
      [41000, '203.0.113.6', 80],
      [41000, '203.0.113.6', 8080],
      [41000, '203.0.113.5', 80],
      [41001, '203.0.113.5', 80],
      [41000, '2001:db8::5', 80],
    ];
    for (const [port, ip, dport] of hops) {
      const f = flows.open({ ...init(port), protocol: 'http' as const, destination: { host: 'origin.test', ip: null, port: dport } });
      flows.setDestinationIp(f, ip);
      flows.close(f, 'closed');
    }
    expect(written.map((r) => r.communityId)).toEqual(hops.map(([port, ip, dport]) => communityId('tcp', '127.0.0.1', port, ip, dport)));
    expect(new Set(written.map((r) => r.communityId)).size).toBe(5);
  });

  it('writes exactly one record per closed flow, with duration and counters', () => {
    const now = { t: 1_000_000 };
    const { flows, written } = table(now);
    const f = flows.open(init(5000));
    flows.setDestinationIp(f, '127.0.0.9');
    f.bytesOut += 10;
    f.bytesIn += 20;
    now.t += 1500;
    flows.close(f, 'closed');
    flows.close(f, 'again');
    expect(written).toHaveLength(1);
    expect(written[0]).toMatchObject({ id: f.id, bytesOut: 10, bytesIn: 20, durationMs: 1500, state: 'closed', closeReason: 'closed' });
    expect(written[0]?.communityId).toMatch(/^1:/);
    expect(flows.activeCount).toBe(0);
  });

  it('writes interim records for long flows on the sweep', () => {
    const now = { t: 0 };
    const { flows, written } = table(now, { interimSec: 1 });
    const f = flows.open(init(5001));
    f.bytesOut = 5;
    now.t = 1000;
    flows.sweep();
    expect(written).toEqual([expect.objectContaining({ id: f.id, intermediate: true, bytesOut: 5, state: 'active' })]);
    expect(written[0]?.lastActivityAt).toBe(new Date(1000).toISOString());
  });

  it('attributes a process that was reported before its flow opened', () => {
    const now = { t: 0 };
    const { flows } = table(now);
    const proc = { pid: 42, name: 'curl', exe: '/usr/bin/curl', cmdline: 'curl x', user: 'alice', uid: 1000, loginuid: 1000, ppid: 1, parentName: 'bash', parentExe: '/bin/bash' };
    expect(flows.attribute('127.0.0.1', 5002, 'tcp', proc)).toBeNull();
    const f = flows.open(init(5002));
    expect(f.identity.process?.pid).toBe(42);
  });

  // Regression: the client key was "ip:port" whatever the transport, so a report about a TCP socket
  // named the process of a UDP association from the same port number (another socket, maybe
  // another process), live or pending.
  it('keeps TCP and UDP client addresses apart: a report names only a flow of its own transport', () => {
    const now = { t: 0 };
    const { flows } = table(now);
    const proc = (pid: number, name: string) => ({ pid, name, exe: null, cmdline: null, user: null, uid: null, loginuid: null, ppid: null, parentName: null, parentExe: null });
    const udpInit = (port: number) => ({ ...init(port), protocol: 'socks5-udp' as const, listener: 'socks' as const });
    const tcp = flows.open(init(6000));
    const udp = flows.open(udpInit(6000));
    expect(flows.attribute('127.0.0.1', 6000, 'tcp', proc(1, 'backupd'))).toBe(tcp);
    expect(udp.identity.process).toBeNull();
    expect(flows.attribute('127.0.0.1', 6000, 'udp', proc(2, 'honeygain'))).toBe(udp);
    expect(tcp.identity.process?.name).toBe('backupd');
    expect(udp.identity.process?.name).toBe('honeygain');
    // Closing one leaves the other reachable by its own address.
    flows.close(tcp, 'closed');
    expect(flows.attribute('127.0.0.1', 6000, 'udp', proc(3, 'honeygain'))).toBe(udp);
    // Pending reports wait for a flow of their own transport only.
    expect(flows.attribute('127.0.0.1', 6001, 'tcp', proc(4, 'backupd'))).toBeNull();
    expect(flows.open(udpInit(6001)).identity.process).toBeNull();
    expect(flows.open(init(6001)).identity.process?.name).toBe('backupd');
  });

  // Regression: a report about a UDP association's TCP control connection joined no flow, and the
  // agent seldom sees the datagram socket (unconnected: no remote address), so the association
  // went unnamed.
  it("names a UDP association by its control connection's report, never over its datagram socket's", () => {
    const now = { t: 0 };
    const { flows } = table(now);
    const proc = (pid: number, name: string) => ({ pid, name, exe: null, cmdline: null, user: null, uid: null, loginuid: null, ppid: null, parentName: null, parentExe: null });
    const assoc = (port: number, controlPort: number) => flows.open({ ...init(port), protocol: 'socks5-udp', listener: 'socks', controlPort });
    // Live: the control's report names it; the datagram socket's report replaces it; a later control report does not.
    const a = assoc(7000, 7100);
    expect(flows.attribute('127.0.0.1', 7100, 'tcp', proc(1, 'python3'))).toBe(a);
    expect(a.identity.process?.name).toBe('python3');
    expect(flows.attribute('127.0.0.1', 7000, 'udp', proc(2, 'honeygain'))).toBe(a);
    expect(flows.attribute('127.0.0.1', 7100, 'tcp', proc(3, 'python3'))).toBe(a);
    expect(a.identity.process?.name).toBe('honeygain');
    // Before it opens: the datagram socket's report first, else the control's.
    expect(flows.attribute('127.0.0.1', 7201, 'tcp', proc(4, 'ctl'))).toBeNull();
    expect(flows.attribute('127.0.0.1', 7001, 'udp', proc(5, 'dgram'))).toBeNull();
    expect(assoc(7001, 7201).identity.process?.name).toBe('dgram');
    expect(flows.attribute('127.0.0.1', 7202, 'tcp', proc(6, 'ctl'))).toBeNull();
    expect(assoc(7002, 7202).identity.process?.name).toBe('ctl');
    // Closed: its control connection names nothing any more (kept for a flow not yet open).
    flows.close(a, 'closed');
    expect(flows.attribute('127.0.0.1', 7100, 'tcp', proc(7, 'later'))).toBeNull();
  });

  it('enforces per-identity concurrency and new-flow rate', () => {
    const now = { t: 0 };
    const { flows } = table(now);
    const a = flows.open(init(1, 'bob'));
    const b = flows.open(init(2, 'bob'));
    expect(flows.withinLimits(a, 2, 100)).toBe(true);
    const c = flows.open(init(3, 'bob'));
    expect(flows.withinLimits(c, 2, 100)).toBe(false);
    flows.close(c, 'rate-limit');
    flows.close(b, 'x');
    const d = flows.open(init(4, 'bob'));
    expect(flows.withinLimits(d, 10, 2)).toBe(false); // third new flow at once: the bucket holds 2
  });

  it('releases a flow from the identity it was counted under, even if its identity changed meanwhile', () => {
    const now = { t: 0 };
    const { flows } = table(now);
    const a = flows.open(init(1));
    // Authenticated mid-flow (e.g. a later Proxy-Authorization): the flow now names user carol.
    flows.setIdentity(a, { user: 'carol', host: null, roles: [], process: null });
    flows.close(a, 'closed');
    now.t += 1000;
    const b = flows.open(init(2));
    // Counted under the client address at open, released from it at close: b is alone.
    expect(flows.withinLimits(b, 1, 100)).toBe(true);
  });

  it('keeps a bounded ring of closed flows, newest first, with filters', () => {
    const now = { t: 0 };
    const { flows } = table(now, { keepClosed: 3 });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const f = flows.open(init(100 + i, i % 2 ? 'odd' : 'even'));
      ids.push(f.id);
      flows.close(f, 'closed');
    }
    expect(flows.list({ state: 'closed' }).map((r) => r.id)).toEqual([ids[4], ids[3], ids[2]]);
    expect(flows.list({ state: 'closed', user: 'odd' }).map((r) => r.id)).toEqual([ids[3]]);
    expect(flows.list({ state: 'closed', limit: 1, offset: 1 }).map((r) => r.id)).toEqual([ids[3]]);
  });

  it('kill() closes the flow with the reason and calls its abort once', () => {
    const now = { t: 0 };
    const { flows, written } = table(now);
    const f = flows.open(init(7));
    let aborted = 0;
    f.abort = () => aborted++;
    expect(flows.kill(f.id, 'admin')).toBe(true);
    expect(flows.kill(f.id, 'admin')).toBe(false);
    expect(aborted).toBe(1);
    expect(written[0]?.closeReason).toBe('admin');
  });

  it('live flows: by id and in opening order through churn (slots reused), attribution by client address', () => {
    const now = { t: 0 };
    const { flows } = table(now, { keepClosed: 0 });
    const open = new Map<number, ReturnType<typeof flows.open>>();
    let port = 10_000;
    // Open and close in an interleaved order so slots are freed and reused many times.
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 7; i++) {
        const f = flows.open(init(port));
        open.set(port++, f);
      }
      for (const [p, f] of [...open].filter(([p]) => p % 3 !== round % 3).slice(0, 5)) {
        flows.close(f, 'closed');
        open.delete(p);
      }
    }
    const live = flows.activeFlows();
    expect(live.size).toBe(open.size);
    expect(flows.activeCount).toBe(open.size);
    // Opening order, as the admin API lists it (newest first) and the sweep walks it.
    const expected = [...open.values()].sort((a, b) => a.startedAt - b.startedAt || (a.id < b.id ? -1 : 1)).map((f) => f.id);
    expect([...live.keys()]).toEqual(expected);
    expect([...live.values()].map((f) => f.id)).toEqual(expected);
    expect([...live].map(([id, f]) => [id, f.id])).toEqual(expected.map((id) => [id, id]));
    const seen: string[] = [];
    live.forEach((f, id) => {
      seen.push(`${id}=${f.id}`);
    });
    expect(seen).toEqual(expected.map((id) => `${id}=${id}`));
    expect(flows.list({ state: 'active', limit: 1000 }).map((r) => r.id)).toEqual([...expected].reverse());
    for (const f of open.values()) {
      expect(live.get(f.id)).toBe(f);
      expect(flows.get(f.id)).toBe(f);
      expect(live.has(f.id)).toBe(true);
    }
    // A closed flow is gone, by id and by client address.
    const [firstPort, first] = [...open][0] as [number, ReturnType<typeof flows.open>];
    flows.close(first, 'closed');
    expect(live.get(first.id)).toBeUndefined();
    expect(live.has(first.id)).toBe(false);
    const proc = { pid: 7, name: 'curl', exe: '/usr/bin/curl', cmdline: 'curl', user: 'u', uid: 1, loginuid: 1, ppid: 1, parentName: 'sh', parentExe: '/bin/sh' };
    expect(flows.attribute('127.0.0.1', firstPort, 'tcp', proc)).toBeNull();
    const [lastPort, last] = [...open].at(-1) as [number, ReturnType<typeof flows.open>];
    expect(flows.attribute('127.0.0.1', lastPort, 'tcp', proc)).toBe(last);
    expect(last.identity.process?.pid).toBe(7);
  });
});

describe('FlowTable legs (SOCKS5 UDP destinations)', () => {
  const udp = (port: number) => ({ ...init(port), protocol: 'socks5-udp' as const, listener: 'socks' as const });
  const dest = (port: number) => ({ host: '127.0.0.9', ip: '127.0.0.9', port });

  it('gives each destination its own leg up to the bound, then shares the newest; a closed flow frees its legs', () => {
    const now = { t: 1_000_000 };
    const written: FlowRecord[] = [];
    const flows = new FlowTable({ sink: { write: (r) => written.push(r), flush: async () => {} }, now: () => now.t, maxLiveLegs: 3 });
    const a = flows.open(udp(40000));
    const b = flows.open(udp(40001));
    if (a.destination.host === null || b.destination.host === null) throw new Error('routed flows expected');
    const a1 = flows.addLeg(a, dest(1), null);
    const a2 = flows.addLeg(a, dest(2), null);
    const b1 = flows.addLeg(b, dest(3), null);
    expect(new Set([a1.key, a2.key, b1.key]).size).toBe(3);
    // At the bound: b's next destination shares b's newest leg, a's shares a's.
    expect(flows.addLeg(b, dest(4), null)).toBe(b1);
    expect(flows.addLeg(a, dest(5), null)).toBe(a2);
    expect(b.legs).toEqual([b1]);
    flows.close(a, 'closed');
    expect(a.legs).toBeNull();
    // a's two legs are free again.
    const b2 = flows.addLeg(b, dest(6), null);
    expect(b2).not.toBe(b1);
    expect(b2.destination.port).toBe(6);
    expect(b.legs).toHaveLength(2);
  });

  it('walks pages with next: each flow of the first page\'s table once (but evicted closed ones), in its state then, whatever closes, opens or is evicted between pages', () => {
    const now = { t: 1_000_000 };
    const { flows } = table(now, { keepClosed: 3 });
    const open = Array.from({ length: 8 }, (_, i) => flows.open(init(42000 + i)));
    for (const i of [0, 1, 2]) flows.close(open[i] as (typeof open)[number], 'closed');
    const before = new Set([...flows.list({ limit: 1000 })].map((r) => r.id));
    const seen: string[] = [];
    let page = flows.page({ limit: 2 });
    // Between pages: a live flow closes (pushing one kept closed flow out), a new one opens.
    for (let round = 0; round < 10 && page.ok; round++) {
      seen.push(...page.flows.map((r) => r.id));
      // Each flow with the state it has now, a page's live flows before its closed ones.
      const states = page.flows.map((r) => r.state);
      expect(states.join(' '), 'live before closed').toMatch(/^(active ?)*(closed ?)*$/);
      for (const r of page.flows) expect(r.state).toBe(flows.get(r.id)?.state);
      if (page.next === null) break;
      const live = flows.list({ state: 'active', limit: 1000 });
      const victim = live[round % Math.max(1, live.length)];
      if (victim) flows.kill(victim.id, 'admin');
      flows.open(init(43000 + round));
      page = flows.page({ limit: 2, after: page.next });
    }
    expect(page.ok && page.next).toBe(null);
    expect(new Set(seen).size).toBe(seen.length);
    for (const id of seen) expect(before.has(id), id).toBe(true);
    // Every flow live at the start is listed (only evicted closed ones may be missing).
    for (const f of open.slice(3)) expect(seen).toContain(f.id);
    expect(flows.page({ after: 'nonsense' }).ok).toBe(false);
  });
});

