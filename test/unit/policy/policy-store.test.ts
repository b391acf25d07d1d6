import { describe, expect, it } from 'vitest';
import { type PolicyChange, PolicyStore } from '../../../gateway/policy-store.ts';
import { defaultConfig } from '../../../policy/config.ts';
import type { ConnectFacts, PolicySnapshot } from '../../../policy/types.ts';

const V1 = 'mode: monitor\nroles: { dev: { allow: [ { host: "*.one.example", ports: [443] } ] } }\ndefaultRoles: [dev]\n';
const V2 = 'mode: enforce\nroles: { dev: { allow: [ { host: "*.two.example", ports: [443] } ] } }\ndefaultRoles: [dev]\n';
const BAD = 'mode: enforce\nroles: { dev: { allow: [ { host: "*.two.example", ports: [0] } ] } }\n';

function verdict(snap: PolicySnapshot, host: string): string {
  const facts: ConnectFacts = {
    protocol: 'connect',
    clientIp: '127.0.0.1',
    clientPort: 1,
    identity: { user: null, host: null, roles: snap.rolesFor(null, null), process: null },
    destHost: host,
    destPort: 443,
    destIp: '93.184.216.34',
  };
  return snap.decide(facts, 0).verdict;
}

function clock() {
  let t = Date.parse('2026-01-01T00:00:00Z');
  return () => (t += 1000);
}

describe('PolicyStore', () => {
  it('starts at version 1 with a startup history entry', () => {
    const store = new PolicyStore(V1, { author: 'boot', source: 'file' }, { now: clock() });
    expect(store.current().version).toBe(1);
    expect(store.history()).toHaveLength(1);
    expect(store.history()[0]).toMatchObject({ version: 1, author: 'boot', source: 'file', configText: V1, time: '2026-01-01T00:00:01.000Z' });
  });

  it('throws at construction on invalid text (a bad start-up policy is fatal)', () => {
    expect(() => new PolicyStore(BAD)).toThrow(/roles\.dev\.allow\[0\]\.ports\[0\]/);
  });

  it('reload swaps the snapshot, bumps the version and emits change', () => {
    const store = new PolicyStore(V1);
    const old = store.current();
    const changes: PolicyChange[] = [];
    store.on('change', (c: PolicyChange) => changes.push(c));
    const r = store.reload(V2, { author: 'alice', source: 'api' });
    expect(r).toEqual({ ok: true, version: 2 });
    expect(store.current().version).toBe(2);
    expect(verdict(store.current(), 'a.two.example')).toBe('allow');
    expect(verdict(store.current(), 'a.one.example')).toBe('block');
    // a flow holding the old snapshot keeps deciding with it
    expect(verdict(old, 'a.one.example')).toBe('allow');
    expect(changes).toHaveLength(1);
    expect(changes[0]!.previous).toBe(old);
    expect(changes[0]!.entry).toMatchObject({ version: 2, author: 'alice', source: 'api' });
  });

  it('a failed reload changes nothing and says why', () => {
    const store = new PolicyStore(V1);
    const before = store.current();
    let events = 0;
    store.on('change', () => events++);
    const r = store.reload(BAD, { author: 'mallory' });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.errors.map((e) => e.path)).toEqual(['roles.dev.allow[0].ports[0]']);
    expect(store.current()).toBe(before);
    expect(store.history()).toHaveLength(1);
    expect(events).toBe(0);
    // the next good reload gets the next number: failures do not burn versions
    expect(store.reload(V2)).toEqual({ ok: true, version: 2 });
  });

  it('reloads from a Config object too', () => {
    const store = new PolicyStore(defaultConfig());
    const c = defaultConfig();
    c.mode = 'enforce';
    expect(store.reload(c, { author: 'api', source: 'api' })).toEqual({ ok: true, version: 2 });
    expect(store.current().config.mode).toBe('enforce');
    expect(store.reload({ mode: 'loud' }).ok).toBe(false);
  });

  it('rollback restores an old version as a new one', () => {
    const store = new PolicyStore(V1);
    store.reload(V2);
    const r = store.rollback(1, { author: 'ops' });
    expect(r).toEqual({ ok: true, version: 3 });
    expect(verdict(store.current(), 'a.one.example')).toBe('allow');
    expect(store.history().at(-1)).toMatchObject({ version: 3, source: 'rollback', author: 'ops', restoredFrom: 1, configText: V1 });
    const missing = store.rollback(99);
    expect(missing.ok).toBe(false);
    expect(store.current().version).toBe(3);
  });

  it('keeps the last 20 versions', () => {
    const store = new PolicyStore(V1);
    for (let i = 0; i < 25; i++) expect(store.reload(i % 2 ? V1 : V2).ok).toBe(true);
    const versions = store.history().map((h) => h.version);
    expect(versions).toHaveLength(20);
    expect(versions[0]).toBe(7);
    expect(versions.at(-1)).toBe(26);
    expect(store.rollback(3).ok).toBe(false);
  });

  it('runtime mode override: set, clear, event; monitor is an emergency brake over role overrides', () => {
    const store = new PolicyStore('mode: monitor\nroles: { ci: { mode: enforce, allow: [] }, dev: { allow: [] } }\n');
    const seen: unknown[] = [];
    store.on('mode', (m) => seen.push(m));
    expect(store.modeOverride()).toBeNull();
    store.setMode('enforce', 'ops');
    expect(store.globalMode()).toBe('enforce');
    expect(store.current().modeFor(['dev'], store.modeOverride())).toBe('enforce');
    store.setMode('monitor', 'ops');
    expect(store.current().modeFor(['ci'], store.modeOverride())).toBe('monitor');
    expect(store.current().modeFor(['dev'], store.modeOverride())).toBe('monitor');
    store.setMode(null);
    expect(store.globalMode()).toBe('monitor');
    expect(seen).toHaveLength(3);
  });
});
