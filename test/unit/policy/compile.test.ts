import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../policy/compile.ts';
import { type Config, defaultConfig } from '../../../policy/config.ts';
import type { ConnectFacts, Mode, Protocol } from '../../../policy/types.ts';

function config(patch: Partial<Config> = {}): Config {
  const c = defaultConfig();
  c.roles = {
    developer: {
      allow: [
        { host: '*.example.com', ports: [443] },
        { host: 'git.example.org', ports: [22, 443] },
        { cidr: '203.0.113.0/24', ports: [443] },
        { host: 'bücher.de.' },
        { host: 'ranges.example.net', ports: ['8000-8099', 9000] },
        { cidr: '2001:db8:1::/48' },
        { host: 'dns.example.net', ports: [53], protocol: 'udp' },
        { host: 'tcp-only.example.net', protocol: 'tcp' },
      ],
    },
    ci: { mode: 'enforce', allow: [{ host: 'pkgs.example.net', ports: [80, 443] }] },
    open: { mode: 'monitor', allow: [{ host: '*' }] },
    empty: { allow: [] },
  };
  c.identity.users = [
    { name: 'alice', roles: ['developer'] },
    { name: 'bob', roles: ['ci'] },
  ];
  c.identity.hosts = [{ cidr: '10.1.0.0/16', name: 'build-farm', roles: ['ci'] }];
  return { ...c, ...patch };
}

function facts(roles: readonly string[], dest: string, destIp: string | null, protocol: Protocol = 'connect'): ConnectFacts {
  const i = dest.lastIndexOf(':');
  return {
    protocol,
    clientIp: '10.9.9.9',
    clientPort: 40000,
    identity: { user: null, host: null, roles, process: null },
    destHost: dest.slice(0, i),
    destPort: Number(dest.slice(i + 1)),
    destIp,
  };
}

describe('decide: allow entries', () => {
  const s = compilePolicy(config());
  const dev = ['developer'];
  const table: Array<[string, string, string | null, Protocol, string, number | null]> = [
    // [name, dest, destIp, protocol, verdict, matched index]
    ['wildcard one label', 'a.example.com:443', '93.184.216.34', 'connect', 'allow', 0],
    ['wildcard two labels', 'a.b.example.com:443', '93.184.216.34', 'connect', 'allow', 0],
    ['wildcard not apex', 'example.com:443', '93.184.216.34', 'connect', 'would-block', null],
    ['wildcard wrong port', 'a.example.com:80', '93.184.216.34', 'connect', 'would-block', null],
    ['exact, second port', 'git.example.org:22', '93.184.216.35', 'connect', 'allow', 1],
    ['exact, not subdomain', 'x.git.example.org:22', '93.184.216.35', 'connect', 'would-block', null],
    ['upper case + trailing dot', 'GIT.Example.ORG.:443', '93.184.216.35', 'connect', 'allow', 1],
    ['IDN entry vs punycode dest', 'xn--bcher-kva.de:8443', '93.184.216.36', 'connect', 'allow', 3],
    ['IDN dest in unicode', 'bücher.de:1', '93.184.216.36', 'connect', 'allow', 3],
    ['cidr v4 by address', 'anything.test:443', '203.0.113.9', 'connect', 'allow', 2],
    ['cidr v4 ip literal', '203.0.113.9:443', '203.0.113.9', 'connect', 'allow', 2],
    ['cidr v4 mapped form', 'x.test:443', '::ffff:203.0.113.9', 'connect', 'allow', 2],
    ['cidr v4 wrong port', '203.0.113.9:80', '203.0.113.9', 'connect', 'would-block', null],
    ['cidr skipped without destIp', 'anything.test:443', null, 'connect', 'would-block', null],
    ['cidr v6', 'v6.test:5', '2001:db8:1::77', 'connect', 'allow', 5],
    ['cidr v6 outside', 'v6.test:5', '2001:db8:2::77', 'connect', 'would-block', null],
    ['port range low edge', 'ranges.example.net:8000', '93.184.216.37', 'connect', 'allow', 4],
    ['port range high edge', 'ranges.example.net:8099', '93.184.216.37', 'connect', 'allow', 4],
    ['port range past edge', 'ranges.example.net:8100', '93.184.216.37', 'connect', 'would-block', null],
    ['port list single', 'ranges.example.net:9000', '93.184.216.37', 'connect', 'allow', 4],
    ['udp entry admits socks5-udp', 'dns.example.net:53', '93.184.216.38', 'socks5-udp', 'allow', 6],
    ['udp entry refuses tcp', 'dns.example.net:53', '93.184.216.38', 'socks5', 'would-block', null],
    ['tcp entry admits http', 'tcp-only.example.net:80', '93.184.216.39', 'http', 'allow', 7],
    ['tcp entry refuses udp', 'tcp-only.example.net:80', '93.184.216.39', 'socks5-udp', 'would-block', null],
  ];
  it.each(table)('%s', (_name, dest, destIp, protocol, verdict, index) => {
    const d = s.decide(facts(dev, dest, destIp, protocol), 0);
    expect(d.verdict).toBe(verdict);
    expect(d.matchedRule?.index ?? null).toBe(index);
    if (verdict === 'allow') {
      expect(d.reason).toBe('allowed');
      expect(d.detector).toBeNull();
      expect(d.matchedRule?.role).toBe('developer');
    } else {
      expect(d.reason).toBe('not-allowlisted');
      expect(d.detector).toBe('policy.deny');
    }
  });

  it('names the entry in matchedRule', () => {
    const d = s.decide(facts(dev, 'a.example.com:443', null), 0);
    expect(d.matchedRule).toEqual({ role: 'developer', index: 0, entry: 'host=*.example.com ports=443' });
  });

  it('any role of the identity admits; the first admitting role is named', () => {
    const d = s.decide(facts(['empty', 'ci', 'developer'], 'pkgs.example.net:443', '93.184.216.40'), 0);
    expect(d.verdict).toBe('allow');
    expect(d.matchedRule).toMatchObject({ role: 'ci', index: 0 });
  });

  it('explains why nothing matched, per role', () => {
    const d = s.decide(facts(['developer', 'empty', 'ghost'], 'a.example.com:80', '93.184.216.34'), 0, 'enforce');
    expect(d.verdict).toBe('block');
    expect(d.reasons.join('\n')).toContain('role developer: allow[0] (host=*.example.com ports=443) matches the destination but not port 80');
    expect(d.reasons.join('\n')).toContain('role empty: has no allow entries');
    expect(d.reasons.join('\n')).toContain('role ghost: not defined in roles');
  });

  it('explains an identity with no roles', () => {
    const d = s.decide(facts([], 'a.example.com:443', null), 0);
    expect(d.verdict).toBe('would-block');
    expect(d.reasons[0]).toMatch(/no roles/);
  });
});

