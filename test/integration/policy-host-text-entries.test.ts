/**
 * A policy host entry that is no host name (a URL pasted where a host is expected, a name with a
 * path, a query, a fragment, a backslash or a tab inside) is refused with its path, wherever the
 * policy takes a host: allow entries, `exceptions[].destination`, `approvedUploadDestinations`,
 * `admin.allowedHosts`, `detection.lists` domains and `resolver.hosts` names. Before, domainToASCII
 * cut such a text short and the rest stood for the entry: `egressgate check` answered `ok` (exit 0)
 * for `api.example.com/v1` (taken as `api.example.com`), `Nowhere/Zone-1.example` (`nowhere`) and
 * the nine others below, `POST /v1/policy/validate` answered `valid: true`, `PUT /v1/policy` 200 and a
 * SIGHUP reload took the file. Through the CLI, a real `serve` process and its admin listener.
 */
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, killIfRunning, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';

const TOKEN = 'host-text-admin-token-0123456789';
const dir = mkdtempSync(join(tmpdir(), 'egw-host-text-'));

/** The policy with each host entry as given (YAML double-quoted texts). */
function policy(e: Record<'a' | 'b' | 'c' | 'd' | 'e' | 'f' | 'g' | 'h' | 'i' | 'j' | 'k', string>): string {
  return `mode: enforce
allowRanges: [127.0.0.0/8]
roles:
  dev:
    allow:
      - { host: "${e.a}", ports: [443] }
      - { host: "${e.b}" }
      - { host: "${e.c}" }
      - { host: "${e.d}" }
      - { host: "${e.e}" }
defaultRoles: [dev]
exceptions: [ { destination: ["${e.f}"], detectors: [an0080.bulk-upload] } ]
approvedUploadDestinations: ["${e.g}"]
admin: { allowedHosts: ["localhost", "${e.h}"] }
detection: { lists: { storageDomains: ["${e.i}"], proxywareDomains: ["${e.j}"] } }
resolver: { hosts: { "${e.k}": 127.0.0.1 } }
flowLog: { path: null }
`;
}

