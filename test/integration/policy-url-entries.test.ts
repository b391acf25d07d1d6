/**
 * A parent proxy or webhook URL whose text is not what the URL parser reads, and a syslog host that
 * is no host, are refused with their paths. Before, each was taken: `upstream: "http:/127.0.0.1:P"`
 * (one "/") passed `check`, and a CONNECT through it was dialled at 127.0.0.1:3128 (the port was
 * looked for after a "//" the text does not have): 502, the parent on P never asked. Likewise a path
 * on a parent URL was dropped, `\` read as `/` (`http://parent\evil.example` is the host `parent`),
 * a socks5 host left percent-encoded (`p%C3%A4.example`, which no resolver knows), `2130706433`
 * dialled as a name, a webhook's fragment never sent, a tab in its host dropped, and
 * `syslog.host: "logs.example:514"` failed at every alert. Through the CLI and the admin API.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { CLI, ROOT } from '../helpers/serve-process.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-url-entries-'));

function policy(u: { dev: string; ops: string; qa: string; ux: string; top: string; hook0: string; hook1: string; syslog: string }): string {
  return `mode: enforce
roles:
  dev: { allow: [ { host: "a.example" } ], upstream: "${u.dev}" }
  ops: { allow: [ { host: "a.example" } ], upstream: "${u.ops}" }
  qa: { allow: [ { host: "a.example" } ], upstream: "${u.qa}" }
  ux: { allow: [ { host: "a.example" } ], upstream: "${u.ux}" }
upstream: "${u.top}"
alerts:
  webhooks: [ { url: "${u.hook0}" }, { url: "${u.hook1}" } ]
  syslog: { host: "${u.syslog}", port: 514 }
flowLog: { path: null }
`;
}

const BAD = policy({
  dev: 'http:/127.0.0.1:8080', // dialled at 127.0.0.1:3128
  ops: 'http://user:s3cret@parent.example:3128/v1', // the path dropped
  qa: 'http://parent\\\\evil.example:3128', // the host "parent"
  ux: 'socks5h://pä.example:1080', // the host "p%C3%A4.example"
  top: 'socks5://2130706433:1080', // a name of digits
  hook0: 'https://hooks.example/x#frag', // the fragment never sent
  hook1: 'https://hooks.exa\\tmple/x', // hooks.example
  syslog: 'logs.example:514', // looked up as a name with its port
});
const BAD_ERRORS: ReadonlyArray<readonly [string, RegExp]> = [
  ['roles.dev.upstream', /^write the URL as http:\/\/host:port \("\/\/" after "http:"\)/],
  ['roles.ops.upstream', /^a parent proxy URL is scheme:\/\/host:port: a path, query or fragment after it would not be used$/],
  ['roles.qa.upstream', /^"\\" inside an http URL, which the URL parser reads as "\/"/],
  ['roles.ux.upstream', /^the URL's host "pä\.example" is read as "p%C3%A4\.example" in a socks5h URL: write it as xn--p-0fa\.example$/],
  ['alerts.webhooks[0].url', /^a fragment \("#\.\.\."\) is never sent/],
  ['alerts.webhooks[1].url', /^a tab or line break inside the URL/],
  ['alerts.syslog.host', /^"logs\.example:514" is not an IP address or host name: a port is no part of a host name/],
  ['upstream', /^"2130706433" is not a host name or IP address$/],
];
const GOOD = policy({
  dev: 'http://127.0.0.1:8080',
  ops: 'http://user:s3cret@parent.example:3128/',
  qa: 'http://parent.example:3128',
  ux: 'socks5h://xn--p-0fa.example:1080',
  top: 'socks5://127.0.0.1:1080',
  hook0: 'https://hooks.example/x?y=1',
  hook1: 'https://hooks.example/x',
  syslog: 'logs.example',
});
const BAD_FILE = join(dir, 'bad.yaml');
const GOOD_FILE = join(dir, 'good.yaml');
writeFileSync(BAD_FILE, BAD);
writeFileSync(GOOD_FILE, GOOD);

let gw: TestGateway;
beforeAll(async () => {
  gw = await startTestGateway({ mode: 'enforce', roles: { dev: { allow: [{ cidr: '127.0.0.0/8' }] } }, defaultRoles: ['dev'] });
});
afterAll(async () => {
  await gw?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function check(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check', '--config', file], { cwd: ROOT, timeout: 50_000, env: { ...process.env, EGRESSGATE_CONFIG: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

describe('URLs and hosts that are not read as written', () => {
  it('egressgate check: each an error at its path, exit 1, no credential repeated; written as meant: exit 0', async () => {
    const [bad, good] = await Promise.all([check(BAD_FILE), check(GOOD_FILE)]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).not.toContain('s3cret');
    const lines = bad.stderr.trim().split('\n');
    expect(lines).toEqual([...BAD_ERRORS.map(([path]) => expect.stringMatching(`^${path.replace(/[.[\]]/g, '\\$&')}: `)), `${BAD_FILE}: ${BAD_ERRORS.length} errors`]);
    for (const [path, message] of BAD_ERRORS) expect(lines.find((l) => l.startsWith(`${path}: `))!.slice(path.length + 2), path).toMatch(message);
    expect(good.code).toBe(0);
    expect(good.stdout).toMatch(/^ok: mode enforce/);
  }, 60_000);

  it('POST /v1/policy/validate and PUT /v1/policy: 400 with each path; the policy stays', async () => {
    const send = (method: string, path: string, body?: string): Promise<Response> =>
      fetch(`${gw.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'text/yaml' }, ...(body === undefined ? {} : { body }) });
    const validate = (await (await send('POST', '/v1/policy/validate', BAD)).json()) as { valid: boolean; errors: Array<{ path: string; message: string }> };
    expect(validate.valid).toBe(false);
    expect(validate.errors.map((e) => e.path)).toEqual(BAD_ERRORS.map(([p]) => p));
    for (const [path, message] of BAD_ERRORS) expect(validate.errors.find((e) => e.path === path)?.message, path).toMatch(message);
    const put = await send('PUT', '/v1/policy', BAD);
    expect(put.status).toBe(400);
    expect(await put.text()).not.toContain('s3cret');
    expect(((await (await send('GET', '/v1/policy')).json()) as { version: number }).version).toBe(1);
    expect(((await (await send('POST', '/v1/policy/validate', GOOD)).json()) as { valid: boolean }).valid).toBe(true);
  });
});
