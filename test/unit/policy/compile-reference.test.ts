/**
 * The compiled indexes (global host Maps, CIDR prefix maps, role ranking) must pick exactly the
 * entry a naive reading of the policy picks: roles in the identity's order, entries in file order,
 * first match wins. Random policies and connections from a fixed seed, checked against a linear
 * reference that uses node:net BlockList for CIDRs.
 */
import { BlockList } from 'node:net';
import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../policy/compile.ts';
import { type AllowEntry, type Config, defaultConfig } from '../../../policy/config.ts';
import type { ConnectFacts, Protocol } from '../../../policy/types.ts';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const HOSTS = ['a.example.com', 'b.a.example.com', 'example.com', 'x.example.net', 'deep.x.example.net', 'other.org', '93.184.216.7'];
const PATTERNS = ['a.example.com', '*.example.com', '*.a.example.com', 'example.com', '*.example.net', 'x.example.net', 'other.org', '*', '93.184.216.7'];
const CIDRS = ['93.184.216.0/24', '93.184.0.0/16', '93.184.216.7/32', '8.8.8.0/24', '2606:4700::/32', '2606:4700:1::/48'];
const IPS = ['93.184.216.7', '93.184.216.9', '93.184.1.1', '8.8.8.8', '9.9.9.9', '2606:4700:1::5', '2606:4700:2::5', '2a00::1'];
const PORTS: Array<Array<number | string> | undefined> = [undefined, [443], [80, 443], ['8000-8099'], [22, '440-450']];
const PROTOCOLS: Array<'tcp' | 'udp' | undefined> = [undefined, undefined, 'tcp', 'udp'];
const CONN_PORTS = [22, 80, 443, 445, 8000, 8099, 8100];
const CONN_PROTOCOLS: Protocol[] = ['http', 'connect', 'socks5', 'socks5-udp'];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)]!;
}

function hostMatches(pattern: string, host: string): boolean {
  if (pattern === '*') return true;
  if (pattern.startsWith('*.')) return host.endsWith(pattern.slice(1)) && host.length > pattern.length - 1;
  return pattern === host;
}

function portMatches(ports: Array<number | string> | undefined, port: number): boolean {
  if (ports === undefined) return true;
  return ports.some((p) => {
    if (typeof p === 'number') return p === port;
    const [lo, hi] = p.split('-').map(Number) as [number, number];
    return port >= lo && port <= (hi ?? lo);
  });
}

const lists = new Map<string, BlockList>();
function blockList(cidr: string): BlockList {
  let bl = lists.get(cidr);
  if (bl === undefined) {
    bl = new BlockList();
    const [net, len] = cidr.split('/') as [string, string];
    bl.addSubnet(net, Number(len), net.includes(':') ? 'ipv6' : 'ipv4');
    lists.set(cidr, bl);
  }
  return bl;
}

function reference(config: Config, f: ConnectFacts): { role: string; index: number } | null {
  for (const role of f.identity.roles) {
    const allow = config.roles[role]?.allow ?? [];
    for (let i = 0; i < allow.length; i++) {
      const e = allow[i]!;
      let dest = false;
      if (e.host !== undefined) dest = hostMatches(e.host, f.destHost);
      else if (e.cidr !== undefined && f.destIp !== null) {
        dest = blockList(e.cidr).check(f.destIp, f.destIp.includes(':') ? 'ipv6' : 'ipv4');
      }
      const proto = e.protocol === undefined || (e.protocol === 'udp') === (f.protocol === 'socks5-udp');
      if (dest && proto && portMatches(e.ports, f.destPort)) return { role, index: i };
    }
  }
  return null;
}

describe('compiled decide() agrees with a linear reference', () => {
  it.each([1, 2, 3, 4, 5])('seed %i: 400 connections against a random policy', (seed) => {
    const r = rng(seed);
    const config = defaultConfig();
    config.deny.privateRanges = false;
    const roleNames = ['r0', 'r1', 'r2', 'r3', 'r4', 'r5'];
    for (const name of roleNames) {
      const allow: AllowEntry[] = [];
      const n = Math.floor(r() * 8);
      for (let i = 0; i < n; i++) {
        const e: AllowEntry = r() < 0.65 ? { host: pick(r, PATTERNS) } : { cidr: pick(r, CIDRS) };
        const ports = pick(r, PORTS);
        if (ports) e.ports = ports;
        const protocol = pick(r, PROTOCOLS);
        if (protocol) e.protocol = protocol;
        allow.push(e);
      }
      config.roles[name] = { allow };
    }
    const snap = compilePolicy(config);
    let allowed = 0;
    for (let k = 0; k < 400; k++) {
      const roles = roleNames.filter(() => r() < 0.3);
      const destHost = pick(r, HOSTS);
      const destIp = destHost === '93.184.216.7' ? destHost : r() < 0.2 ? null : pick(r, IPS);
      const facts: ConnectFacts = {
        protocol: pick(r, CONN_PROTOCOLS),
        clientIp: '10.0.0.1',
        clientPort: 1000 + k,
        identity: { user: null, host: null, roles, process: null },
        destHost,
        destPort: pick(r, CONN_PORTS),
        destIp,
      };
      const want = reference(config, facts);
      const got = snap.decide(facts, 0, 'enforce');
      const gotRule = got.matchedRule && { role: got.matchedRule.role, index: got.matchedRule.index };
      if (JSON.stringify(gotRule) !== JSON.stringify(want)) expect({ facts, got: gotRule }).toEqual({ facts, got: want });
      expect(got.verdict).toBe(want ? 'allow' : 'block');
      if (want) allowed++;
    }
    // The generator must exercise both outcomes, or the comparison proves little.
    expect(allowed).toBeGreaterThan(20);
    expect(allowed).toBeLessThan(380);
  });
});
