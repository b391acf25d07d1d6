import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../../policy/config.ts';
import { compilePolicy } from '../../../policy/compile.ts';
import { DETECTOR_DEFAULTS, detectorSettings } from '../../../policy/detectors/defaults.ts';
import { MAX_TIMER_MS } from '../../../policy/config-schema.ts';
import { loadConfig, loadConfigFile } from '../../../policy/load-config.ts';
import { MAX_ERRORS } from '../../../policy/schema-dsl.ts';

const SPEC_EXAMPLE = readFileSync(new URL('./fixtures/spec-example.yaml', import.meta.url), 'utf8');

function errorsOf(text: string, format?: 'yaml' | 'json') {
  const r = loadConfig(text, { format });
  if (r.ok) throw new Error('expected errors, config was accepted');
  return r.errors;
}

describe('loadConfig: valid input', () => {
  it('accepts the SPEC §3 example and keeps its values', () => {
    const r = loadConfig(SPEC_EXAMPLE);
    expect(r.ok ? [] : r.errors).toEqual([]);
    if (!r.ok) return;
    expect(r.config.roles['ci']?.mode).toBe('enforce');
    expect(r.config.roles['developer']?.allow[2]).toEqual({ cidr: '203.0.113.0/24', ports: [443] });
    expect(r.config.detection.detectors['an0081.proxyjack']).toMatchObject({ action: 'kill', corroborate: true, enabled: true });
    expect(r.config.detection.detectors['an0080.lineage']).toMatchObject({ action: 'kill', corroborate: false, enabled: true });
    // defaults are merged in below the given keys
    expect(r.config.limits.maxHeaderBytes).toBe(defaultConfig().limits.maxHeaderBytes);
    expect(r.config.listen.https).toBeNull();
  });

  it('empty text is the default config', () => {
    const r = loadConfig('');
    expect(r).toEqual({ ok: true, config: defaultConfig() });
  });

  it('deep-merges partial objects and fills item defaults', () => {
    const r = loadConfig(
      'listen: { http: "[::1]:0" }\nroles: { r: { mode: enforce } }\nalerts: { webhooks: [ { url: "https://h.example/x" } ] }\ndetection: { detectors: { an0081.scan: { windowSec: 60 } } }\n',
    );
    if (!r.ok) throw new Error(JSON.stringify(r.errors));
    expect(r.config.listen).toEqual({ ...defaultConfig().listen, http: '[::1]:0' });
    expect(r.config.roles['r']).toEqual({ mode: 'enforce', allow: [] });
    expect(r.config.alerts.webhooks[0]?.minSeverity).toBe('medium');
    expect(r.config.detection.detectors['an0081.scan']).toEqual({ windowSec: 60, enabled: true, corroborate: false, action: 'block' });
  });

  it('a host name listed for several CIDRs with the same roles, in any order', () => {
    const r = loadConfig('roles: { a: {}, b: {} }\nidentity: { hosts: [ {cidr: 10.0.0.0/8, name: lab, roles: [a, b]}, {cidr: "fd00::/8", name: lab, roles: [b, a]} ] }\n');
    expect(r.ok ? [] : r.errors).toEqual([]);
  });

  it('reads JSON too, and a $schema key for editors', () => {
    const r = loadConfig(JSON.stringify({ $schema: './policy/schema.json', mode: 'enforce' }), { format: 'json' });
    expect(r.ok && r.config.mode).toBe('enforce');
    expect(r.ok && '$schema' in r.config).toBe(false);
  });
});

