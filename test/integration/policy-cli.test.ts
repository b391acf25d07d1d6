/**
 * `egressgate check` and `egressgate evaluate` run as a user runs them: a child process of cli.ts,
 * exit code, stdout and stderr.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientAddress } from '../../gateway/identity/client-address.ts';
import { HostInventory } from '../../gateway/identity/host-inventory.ts';
import { CLI } from '../helpers/serve-process.ts';

delete process.env['EGRESSGATE_CONFIG'];
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'egw-policy-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function spawnCli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/**
 * Every start of the CLI is a process of its own (a `check` from dist/ ~0.1 s of CPU, more on a
 * loaded machine), so three invocations go through a real child process (exit code, stdout, stderr
 * as a user sees them) and the rest call the same `run(argv, io)` in-process with captured output.
 */
const runs = new Map<string, Promise<Run>>();
function spawned(name: string, ...args: string[]): Promise<Run> {
  let r = runs.get(name);
  if (r === undefined) {
    r = spawnCli(args);
    runs.set(name, r);
  }
  return r;
}

async function inProcess(...args: string[]): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const io = { stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) } };
  const [command, ...rest] = args;
  const mod = command === 'check' ? await import('../../gateway/commands/check.ts') : await import('../../gateway/commands/evaluate.ts');
  const code = await mod.run(rest, io);
  return { code, stdout, stderr };
}

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

const GOOD = file(
  'good.yaml',
  `mode: monitor
identity:
  users: [ { name: alice, roles: [developer] } ]
  hosts: [ { cidr: 10.1.0.0/16, name: build-farm, roles: [ci] } ]
roles:
  developer:
    allow:
      - { host: "*.example.com", ports: [443] }
      - { host: "git.example.org", ports: [22, 443] }
      - { cidr: 203.0.113.0/24, ports: [443] }
  ci:
    mode: enforce
    allow: [ { host: "pkgs.example.net", ports: [80, 443] } ]
resolver:
  hosts: { "files.example.test": 169.254.169.254 }
`,
);

const BAD = file(
  'bad.yaml',
  `roles:
  dev:
    allow:
      - { host: "a.example.com" }
      - { host: "b.example.com" }
      - { host: "c.example.com", ports: [99999] }
  ops: { allow: [], colour: red }
defaultRoles: [ghost]
`,
);

// Regression: detector settings of the wrong type or a misspelt name passed check and the gateway
// ran those detectors on their defaults (here a 50 MiB budget instead of 1 MiB, a 300 s window).
const DETECTORS = file(
  'detectors.yaml',
  `detection:
  detectors:
    an0080.bulk-upload: { action: kill, bytesOut: "1048576" }
    an0081.scan: { windowsec: 60 }
`,
);

// Regression: an https parent proxy passed check, and dial() then refused every flow of the role
// (502 upstream-proxy).
const UPSTREAM = file(
  'upstream.yaml',
  `roles:
  dev: { allow: [ { host: "a.example.com" } ], upstream: "https://parent.example.net:3129" }
`,
);

// Regression: a role named __proto__ passed check, then became the roles object's prototype instead
// of a role, and its users were refused "not defined in roles".
const PROTO = file(
  'proto.yaml',
  `roles:
  __proto__: { allow: [ { host: "a.example.com" } ] }
identity:
  users: [ { name: alice, roles: [__proto__] } ]
`,
);

// Regression: evaluate judged only the allow lists, so a proxyware client the gateway refuses at
// admission (an0081.proxyware) was answered allow.
const proxywarePolicy = (mode: string, extra = ''): string =>
  file(
    `proxyware-${mode}-${extra.length}.yaml`,
    `mode: ${mode}
roles:
  any: { allow: [ { host: "*.honeygain.com", ports: [443] }, { host: "*.example.com", ports: [443] } ] }
defaultRoles: [any]
${extra}`,
  );
const PW_ENFORCE = proxywarePolicy('enforce');
const PW_MONITOR = proxywarePolicy('monitor');
const PW_DISABLED = proxywarePolicy('enforce', 'detection: { detectors: { an0081.proxyware: { enabled: false } } }\n');
const PW_EXCEPTED = proxywarePolicy('enforce', 'exceptions: [ { process: [honeygain], detectors: [an0081.proxyware] } ]\n');

beforeAll(async () => {
  // Start the child processes together; the tests below await the same promises.
  await Promise.all([
    spawned('check good', 'check', '--config', GOOD),
    spawned('check bad', 'check', '--config', BAD),
    spawned('check detectors', 'check', '--config', DETECTORS),
    spawned('check upstream', 'check', '--config', UPSTREAM),
    spawned('check proto', 'check', '--config', PROTO),
    spawned('evaluate allow', 'evaluate', '--config', GOOD, '--dest', 'a.b.example.com:443', '--user', 'alice'),
    spawned('evaluate proxyware', 'evaluate', '--config', PW_ENFORCE, '--dest', 'api.honeygain.com:443', '--process', 'honeygain'),
  ]);
}, 60_000);