describe('decide: deny-range', () => {
  const table: Array<[string, string, Partial<Config>, string]> = [
    ['metadata', '169.254.169.254', {}, 'block'],
    ['aws v6 metadata', 'fd00:ec2::254', {}, 'block'],
    ['loopback', '127.0.0.1', {}, 'block'],
    ['mapped loopback', '::ffff:127.0.0.1', {}, 'block'],
    ['nat64 metadata', '64:ff9b::a9fe:a9fe', {}, 'block'],
    ['6to4 private', '2002:a00:1::1', {}, 'block'],
    ['teredo loopback', '2001:0:4136:e378:8000:63bf:80ff:fefe', {}, 'block'],
    ['rfc1918', '10.2.3.4', {}, 'block'],
    ['public', '93.184.216.34', {}, 'allow'],
    ['privateRanges off', '10.2.3.4', { deny: { privateRanges: false, cidrs: [] } }, 'allow'],
    ['allowRanges exception', '127.0.0.1', { allowRanges: ['127.0.0.0/8'] }, 'allow'],
    ['allowRanges covers mapped form', '::ffff:127.0.0.1', { allowRanges: ['127.0.0.0/8'] }, 'allow'],
    ['allowRanges covers nat64 form', '64:ff9b::7f00:1', { allowRanges: ['127.0.0.0/8'] }, 'allow'],
    ['deny.cidrs public', '93.184.216.34', { deny: { privateRanges: true, cidrs: ['93.184.216.0/24'] } }, 'block'],
    ['deny.cidrs more specific than allowRanges', '10.0.0.5', { deny: { privateRanges: true, cidrs: ['10.0.0.5/32'] }, allowRanges: ['10.0.0.0/8'] }, 'block'],
    ['allowRanges more specific than deny.cidrs', '10.0.0.5', { deny: { privateRanges: true, cidrs: ['10.0.0.0/8'] }, allowRanges: ['10.0.0.5/32'] }, 'allow'],
    ['deny.cidrs via nat64', '64:ff9b::5db8:d822', { deny: { privateRanges: true, cidrs: ['93.184.216.0/24'] } }, 'block'],
    // Specificity across families: an IPv4 /32 names one address, as an IPv6 /128 does.
    ['deny.cidrs v4 /32 beats allowRanges nat64 /96', '64:ff9b::a9fe:a9fe', { deny: { privateRanges: true, cidrs: ['169.254.169.254/32'] }, allowRanges: ['64:ff9b::/96'] }, 'block'],
    ['allowRanges v4 /32 beats deny.cidrs nat64 /96', '64:ff9b::a00:5', { deny: { privateRanges: true, cidrs: ['64:ff9b::/96'] }, allowRanges: ['10.0.0.5/32'] }, 'allow'],
    ['deny.cidrs nat64 /120 beats allowRanges v4 /8', '64:ff9b::a00:5', { deny: { privateRanges: true, cidrs: ['64:ff9b::a00:0/120'] }, allowRanges: ['10.0.0.0/8'] }, 'block'],
  ];
  it.each(table)('%s', (_name, ip, patch, verdict) => {
    const s = compilePolicy(config(patch));
    for (const mode of ['monitor', 'enforce'] as Mode[]) {
      const d = s.decide(facts(['open'], 'target.test:443', ip), 0, mode);
      if (verdict === 'block') {
        expect(d).toMatchObject({ verdict: 'block', reason: 'deny-range', detector: 'policy.deny-range', matchedRule: null });
      } else {
        expect(d.verdict).toBe('allow');
      }
    }
  });

  it('is skipped when destIp is null', () => {
    const s = compilePolicy(config());
    expect(s.decide(facts(['open'], '127.0.0.1:80', null), 0).verdict).toBe('allow');
  });

  it('blocks even in monitor mode for a role that would be allowed', () => {
    const s = compilePolicy(config());
    const d = s.decide(facts(['developer'], 'a.example.com:443', '169.254.169.254'), 0, 'monitor');
    expect(d.verdict).toBe('block');
    expect(d.mode).toBe('monitor');
    expect(d.reasons[0]).toContain('metadata');
  });
});