describe('loadConfig: errors carry exact paths', () => {
  const table: Array<[string, string, string, RegExp]> = [
    ['unknown top-level key', 'bogus: 1', 'bogus', /unknown key/],
    ['unknown nested key', 'identity: { requireAuth: false, colour: red }', 'identity.colour', /unknown key/],
    ['wrong type', 'mode: 3', 'mode', /monitor, enforce/],
    ['wrong type bool', 'identity: { requireAuth: "yes" }', 'identity.requireAuth', /true or false/],
    ['port 0', 'roles: { dev: { allow: [ {host: a.com}, {host: b.com}, {host: c.com, ports: [0]} ] } }', 'roles.dev.allow[2].ports[0]', />= 1/],
    ['port too big', 'roles: { dev: { allow: [ {host: c.com, ports: [70000]} ] } }', 'roles.dev.allow[0].ports[0]', /<= 65535/],
    ['port range reversed', 'roles: { dev: { allow: [ {host: c.com, ports: ["90-80"]} ] } }', 'roles.dev.allow[0].ports[0]', /start is after end/],
    ['port not a list', 'roles: { dev: { allow: [ {host: c.com, ports: 443} ] } }', 'roles.dev.allow[0].ports', /expected a list/],
    ['empty port list', 'roles: { dev: { allow: [ {host: c.com, ports: []} ] } }', 'roles.dev.allow[0].ports', /at least 1/],
    ['bad protocol', 'roles: { dev: { allow: [ {host: c.com, protocol: sctp} ] } }', 'roles.dev.allow[0].protocol', /tcp, udp/],
    ['host and cidr', 'roles: { dev: { allow: [ {host: c.com, cidr: 10.0.0.0/8} ] } }', 'roles.dev.allow[0]', /either host or cidr/],
    ['neither host nor cidr', 'roles: { dev: { allow: [ {ports: [1]} ] } }', 'roles.dev.allow[0]', /needs host or cidr/],
    ['bad wildcard', 'roles: { dev: { allow: [ {host: "a.*.com"} ] } }', 'roles.dev.allow[0].host', /bad host pattern/],
    ['bad host', 'roles: { dev: { allow: [ {host: "a..com"} ] } }', 'roles.dev.allow[0].host', /bad host pattern/],
    ['bad cidr', 'roles: { dev: { allow: [ {cidr: 10.0.0.0/33} ] } }', 'roles.dev.allow[0].cidr', /prefix length/],
    ['bad v6 cidr', 'deny: { cidrs: ["2001:db8::/200"] }', 'deny.cidrs[0]', /prefix length/],
    ['bad allowRange', 'allowRanges: [nope]', 'allowRanges[0]', /bad CIDR/],
    ['bad role name', 'roles: { "a b": { allow: [] } }', 'roles["a b"]', /role name/],
    ['unknown role for user', 'identity: { users: [ {name: a, roles: [ghost]} ] }', 'identity.users[0].roles[0]', /unknown role "ghost"/],
    ['unknown role for host', 'identity: { hosts: [ {cidr: 10.0.0.0/8, name: h, roles: [ghost]} ] }', 'identity.hosts[0].roles[0]', /unknown role/],
    ['unknown default role', 'defaultRoles: [ghost]', 'defaultRoles[0]', /unknown role/],
    ['host needs cidr', 'identity: { hosts: [ {name: h} ] }', 'identity.hosts[0].cidr', /required/],
    // Regression: roles are looked up by host name, so a source in 127.0.0.0/29 (roles [guest]) got the
    // ci roles listed for 127.0.0.2/32 under the same name, and reached what only ci may.
    [
      'host name with two role sets',
      'roles: { guest: {}, ci: {} }\nidentity: { hosts: [ {cidr: 127.0.0.0/29, name: lab, roles: [guest]}, {cidr: 127.0.0.2/32, name: lab, roles: [ci]} ] }',
      'identity.hosts[1].roles',
      /^host "lab" has roles \[guest\] at identity.hosts\[0\]: every entry of one host name must list the same roles/,
    ],
    ['host name with roles left out once', 'roles: { ci: {} }\nidentity: { hosts: [ {cidr: 10.0.0.0/8, name: lab, roles: [ci]}, {cidr: "fd00::/8", name: lab} ] }', 'identity.hosts[1].roles', /has roles \[ci\]/],
    ['duplicate user', 'identity: { users: [ {name: a}, {name: a} ] }', 'identity.users[1].name', /duplicate/],
    ['bad time zone', 'schedule: { timezone: Mars/Olympus }', 'schedule.timezone', /unknown time zone/],
    ['bad HH:MM', 'schedule: { businessHours: { start: "8:00" } }', 'schedule.businessHours.start', /HH:MM/],
    ['bad HH:MM minutes', 'schedule: { businessHours: { end: "18:60" } }', 'schedule.businessHours.end', /HH:MM/],
    ['bad day', 'schedule: { businessHours: { days: [mon, funday] } }', 'schedule.businessHours.days[1]', /one of mon/],
    ['unknown detector', 'detection: { detectors: { an0081.nope: {} } }', 'detection.detectors["an0081.nope"]', /unknown name/],
    ['bad detector action', 'detection: { detectors: { an0081.scan: { action: nuke } } }', 'detection.detectors["an0081.scan"].action', /flag, block, kill/],
    ['negative threshold', 'detection: { detectors: { an0081.scan: { windowSec: -1 } } }', 'detection.detectors["an0081.scan"].windowSec', />= 0/],
    ['exception detector', 'exceptions: [ { process: [apt], detectors: [an0081.bogus] } ]', 'exceptions[0].detectors[0]', /one of/],
    // An exception never skips these: one naming them was accepted and did nothing.
    ['exception of the SSRF floor', 'exceptions: [ { process: [apt], detectors: [policy.deny-range] } ]', 'exceptions[0].detectors[0]', /one of an0081\.proxyware/],
    ['exception of quarantine', 'exceptions: [ { process: [apt], detectors: [quarantine] } ]', 'exceptions[0].detectors[0]', /one of/],
    ['exception needs criterion', 'exceptions: [ { detectors: [an0081.scan] } ]', 'exceptions[0]', /at least one of/],
    ['approved destination pattern', 'approvedUploadDestinations: ["*bad.com"]', 'approvedUploadDestinations[0]', /bad host pattern/],
    ['upstream scheme', 'upstream: ftp://proxy:21', 'upstream', /scheme/],
    ['upstream not a url', 'upstream: "not a url"', 'upstream', /not a URL/],
    ['role upstream', 'roles: { r: { upstream: "gopher://x" } }', 'roles.r.upstream', /scheme/],
    // Regression: https parent proxies passed check, and dial() refused every flow (502 upstream-proxy).
    ['upstream https', 'upstream: "https://parent.example.net:3129"', 'upstream', /^a parent proxy over TLS \(https\) is not supported; URL scheme must be one of http, socks5, socks5h$/],
    ['role upstream https', 'roles: { r: { upstream: "HTTPS://parent.example.net" } }', 'roles.r.upstream', /not supported; URL scheme must be one of http, socks5, socks5h/],
    // Regression: port 0 was dialled as the scheme's default parent port (1080 / 3128).
    ['upstream port 0', 'upstream: "socks5://parent.example.net:0"', 'upstream', /^port 0 is not a port a parent proxy listens on$/],
    ['webhook url', 'alerts: { webhooks: [ { url: "mailto:x@y" } ] }', 'alerts.webhooks[0].url', /scheme/],
    // A read copy's "[redacted]" PUT back became every user's password (admin-policy-redacted).
    ['redacted password', 'identity: { users: [ { name: a, password: "[redacted]" } ] }', 'identity.users[0].password', /placeholder/],
    ['redacted upstream login', 'upstream: "http://%5Bredacted%5D@parent.example.net:3128/"', 'upstream', /placeholder/],
    ['redacted webhook path', 'alerts: { webhooks: [ { url: "https://hooks.example.net/[redacted]" } ] }', 'alerts.webhooks[0].url', /placeholder/],
    ['listen host:port', 'listen: { http: "1.2.3.4" }', 'listen.http', /HOST:PORT/],
    ['listen port range', 'listen: { socks: "127.0.0.1:70000" }', 'listen.socks', /out of range/],
    ['token and hash', 'admin: { tokens: [ { name: a, token: x, tokenSha256: x, scope: admin } ] }', 'admin.tokens[0].tokenSha256', /64 hex/],
    ['token scope', 'admin: { tokens: [ { name: a, token: x, scope: root } ] }', 'admin.tokens[0].scope', /admin, read, agent/],
    ['agent sources', 'identity: { agents: [ { name: a, token: x, sources: [] } ] }', 'identity.agents[0].sources', /at least 1/],
    ['resolver answer', 'resolver: { hosts: { a.test: not-an-ip } }', 'resolver.hosts["a.test"]', /not an IP/],
    ['resolver name', 'resolver: { hosts: { "bad..name": 1.2.3.4 } }', 'resolver.hosts["bad..name"]', /not a valid host name/],
    // Regression: an address as the name was never read (an IP literal is dialled as itself), and a
    // zone id in the answer was dropped (dialled unscoped); both were accepted without a word.
    ['resolver name an IPv4 address', 'resolver: { hosts: { "10.0.0.1": 127.0.0.1 } }', 'resolver.hosts["10.0.0.1"]', /is an IP address.*never looked up/],
    ['resolver name an IPv6 address', 'resolver: { hosts: { "[::ffff:a00:1]": 127.0.0.1 } }', 'resolver.hosts["[::ffff:a00:1]"]', /is an IP address/],
    ['resolver answer with a zone id', 'resolver: { hosts: { a.test: "fe80::1%eth0" } }', 'resolver.hosts["a.test"]', /zone ids are not allowed/],
    ['limit type', 'limits: { maxFlowsPerIdentity: 1.5 }', 'limits.maxFlowsPerIdentity', /integer/],
    ['not a mapping', '- a\n- b\n', '(root)', /expected a mapping/],
    ['yaml syntax', 'a: [1,', '(root)', /invalid YAML at line \d+, column \d+: .*flow collection/],
    ['yaml duplicate key', 'mode: monitor\nmode: enforce\n', '(root)', /line 2.*duplicated mapping key/],
  ];
  it.each(table)('%s', (_name, text, path, message) => {
    const errors = errorsOf(text);
    const hit = errors.find((e) => e.path === path);
    expect(hit, `errors were ${JSON.stringify(errors)}`).toBeDefined();
    expect(hit!.message).toMatch(message);
  });

  it('reports every error, not just the first', () => {
    const errors = errorsOf('mode: x\nbogus: 1\nallowRanges: [nope]\n');
    expect(errors.map((e) => e.path).sort()).toEqual(['allowRanges[0]', 'bogus', 'mode']);
  });

  // Regression: an alias bomb of unknown keys under the node budget made two million errors (205 MB
  // of JSON from POST /v1/policy/validate, 11 s of blocked event loop, 2 GB of memory).
  it(`stops at ${MAX_ERRORS} errors and says the list was cut, however many the document holds`, () => {
    const keys = Array.from({ length: 1410 }, (_, i) => `k${i}: 1`).join(', ');
    const bomb = `roles: {r: {allow: [&o {${keys}}, ${Array.from({ length: 1409 }, () => '*o').join(', ')}]}}\n`;
    const errors = errorsOf(bomb);
    expect(errors).toHaveLength(MAX_ERRORS + 1);
    expect(errors.at(-1)).toEqual({ path: '(root)', message: `more errors not listed: the first ${MAX_ERRORS} are` });
    expect(errors[0]?.path).toMatch(/^roles\.r\.allow\[0\]/);
  });

  it('times in milliseconds stop where node timers do (2^31 - 1 ms)', () => {
    const errors = errorsOf('limits: { idleTimeoutMs: 3000000000, drainGraceMs: 2147483648 }\nresolver: { timeoutMs: 2147483648 }\n');
    expect(errors.map((e) => [e.path, e.message]).sort()).toEqual([
      ['limits.drainGraceMs', `must be <= ${MAX_TIMER_MS}, got 2147483648`],
      ['limits.idleTimeoutMs', `must be <= ${MAX_TIMER_MS}, got 3000000000`],
      ['resolver.timeoutMs', `must be <= ${MAX_TIMER_MS}, got 2147483648`],
    ]);
    expect(loadConfig(`limits: { idleTimeoutMs: ${MAX_TIMER_MS} }\n`).ok).toBe(true);
  });

  it('JSON syntax errors are reported', () => {
    expect(errorsOf('{"mode": ', 'json')[0]!.message).toMatch(/invalid JSON/);
  });

  // Regression: JSON.parse kept a repeated key's last value, so a JSON policy ran on a role's
  // second definition alone (the YAML reader refuses such a document).
  it('a JSON key written twice is an error at its path, however it is spelled or nested', () => {
    const table: Array<[string, string[]]> = [
      ['{"mode": "enforce", "mode": "monitor"}', ['mode']],
      ['{"roles": {"dev": {"allow": []}, "d\\u0065v": {"allow": []}}}', ['roles.dev']],
      ['{"roles": {"a": {"allow": [{"host": "x.test", "ports": [1], "host": "y.test"}]}}, "defaultRoles": ["a"]}', ['roles.a.allow[0].host']],
      ['{"resolver": {"hosts": {"a.test": "127.0.0.1", "b.test": "127.0.0.2", "a.test": "127.0.0.3"}}}', ['resolver.hosts["a.test"]']],
      // Braces, brackets, commas and escaped quotes inside strings are text, not structure.
      ['{"roles": {"x": {"allow": [{"host": "a\\"},[{"}]}, "x": {}}}', ['roles.x']],
    ];
    for (const [text, paths] of table) expect(errorsOf(text, 'json').map((e) => e.path), text).toEqual(paths);
    expect(loadConfig('{"roles": {"a": {"allow": [{"host": "x.test"}]}, "b": {"allow": [{"host": "x.test"}]}}}', { format: 'json' }).ok).toBe(true);
  });
});