// Each entry as an operator might mistype it, and what it was taken for.
const BAD = policy({
  a: 'api.example.com/v1', // api.example.com
  b: 'Nowhere/Zone-1.example', // nowhere
  c: 'a.example?x', // a.example
  d: 'a.example#frag', // a.example
  e: 'a\\tb.example', // ab.example (a tab inside)
  f: 'files.example\\\\upload', // files.example (a backslash)
  g: 'up.example/put', // up.example
  h: 'admin.example/ui', // admin.example
  i: '*.store.example/x', // *.store.example
  j: 'pw.example?y', // pw.example
  k: 'files.example/v1', // files.example
});
const BAD_ERRORS: ReadonlyArray<readonly [string, RegExp]> = [
  ['roles.dev.allow[0].host', /^bad host pattern "api\.example\.com\/v1": "\/" starts a path, which is no part of a host name: write the host alone$/],
  ['roles.dev.allow[1].host', /^bad host pattern "Nowhere\/Zone-1\.example": "\/" starts a path/],
  ['roles.dev.allow[2].host', /^bad host pattern "a\.example\?x": "\?" starts a URL's query or fragment/],
  ['roles.dev.allow[3].host', /^bad host pattern "a\.example#frag": "#" starts a URL's query or fragment/],
  ['roles.dev.allow[4].host', /^bad host pattern "a\tb\.example": white space inside a host name$/],
  ['exceptions[0].destination[0]', /^bad host pattern "files\.example\\upload": "\\" is no character of a host name$/],
  ['admin.allowedHosts[1]', /"\/" starts a path/],
  ['resolver.hosts["files.example/v1"]', /^"files\.example\/v1" is not a valid host name: "\/" starts a path/],
  ['approvedUploadDestinations[0]', /"\/" starts a path/],
  ['detection.lists.storageDomains[0]', /^bad host pattern "\*\.store\.example\/x": "store\.example\/x" is not a host name: "\/" starts a path/],
  ['detection.lists.proxywareDomains[0]', /"\?" starts a URL's query or fragment/],
];
// The same entries written as hosts: taken.
const GOOD = policy({
  a: 'api.example.com',
  b: 'zone-1.example',
  c: 'a.example',
  d: 'a.example',
  e: 'ab.example',
  f: 'files.example',
  g: 'up.example',
  h: 'admin.example',
  i: '*.store.example',
  j: 'pw.example',
  k: 'files.example',
});
// Already refused, and still: a scheme, user info, a port that is no number.
const URLISH = policy({ ...{ a: 'https://api.example.com', b: 'user@a.example', c: 'a.example:http' }, d: 'a.example', e: 'a.example', f: 'f.example', g: 'g.example', h: 'h.example', i: 'i.example', j: 'j.example', k: 'k.example' });

const GOOD_FILE = join(dir, 'good.yaml');
const BAD_FILE = join(dir, 'bad.yaml');
const URLISH_FILE = join(dir, 'urlish.yaml');
writeFileSync(GOOD_FILE, GOOD);
writeFileSync(BAD_FILE, BAD);
writeFileSync(URLISH_FILE, URLISH);

function check(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check', '--config', file], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/** The error lines `check` prints: `path: message`, the summary line left out. */
function expectErrorLines(stderr: string, file: string, errors: ReadonlyArray<readonly [string, RegExp]>): void {
  const lines = stderr.trim().split('\n');
  expect(lines.at(-1)).toBe(`${file}: ${errors.length} errors`);
  expect(lines).toHaveLength(errors.length + 1);
  for (const [path, message] of errors) {
    const line = lines.find((l) => l.startsWith(`${path}: `));
    expect(line, path).toBeDefined();
    expect(line!.slice(path.length + 2), path).toMatch(message);
  }
}

describe('egressgate check: host entries that are no host name', () => {
  it('each is an error at its path, exit 1; the entries written as hosts pass (exit 0)', async () => {
    const [bad, good] = await Promise.all([check(BAD_FILE), check(GOOD_FILE)]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toBe('');
    expectErrorLines(bad.stderr, BAD_FILE, BAD_ERRORS);
    expect(good.code).toBe(0);
    expect(good.stdout).toMatch(/^ok: mode enforce/);
  }, 60_000);

  it('a URL, user info and a non-port after ":" stay refused, each saying what it is', async () => {
    const r = await check(URLISH_FILE);
    expect(r.code).toBe(1);
    expectErrorLines(r.stderr, URLISH_FILE, [
      ['roles.dev.allow[0].host', /: a URL, not a host name: write the host alone \(no scheme, port or path\)$/],
      ['roles.dev.allow[1].host', /: "@" ends a URL's user name/],
      ['roles.dev.allow[2].host', /: ":" is no part of a host name/],
    ]);
  }, 60_000);
});

describe('serve: validate, PUT /v1/policy and a SIGHUP reload refuse them', () => {
  let served: Served | null = null;
  const configPath = join(dir, 'serve.yaml');
  beforeAll(async () => {
    writeFileSync(configPath, GOOD);
    served = await spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN, EGRESSGATE_CONFIG: undefined } });
  }, 60_000);
  afterAll(async () => {
    await killIfRunning(served?.child ?? null);
    rmSync(dir, { recursive: true, force: true });
  });

  const send = (method: string, path: string, body?: string): Promise<Response> =>
    fetch(`http://${served!.admin}${path}`, {
      method,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'text/yaml' },
      ...(body === undefined ? {} : { body }),
    });
  const version = async (): Promise<number> => ((await (await send('GET', '/v1/policy')).json()) as { version: number }).version;

  it('POST /v1/policy/validate and PUT /v1/policy: 400 with each path; the policy stays', async () => {
    const validate = (await (await send('POST', '/v1/policy/validate', BAD)).json()) as { valid: boolean; errors: Array<{ path: string; message: string }> };
    expect(validate.valid).toBe(false);
    expect(validate.errors.map((e) => e.path).sort()).toEqual(BAD_ERRORS.map(([p]) => p).sort());
    for (const [path, message] of BAD_ERRORS) expect(validate.errors.find((e) => e.path === path)?.message, path).toMatch(message);

    const put = await send('PUT', '/v1/policy', BAD);
    expect(put.status).toBe(400);
    expect(((await put.json()) as { details: unknown[] }).details).toHaveLength(BAD_ERRORS.length);
    expect(await version()).toBe(1);
    expect(((await (await send('POST', '/v1/policy/validate', GOOD)).json()) as { valid: boolean }).valid).toBe(true);
  });

  it('SIGHUP with the file: the reload fails naming the paths, the running policy is unchanged', async () => {
    const child = served!.child as ChildProcess;
    writeFileSync(configPath, BAD);
    const logged = nextReload(child);
    child.kill('SIGHUP');
    const rec = await logged;
    expect(rec['msg']).toBe('policy reload failed; the running policy is unchanged');
    expect((rec['errors'] as Array<{ path: string }>).map((e) => e.path).sort()).toEqual(BAD_ERRORS.map(([p]) => p).sort());
    expect(await version()).toBe(1);
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
  }, 30_000);
});

/** The next reload outcome `serve` logs on stderr (JSON lines). */
function nextReload(c: ChildProcess): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (b: Buffer): void => {
      buf += b.toString('utf8');
      for (const line of buf.split('\n')) {
        if (!line.startsWith('{')) continue;
        const rec = JSON.parse(line) as Record<string, unknown>;
        if (typeof rec['msg'] === 'string' && rec['msg'].startsWith('policy reload')) {
          c.stderr?.off('data', onData);
          c.off('exit', reject);
          resolve(rec);
          return;
        }
      }
    };
    c.stderr?.on('data', onData);
    c.once('exit', reject);
  });
}