describe('roles and modes', () => {
  const s = compilePolicy(config({ defaultRoles: ['developer'] }));
  it('rolesFor: user, host, union, defaults', () => {
    expect(s.rolesFor('alice', null)).toEqual(['developer']);
    expect(s.rolesFor(null, 'build-farm')).toEqual(['ci']);
    expect(s.rolesFor('alice', 'build-farm')).toEqual(['developer', 'ci']);
    expect(s.rolesFor('nobody', 'unknown-host')).toEqual(['developer']);
    expect(s.rolesFor(null, null)).toEqual(['developer']);
  });
  const table: Array<[string, string[], Mode, Mode | null, Mode]> = [
    ['global monitor', ['developer'], 'monitor', null, 'monitor'],
    ['global enforce', ['developer'], 'enforce', null, 'enforce'],
    ['role override enforce', ['ci'], 'monitor', null, 'enforce'],
    ['role override monitor', ['open'], 'enforce', null, 'monitor'],
    ['enforce wins across roles', ['open', 'ci'], 'monitor', null, 'enforce'],
    ['inherited enforce wins over a monitor role', ['open', 'developer'], 'enforce', null, 'enforce'],
    ['runtime override replaces global', ['developer'], 'monitor', 'enforce', 'enforce'],
    ['runtime override to monitor', ['developer'], 'enforce', 'monitor', 'monitor'],
    // A runtime switch to monitor is the emergency brake: it beats role overrides too.
    ['runtime monitor beats a role override', ['ci'], 'enforce', 'monitor', 'monitor'],
    ['runtime enforce keeps a monitor role in monitor', ['open'], 'monitor', 'enforce', 'monitor'],
    ['no roles: global', [], 'enforce', null, 'enforce'],
  ];
  it.each(table)('%s', (_n, roles, global, override, want) => {
    const snap = compilePolicy(config({ mode: global }));
    expect(snap.modeFor(roles, override)).toBe(want);
    const d = snap.decide(facts(roles, 'nowhere.invalid:1', '93.184.216.34'), 0, override);
    expect(d.mode).toBe(want);
    // The `open` role allows any host, so only the mode shows; others are refused per mode.
    expect(d.verdict).toBe(roles.includes('open') ? 'allow' : want === 'enforce' ? 'block' : 'would-block');
  });
});

describe('snapshot', () => {
  it('is frozen and does not freeze the caller config', () => {
    const c = config({ resolver: { hosts: { 'Files.Example.Test.': '127.0.0.1' }, timeoutMs: 1000, rememberUnansweredMs: 60_000, cacheTtlSec: 30, negativeCacheTtlSec: 5 } });
    const s = compilePolicy(c, 7);
    expect(s.version).toBe(7);
    expect(Object.isFrozen(s)).toBe(true);
    expect(Object.isFrozen(s.config.roles)).toBe(true);
    expect(Object.isFrozen(c.roles)).toBe(false);
    expect(s.staticAddress('files.example.test')).toBe('127.0.0.1');
    expect(s.staticAddress('FILES.example.test.')).toBe('127.0.0.1');
    expect(s.staticAddress('other.test')).toBeNull();
  });
});

describe('mayAllowName: whether a name must be looked up before the verdict', () => {
  const base = defaultConfig();
  base.roles = {
    web: { allow: [{ host: '*.allowed.test', ports: [443] }] },
    net: { allow: [{ cidr: '192.0.2.0/24' }] },
  };
  const s = compilePolicy(base);
  it.each([
    [['web'], 'www.allowed.test', 443, true],
    [['web'], 'WWW.Allowed.Test.', 443, true],
    [['web'], 'www.allowed.test', 80, false], // the host matches, the port never will
    [['web'], 'c2VjcmV0.exfil.test', 443, false],
    [['web', 'net'], 'c2VjcmV0.exfil.test', 443, true], // a CIDR entry: the address decides
    [[], 'www.allowed.test', 443, false],
    [['nosuchrole'], 'www.allowed.test', 443, false],
  ] as const)('%j %s:%i → %s', (roles, host, port, want) => {
    expect(s.mayAllowName(roles, host, port, 'connect')).toBe(want);
  });
});