// Regression: a detector threshold of the wrong type or a misspelt name was dropped without a word
// and the detector ran on its default (`bytesOut: "1048576"` gave the 50 MiB budget).
describe('loadConfig: detector settings are checked like every other key', () => {
  const table: Array<[string, string, string, RegExp]> = [
    ['threshold as a string', 'an0080.bulk-upload: { bytesOut: "1048576" }', 'detection.detectors["an0080.bulk-upload"].bytesOut', /^expected a number, got a string$/],
    ['threshold as a list', 'an0081.scan: { windowSec: [60] }', 'detection.detectors["an0081.scan"].windowSec', /expected a number, got an array/],
    ['threshold as a boolean', 'an0081.sustained: { minBytesPerSec: true }', 'detection.detectors["an0081.sustained"].minBytesPerSec', /expected a number/],
    ['misspelt threshold', 'an0081.scan: { windowsec: 60 }', 'detection.detectors["an0081.scan"].windowsec', /unknown key \(allowed here: .*windowSec/],
    ['threshold of another detector', 'an0080.bulk-upload: { windowSec: 60 }', 'detection.detectors["an0080.bulk-upload"].windowSec', /unknown key/],
    ['threshold on a detector without any', 'an0080.lineage: { bytesOut: 10 }', 'detection.detectors["an0080.lineage"].bytesOut', /unknown key \(allowed here: enabled, action, corroborate\)/],
    ['enabled as a string', 'an0081.scan: { enabled: "false" }', 'detection.detectors["an0081.scan"].enabled', /expected true or false, got a string/],
    ['corroborate as a number', 'an0081.proxyjack: { corroborate: 1 }', 'detection.detectors["an0081.proxyjack"].corroborate', /expected true or false/],
    ['settings not a mapping', 'an0081.scan: block', 'detection.detectors["an0081.scan"]', /expected a mapping, got a string/],
    ['a name that takes no settings', 'quarantine: { enabled: false }', 'detection.detectors.quarantine', /unknown name "quarantine"/],
    ['policy.deny takes no settings', 'policy.deny: { enabled: false }', 'detection.detectors["policy.deny"]', /unknown name/],
  ];
  it.each(table)('%s', (_name, detectors, path, message) => {
    const errors = errorsOf(`detection:\n  detectors:\n    ${detectors}\n`);
    expect(errors, JSON.stringify(errors)).toHaveLength(1);
    expect(errors[0]!.path).toBe(path);
    expect(errors[0]!.message).toMatch(message);
  });

  it('the same from a JSON body (PUT /v1/policy): a string threshold is an error, not the default', () => {
    const r = loadConfig(JSON.stringify({ detection: { detectors: { 'an0080.split-upload': { bytesOut: '1048576', dayBytesOut: 5 } } } }), { format: 'json' });
    expect(r.ok ? [] : r.errors).toEqual([{ path: 'detection.detectors["an0080.split-upload"].bytesOut', message: 'expected a number, got a string' }]);
  });

  it('every threshold a detector reads can be set, and is what the detector gets', () => {
    for (const [name, d] of Object.entries(DETECTOR_DEFAULTS)) {
      const settings = Object.fromEntries(Object.keys(d.n).map((k, i) => [k, i + 0.5]));
      const r = loadConfig(JSON.stringify({ detection: { detectors: { [name]: { enabled: false, action: 'flag', corroborate: true, ...settings } } } }), { format: 'json' });
      expect(r.ok ? [] : r.errors, name).toEqual([]);
      if (!r.ok) continue;
      const got = detectorSettings(r.config, name as keyof typeof DETECTOR_DEFAULTS);
      expect(got, name).toEqual({ enabled: false, action: 'flag', corroborate: true, n: settings });
    }
  });
});

describe('loadConfig: parent proxies', () => {
  it('accepts the schemes dial() speaks: http, socks5, socks5h', () => {
    for (const u of ['http://p.example.net:3128', 'socks5://p.example.net:1080', 'socks5h://user:pw@p.example.net:1080']) {
      const r = loadConfig(`upstream: "${u}"\nroles: { r: { upstream: "${u}" } }\n`);
      expect(r.ok ? [] : r.errors, u).toEqual([]);
    }
  });
});

// Regression: a role named "__proto__" passed check, then the merge into the defaults set the roles
// object's prototype instead of adding a role, and every flow of it was "not defined in roles".
describe('loadConfig: names that are not plain object keys', () => {
  const reserved = /^the name "__proto__" is reserved \(it cannot be a key of a JavaScript object\); choose another$/;
  it.each([
    ['a role (YAML)', 'roles: { __proto__: { allow: [ { host: a.example.com } ] } }\ndefaultRoles: [__proto__]\n', 'yaml', 'roles.__proto__'],
    ['a role (JSON)', '{"roles": {"__proto__": {"allow": [{"host": "a.example.com"}]}}}', 'json', 'roles.__proto__'],
    ['a resolver.hosts name', 'resolver: { hosts: { "__proto__": 127.0.0.1 } }\n', 'yaml', 'resolver.hosts.__proto__'],
    ['a detector name', '{"detection": {"detectors": {"__proto__": {"enabled": false}}}}', 'json', 'detection.detectors.__proto__'],
  ] as const)('"__proto__" as %s is refused with its path', (_what, text, format, path) => {
    expect(errorsOf(text, format)).toEqual([{ path, message: expect.stringMatching(reserved) }]);
  });

  it('"constructor", "prototype" and "__proto__" elsewhere are plain names: roles, users, hosts, agents, tokens, exceptions, resolver.hosts', () => {
    const names = ['constructor', 'prototype', '__proto__'];
    const r = loadConfig(
      JSON.stringify({
        mode: 'enforce',
        roles: { constructor: { allow: [{ host: 'a.example.com', ports: [443] }] }, prototype: { allow: [{ host: 'b.example.com', ports: [443] }] } },
        identity: {
          users: names.map((n) => ({ name: n, roles: ['constructor'] })),
          hosts: names.map((n, i) => ({ cidr: `10.${i}.0.0/16`, name: n, roles: ['prototype'] })),
          agents: names.map((n, i) => ({ name: n, token: `agent-token-${i}`, sources: [`10.${i}.0.0/16`] })),
        },
        admin: { tokens: names.map((n, i) => ({ name: n, token: `admin-token-${i}`, scope: 'read' })) },
        resolver: { hosts: { constructor: '192.0.2.1', prototype: '192.0.2.2' } },
        exceptions: [{ user: names, host: names, process: names, detectors: ['an0081.scan'] }],
        defaultRoles: ['prototype'],
      }),
      { format: 'json' },
    );
    expect(r.ok ? [] : r.errors).toEqual([]);
    if (!r.ok) return;
    expect(Object.keys(r.config.roles)).toEqual(['constructor', 'prototype']);
    const p = compilePolicy(r.config);
    for (const n of names) {
      expect(p.rolesFor(n, null), n).toEqual(['constructor']);
      expect(p.rolesFor(null, n), n).toEqual(['prototype']);
    }
    const decide = (roles: string[], destHost: string) =>
      p.decide({ protocol: 'connect', clientIp: '10.9.9.9', clientPort: 1, identity: { user: null, host: null, roles, process: null }, destHost, destPort: 443, destIp: '192.0.2.9' }, 0);
    expect(decide(['constructor'], 'a.example.com')).toMatchObject({ verdict: 'allow', matchedRule: { role: 'constructor', index: 0 } });
    expect(decide(['prototype'], 'b.example.com')).toMatchObject({ verdict: 'allow', matchedRule: { role: 'prototype', index: 0 } });
    expect(decide(['prototype'], 'a.example.com')).toMatchObject({ verdict: 'block', reason: 'not-allowlisted' });
    expect([p.staticAddress('constructor'), p.staticAddress('prototype'), p.staticAddress('tostring')]).toEqual(['192.0.2.1', '192.0.2.2', null]);
  });
});

describe('loadConfigFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'egw-policy-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  it('reads YAML and JSON by extension', async () => {
    writeFileSync(join(dir, 'p.yaml'), 'mode: enforce\n');
    writeFileSync(join(dir, 'p.json'), '{"mode":"enforce"}');
    const y = await loadConfigFile(join(dir, 'p.yaml'));
    const j = await loadConfigFile(join(dir, 'p.json'));
    expect(y.ok && y.config.mode).toBe('enforce');
    expect(j.ok && j.config.mode).toBe('enforce');
  });
  it('reports a missing file as an error, not a throw', async () => {
    const r = await loadConfigFile(join(dir, 'missing.yaml'));
    expect(r.ok).toBe(false);
    expect(!r.ok && r.errors[0]!.message).toMatch(/cannot read/);
  });
});

describe('loadConfig: YAML specifics', () => {
  it('reads times and dates as strings, not sexagesimal numbers or Date objects', () => {
    const r = loadConfig('schedule: { businessHours: { start: 08:00, end: 18:30 } }\n');
    expect(r.ok && r.config.schedule.businessHours).toMatchObject({ start: '08:00', end: '18:30' });
  });
  it('refuses an alias bomb instead of expanding it', () => {
    const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 9; i++) lines.push(`a${i}: &a${i} [*a${i - 1}, *a${i - 1}, *a${i - 1}, *a${i - 1}, *a${i - 1}, *a${i - 1}, *a${i - 1}, *a${i - 1}, *a${i - 1}, *a${i - 1}]`);
    const errors = errorsOf(lines.join('\n'));
    expect(errors[0]!.message).toMatch(/too large/);
  });
});
