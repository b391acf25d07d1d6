/**
 * `egressgate serve`'s listener flags as an operator types them, through the real CLI: a value the
 * config's `listen.*` would refuse is a usage error (exit 2, the flag named), before anything binds.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, ROOT } from '../helpers/serve-process.ts';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `serve` with `args` until it exits; a serve that starts instead (its listening line) is
 * stopped at once, so a wrong acceptance fails the case rather than hanging it.
 */
function serve(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, 'serve', ...args], {
      cwd: ROOT,
      env: { ...process.env, EGRESSGATE_CONFIG: '', EGRESSGATE_ADMIN_TOKEN: 'serve-flags-token-0123456789', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => c.kill('SIGKILL'), 40_000);
    c.stdout.on('data', (b: Buffer) => {
      stdout += b.toString('utf8');
      if (stdout.includes('"event":"listening"')) c.kill('SIGKILL');
    });
    c.stderr.on('data', (b: Buffer) => {
      stderr += b.toString('utf8');
    });
    c.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('egressgate serve: listener flags', () => {
  it('--socks with a port past 65535 is a usage error naming the flag and the range (exit 2)', async () => {
    const r = await serve(['--http', '127.0.0.1:0', '--socks', '127.0.0.1:99999', '--admin', '127.0.0.1:0']);
    expect(r.stdout).not.toMatch(/listening/);
    expect(r.stderr).toMatch(/^egressgate serve: --socks: port 99999 is out of range 0-65535$/m);
    expect(r.code).toBe(2);
  }, 60_000);

  it('--admin without a host (:0, which would bind every interface) is a usage error (exit 2)', async () => {
    const r = await serve(['--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', ':0']);
    expect(r.stdout).not.toMatch(/listening/);
    expect(r.stderr).toMatch(/^egressgate serve: --admin: ":0" is not HOST:PORT/m);
    expect(r.code).toBe(2);
  }, 60_000);

  // The admin API on a wildcard address starts (containers bind it so on purpose), with one line on
  // stderr saying it is reachable from other hosts; on loopback, no such line. Nothing is sent to it:
  // serve is killed at its listening line.
  it('--admin 0.0.0.0:0 starts with a warning that the admin API is reachable from other hosts', async () => {
    const wide = await serve(['--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '0.0.0.0:0']);
    expect(wide.stdout).toMatch(/"event":"listening"/);
    expect(wide.stderr).toMatch(/^egressgate: the admin API listens on 0\.0\.0\.0:\d+, not a loopback address: it is reachable from other hosts \(token required\); admin\.allowedHosts is empty/m);
    const local = await serve(['--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
    expect(local.stdout).toMatch(/"event":"listening"/);
    expect(local.stderr).not.toMatch(/admin API listens/);
  }, 60_000);
});

// Regression: an empty value was taken as the flag left out. `serve --config ''` (a unit's or a
// script's `--config "$CONFIG"` with the variable unset) started on the embedded default policy,
// monitor mode, even with EGRESSGATE_CONFIG naming an enforce policy; `--redis ''` started too.
describe('egressgate serve: an empty --config or --redis', () => {
  const LISTEN = ['--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0'];
  const dir = mkdtempSync(join(tmpdir(), 'egw-serve-flags-'));
  const enforce = join(dir, 'enforce.yaml');
  writeFileSync(enforce, 'mode: enforce\n');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('--config= and --config "" are usage errors naming the flag (exit 2), EGRESSGATE_CONFIG set or not', async () => {
    const [joined, spaced] = await Promise.all([serve(['--config=', ...LISTEN]), serve(['--config', '', ...LISTEN], { EGRESSGATE_CONFIG: enforce })]);
    for (const r of [joined, spaced]) {
      expect(r.stdout).not.toMatch(/listening/);
      expect(r.stderr).toMatch(/^egressgate serve: --config: empty value/m);
      expect(r.code).toBe(2);
    }
  }, 60_000);

  it('--redis "" is refused as --redis URL is (exit 2); control: EGRESSGATE_CONFIG alone serves its policy', async () => {
    const [redis, env] = await Promise.all([serve(['--redis', '', ...LISTEN]), serve(LISTEN, { EGRESSGATE_CONFIG: enforce })]);
    expect(redis.stdout).not.toMatch(/listening/);
    expect(redis.stderr).toMatch(/^egressgate serve: --redis: empty value/m);
    expect(redis.code).toBe(2);
    expect(env.stdout).toMatch(/"event":"listening".*"mode":"enforce"/);
  }, 60_000);
});


// Regression: `serve --mode monitor --mode enforce` served enforce (parseArgs keeps the last copy
// without a word); a unit's `--http` and a wrapper's appended `--http` bound the wrapper's.
describe('egressgate serve: a flag given twice', () => {
  it('--mode twice, --http twice are usage errors naming the flag (exit 2), nothing bound', async () => {
    const [mode, http] = await Promise.all([
      serve(['--mode', 'monitor', '--mode', 'enforce', '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0']),
      serve(['--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--http=127.0.0.1:0']),
    ]);
    expect(mode.stderr).toMatch(/^egressgate serve: --mode given twice: 'monitor', then 'enforce'; give it once$/m);
    expect(http.stderr).toMatch(/^egressgate serve: --http given twice: '127\.0\.0\.1:0', then '127\.0\.0\.1:0'; give it once$/m);
    for (const r of [mode, http]) {
      expect(r.stdout).not.toMatch(/listening/);
      expect(r.code).toBe(2);
    }
  }, 60_000);
});

// Regression: a listener address already taken said `cannot start: listen EADDRINUSE: address already
// in use 127.0.0.1:PORT` whichever of the three it was: with every listener on one host, the operator
// had to guess which flag (or listen.* key) to change.
describe('egressgate serve: a listener address already in use', () => {
  const dir = mkdtempSync(join(tmpdir(), 'egw-serve-taken-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names the flag that gave the address (--http, --socks, --admin), or the listen.* key (exit 1)', async () => {
    const taken = createServer();
    taken.listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const addr = `127.0.0.1:${(taken.address() as { port: number }).port}`;
    const config = join(dir, 'socks-taken.yaml');
    writeFileSync(config, `listen:\n  socks: "${addr}"\n`);
    try {
      const on = (flag: string): string[] => ['--http', '--socks', '--admin'].flatMap((f) => [f, f === flag ? addr : '127.0.0.1:0']);
      const [http, socks, admin, fromConfig] = await Promise.all([
        serve(on('--http')),
        serve(on('--socks')),
        serve(on('--admin')),
        serve(['--config', config, '--http', '127.0.0.1:0', '--admin', '127.0.0.1:0']),
      ]);
      const said = (name: string): RegExp => new RegExp(`^egressgate: cannot start: ${name}: listen EADDRINUSE: address already in use ${addr.replaceAll('.', '\\.')}$`, 'm');
      expect(http.stderr).toMatch(said('--http'));
      expect(socks.stderr).toMatch(said('--socks'));
      expect(admin.stderr).toMatch(said('--admin'));
      expect(fromConfig.stderr).toMatch(said('listen\\.socks'));
      for (const r of [http, socks, admin, fromConfig]) {
        expect(r.stdout).not.toMatch(/listening/);
        expect(r.code).toBe(1);
      }
    } finally {
      taken.close();
    }
  }, 60_000);
});

// Regression: an address with blanks around it (`" 127.0.0.1:3128"`, a YAML quote or a unit's
// `--http "$ADDR "`) passed `check` and serve's flag check, which trim it, then failed its bind
// (`cannot start: listen.http: getaddrinfo ENOTFOUND  127.0.0.1`, or `bad listen address` naming no
// flag), exit 1: the bind read the address a second way, blanks kept.
describe('egressgate serve: an address with blanks around it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'egw-serve-blanks-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('binds as check validates it, from listen.* and from the flags', async () => {
    const config = join(dir, 'blanks.yaml');
    writeFileSync(config, 'listen: { http: " 127.0.0.1:0", socks: "127.0.0.1:0 ", admin: " 127.0.0.1:0 " }\n');
    const check = await new Promise<number | null>((resolve) => {
      const c = spawn(process.execPath, [CLI, 'check', '--config', config], { cwd: ROOT, stdio: 'ignore' });
      c.on('close', resolve);
    });
    expect(check).toBe(0);
    const [fromConfig, fromFlags] = await Promise.all([
      serve(['--config', config]),
      serve(['--http', '127.0.0.1:0 ', '--socks', ' 127.0.0.1:0', '--admin', ' 127.0.0.1:0 ']),
    ]);
    for (const r of [fromConfig, fromFlags]) {
      expect(r.stderr).not.toMatch(/cannot start/);
      const line = JSON.parse(r.stdout.split('\n').find((l) => l.includes('"event":"listening"')) ?? '{}') as Record<string, string>;
      for (const key of ['http', 'socks', 'admin']) expect(line[key]).toMatch(/^127\.0\.0\.1:\d+$/);
    }
  }, 60_000);
});

// Regression: EGRESSGATE_ADMIN_TOKEN with whitespace in it (a k8s secret or env file made from a file
// with its trailing newline) started: a Bearer token is read as `Bearer \S+`, so no request could
// present it, and since a token was set none was generated: every admin request 401, no word said.
describe('egressgate serve: EGRESSGATE_ADMIN_TOKEN with whitespace in it', () => {
  it('does not start (exit 1, before anything binds), the token never printed; control: without it, it starts', async () => {
    const LISTEN = ['--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0'];
    const secret = 'serve-flags-secret-0123456789';
    const runs = await Promise.all([`${secret}\n`, ` ${secret}`, 'two words-0123456789'].map((t) => serve(LISTEN, { EGRESSGATE_ADMIN_TOKEN: t })));
    for (const r of runs) {
      expect(r.stdout).not.toMatch(/listening/);
      expect(r.stderr).toMatch(/^egressgate: cannot start: EGRESSGATE_ADMIN_TOKEN has whitespace in it/m);
      expect(r.stderr).not.toContain(secret);
      expect(r.code).toBe(1);
    }
    const control = await serve(LISTEN, { EGRESSGATE_ADMIN_TOKEN: secret });
    expect(control.stdout).toMatch(/"event":"listening"/);
  }, 60_000);
});