describe('egressgate check', () => {
  it('valid file: one-line summary, exit 0', async () => {
    const r = await spawned('check good');
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    expect(r.stdout).toMatch(/^ok: mode monitor \(role overrides: ci=enforce\), 2 roles, 4 allow entries/);
  });

  it('invalid file: each error as path: message on stderr, exit 1', async () => {
    const r = await spawned('check bad');
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toContain('roles.dev.allow[2].ports[0]: must be <= 65535, got 99999');
    expect(lines.some((l) => l.startsWith('roles.ops.colour: unknown key'))).toBe(true);
    expect(lines.some((l) => l.startsWith('defaultRoles[0]: unknown role "ghost"'))).toBe(true);
    expect(r.stdout).toBe('');
  });

  it('detector settings: a string threshold and a misspelt one are errors with their paths, exit 1', async () => {
    const r = await spawned('check detectors');
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines[0]).toBe('detection.detectors["an0080.bulk-upload"].bytesOut: expected a number, got a string');
    expect(lines[1]).toMatch(/^detection\.detectors\["an0081\.scan"\]\.windowsec: unknown key \(allowed here: enabled, action, corroborate, windowSec, /);
    expect(lines[2]).toBe(`${DETECTORS}: 2 errors`);
    expect(r.stdout).toBe('');
  });

  it('an https parent proxy: refused, saying which schemes are supported, exit 1', async () => {
    const r = await spawned('check upstream');
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([
      'roles.dev.upstream: a parent proxy over TLS (https) is not supported; URL scheme must be one of http, socks5, socks5h',
      `${UPSTREAM}: 1 error`,
    ]);
    expect(r.stdout).toBe('');
  });

  it('a role named __proto__: refused as a reserved name, exit 1', async () => {
    const r = await spawned('check proto');
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([
      'roles.__proto__: the name "__proto__" is reserved (it cannot be a key of a JavaScript object); choose another',
      `${PROTO}: 1 error`,
    ]);
    expect(r.stdout).toBe('');
  });

  // Regression: alerts.keep 0 passed check, and the alert store kept 1 alert all the same.
  it('alerts.keep below 1: refused at its path, exit 1', async () => {
    const r = await inProcess('check', '--config', file('keep0.yaml', 'alerts: { keep: 0 }\n'));
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')[0]).toMatch(/^alerts\.keep: must be >= 1, got 0/);
    expect(r.stdout).toBe('');
  });

  it('unknown flag or missing --config: exit 2 with a message', async () => {
    const [unknown, missing] = await Promise.all([inProcess('check', '--config', GOOD, '--frobnicate'), inProcess('check')]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/Unknown option '--frobnicate'/);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--config FILE is required/);
  });
});

describe('egressgate evaluate', () => {
  it('prints the decision with the matched rule', async () => {
    const r = await spawned('evaluate allow');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({
      verdict: 'allow',
      reason: 'allowed',
      mode: 'monitor',
      matchedRule: { role: 'developer', index: 0, entry: 'host=*.example.com ports=443' },
      destIp: null,
      identity: { user: 'alice', roles: ['developer'] },
    });
  });

  // Pins (did not reproduce): a --source with a zone id names the host the gateway names for that
  // client, whose identity code drops the zone (client-address.ts); evaluate's address parser drops
  // it too, so `fe80::1%eth0` and `fe80::1` are one host, and a zone is no other client.
  it('--source with a zone id names the same inventory host as without, as serve does', async () => {
    const zones = file('zones.yaml', 'mode: enforce\nidentity:\n  hosts:\n    - { name: link, cidr: "fe80::/64", roles: [ci] }\n    - { name: v6, cidr: "::/0" }\nroles: { ci: { allow: [] } }\n');
    const inventory = new HostInventory([
      { name: 'link', cidr: 'fe80::/64', roles: ['ci'] },
      { name: 'v6', cidr: '::/0', roles: [] },
    ]);
    for (const source of ['fe80::1%eth0', 'fe80::1%2', 'fe80::1']) {
      const r = await inProcess('evaluate', '--config', zones, '--dest', 'example.com:443', '--source', source);
      expect(r.code).toBe(0);
      const served = clientAddress(source);
      expect(served.text).toBe('fe80::1');
      expect(JSON.parse(r.stdout).identity).toMatchObject({ host: 'link', roles: ['ci'] });
      expect(inventory.lookup(served.parsed as NonNullable<typeof served.parsed>)?.name).toBe('link');
    }
  });

  it('explains a refusal; the source address selects the host inventory and its role mode', async () => {
    const r = await inProcess('evaluate', '--config', GOOD, '--dest', 'evil.example.net:443', '--source', '10.1.2.3', '--protocol', 'socks5');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ verdict: 'block', reason: 'not-allowlisted', detector: 'policy.deny', mode: 'enforce', matchedRule: null });
    expect(out.identity).toMatchObject({ host: 'build-farm', roles: ['ci'] });
    expect(out.reasons.join('\n')).toContain('role ci: no allow entry matches host evil.example.net');
  });

  it('uses resolver.hosts for the address: deny-range on the static answer', async () => {
    const r = await inProcess('evaluate', '--config', GOOD, '--dest', 'files.example.test:443', '--user', 'alice');
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ verdict: 'block', reason: 'deny-range', detector: 'policy.deny-range', destIp: '169.254.169.254', destIpSource: 'resolver.hosts' });
  });

  it('CIDR entries apply to an IP literal destination', async () => {
    const r = await inProcess('evaluate', '--config', GOOD, '--dest', '203.0.113.7:443', '--user', 'alice');
    expect(JSON.parse(r.stdout)).toMatchObject({ verdict: 'allow', matchedRule: { role: 'developer', index: 2 }, destIp: '203.0.113.7' });
  });

  it('the connect-time detectors judge the connection: a proxyware client is refused in enforce mode', async () => {
    const r = await spawned('evaluate proxyware');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ verdict: 'block', reason: 'detector', detector: 'an0081.proxyware', mode: 'enforce', matchedRule: { role: 'any', index: 0 } });
    expect(out.reasons[0]).toContain('process honeygain is on the proxyware list');
    expect(out.findings).toEqual([
      expect.objectContaining({ detector: 'an0081.proxyware', analytic: 'AN0081', action: 'block', evidence: { process: 'honeygain', providerDomain: 'honeygain.com' } }),
    ]);
    expect(out.detectors).toMatchObject({
      state: 'none',
      judged: ['an0081.proxyware', 'an0081.scanner-tool', 'an0080.exfil-tool', 'an0080.lineage'],
      skipped: [],
      quarantinedUntil: null,
    });
    expect(out.detectors.notJudged).toContain('an0081.scan');
    expect(out.detectors.notes[0]).toMatch(/^no running gateway: quarantine, fan-out windows, first-seen history/);
  });

  it('monitor mode: would-block; a disabled or excepted detector: allow; an ordinary process: allow', async () => {
    const [monitor, disabled, excepted, ordinary, scanner] = await Promise.all([
      inProcess('evaluate', '--config', PW_MONITOR, '--dest', 'api.honeygain.com:443', '--process', 'honeygain'),
      inProcess('evaluate', '--config', PW_DISABLED, '--dest', 'api.honeygain.com:443', '--process', 'honeygain'),
      inProcess('evaluate', '--config', PW_EXCEPTED, '--dest', 'www.example.com:443', '--process', 'honeygain'),
      inProcess('evaluate', '--config', PW_ENFORCE, '--dest', 'www.example.com:443', '--process', 'curl'),
      inProcess('evaluate', '--config', PW_ENFORCE, '--dest', 'www.example.com:443', '--process', 'nmap'),
    ]);
    const m = JSON.parse(monitor.stdout);
    expect(m).toMatchObject({ verdict: 'would-block', reason: 'detector', detector: 'an0081.proxyware', mode: 'monitor' });
    expect(m.findings).toEqual([expect.objectContaining({ detector: 'an0081.proxyware', action: 'would-block' })]);
    const d = JSON.parse(disabled.stdout);
    expect(d).toMatchObject({ verdict: 'allow', reason: 'allowed', detector: null, findings: [] });
    expect(d.detectors.skipped).toEqual([{ detector: 'an0081.proxyware', why: 'disabled' }]);
    expect(d.detectors.judged).not.toContain('an0081.proxyware');
    const e = JSON.parse(excepted.stdout);
    expect(e).toMatchObject({ verdict: 'allow', reason: 'allowed', detector: null, findings: [] });
    expect(e.detectors.skipped).toEqual([{ detector: 'an0081.proxyware', why: 'exception' }]);
    expect(JSON.parse(ordinary.stdout)).toMatchObject({ verdict: 'allow', reason: 'allowed', detector: null, findings: [], detectors: { skipped: [] } });
    expect(JSON.parse(scanner.stdout)).toMatchObject({ verdict: 'block', reason: 'detector', detector: 'an0081.scanner-tool' });
  });

  it('bad values are usage errors (exit 2); an invalid policy exits 1', async () => {
    const [badDest, badProto, badPolicy] = await Promise.all([
      inProcess('evaluate', '--config', GOOD, '--dest', 'no-port'),
      inProcess('evaluate', '--config', GOOD, '--dest', 'a.example.com:443', '--protocol', 'gopher'),
      inProcess('evaluate', '--config', BAD, '--dest', 'a.example.com:443'),
    ]);
    expect(badDest.code).toBe(2);
    expect(badDest.stderr).toMatch(/--dest must be HOST:PORT/);
    expect(badProto.code).toBe(2);
    expect(badPolicy.code).toBe(1);
    expect(badPolicy.stderr).toContain('roles.dev.allow[2].ports[0]');
  });
});
