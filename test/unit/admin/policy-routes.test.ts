import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BASE_POLICY, bearer, type Harness, makeHarness, sha256hex, TOKENS } from './harness.ts';

const admin = (extra: Record<string, string> = {}) => bearer(TOKENS.admin, extra);
const read = () => bearer(TOKENS.read);
/** A syntactically valid scrypt hash (egressgate hash-password's format). */
const BOB_HASH = 'scrypt$1024$8$1$izFLRePXeAhzFY7eicuf4w$Pv/jTCz3O0NTuxV1sTBqrv2CnHs8U1Kd8IQjobju6TY';

describe('policy routes', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await makeHarness();
  });
  beforeEach(() => {
    h.reset();
  });
  afterAll(async () => {
    await h.close();
  });

  it('GET /v1/policy returns the config with its version and an ETag', async () => {
    const res = await h.app.inject({ url: '/v1/policy', headers: read() });
    expect(res.statusCode).toBe(200);
    expect(res.headers.etag).toBe('"1"');
    expect(res.headers['cache-control']).toBe('no-store');
    const body = res.json();
    expect(body).toMatchObject({ version: 1, author: 'startup', mode: 'monitor' });
    expect(body.config.roles.developer.allow[0]).toEqual({ host: '*.example.com', ports: [443] });
    expect(body.config.defaultRoles).toEqual(['developer']);
  });

  it('GET /v1/policy never serves a clear token; read scope also loses passwords and URL credentials', async () => {
    const withSecrets = BASE_POLICY.replace(
      'identity:\n',
      `identity:\n  users:\n    - { name: alice, password: "alice-pw-secret", roles: [developer] }\n    - { name: bob, passwordHash: "${BOB_HASH}", roles: [developer] }\n`,
    )
      .concat('upstream: "http://proxyuser:proxypass@parent.example.net:3128"\n')
      .concat('alerts: { webhooks: [ { url: "https://hooks.example.net/services/T000/B000/SECRETXYZ?token=abc" } ] }\n');
    const put = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'content-type': 'text/yaml' }), payload: withSecrets });
    expect(put.statusCode, put.body).toBe(200);
    expect(put.body).not.toContain(TOKENS.admin);
    const asRead = await h.app.inject({ url: '/v1/policy', headers: read() });
    for (const secret of [TOKENS.admin, TOKENS.ws17, TOKENS.agentScope, 'alice-pw-secret', 'proxypass', BOB_HASH, 'SECRETXYZ', 'token=abc']) expect(asRead.body).not.toContain(secret);
    const cfg = asRead.json().config;
    // Not even the digest: from a sha256 a weak admin token is guessed offline.
    expect(cfg.admin.tokens[0]).toEqual({ name: 'ops', tokenSha256: '[redacted]', scope: 'admin' });
    expect(asRead.body).not.toContain(sha256hex(TOKENS.admin));
    expect(cfg.identity.users[0].password).toBe('[redacted]');
    expect(cfg.identity.users[1].passwordHash).toBe('[redacted]');
    expect(cfg.alerts.webhooks[0].url).toBe('https://hooks.example.net/[redacted]');
    const asAdmin = (await h.app.inject({ url: '/v1/policy', headers: admin() })).json().config;
    expect(asAdmin.identity.users[0].password).toBe('alice-pw-secret');
    expect(asAdmin.identity.users[1].passwordHash).toBe(BOB_HASH);
    expect(asAdmin.alerts.webhooks[0].url).toContain('SECRETXYZ');
    expect(asAdmin.admin.tokens[0]).toEqual({ name: 'ops', tokenSha256: sha256hex(TOKENS.admin), scope: 'admin' });
    expect(JSON.stringify(asAdmin)).not.toContain(TOKENS.admin);
    // The admin's copy round-trips, and the hashed tokens still authenticate.
    const again = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin(), payload: asAdmin });
    expect(again.statusCode).toBe(200);
    expect((await h.app.inject({ url: '/v1/mode', headers: read() })).statusCode).toBe(200);
  });

  it('PUT /v1/policy (YAML) swaps it, bumps the version, records author and audit', async () => {
    const next = BASE_POLICY.replace('mode: monitor', 'mode: enforce');
    const res = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'content-type': 'text/yaml' }), payload: next });
    expect(res.statusCode).toBe(200);
    expect(res.headers.etag).toBe('"2"');
    expect(res.json()).toMatchObject({ version: 2, author: 'ops', mode: 'enforce' });
    expect(h.policy.current().version).toBe(2);
    const audit = h.audit.list();
    expect(audit[0]).toMatchObject({ actor: 'ops', scope: 'admin', method: 'PUT', route: '/v1/policy', beforeVersion: 1, afterVersion: 2, status: 200 });
  });

  it('PUT /v1/policy (JSON object) round-trips what GET returned to an admin', async () => {
    const got = (await h.app.inject({ url: '/v1/policy', headers: admin() })).json();
    got.config.roles.developer.allow.push({ host: 'api.example.net', ports: [443] });
    const res = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin(), payload: got.config });
    expect(res.statusCode).toBe(200);
    expect(h.policy.current().config.roles['developer']?.allow).toHaveLength(3);
  });

  it('an invalid policy is 400 with every error path, and the running policy is untouched', async () => {
    const bad = BASE_POLICY.replace('ports: [22, 443]', 'ports: [22, 99999]').replace('cidr: 10.1.0.0/16', 'cidr: 10.1.0.0/99');
    const res = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'content-type': 'application/yaml' }), payload: bad });
    expect(res.statusCode).toBe(400);
    const body = res.json();
    expect(body.error).toBe('invalid-policy');
    const paths = body.details.map((d: { path: string }) => d.path);
    expect(paths).toContain('roles.developer.allow[1].ports[1]');
    expect(paths.some((p: string) => p.startsWith('identity.hosts[0].cidr'))).toBe(true);
    expect(h.policy.current().version).toBe(1);
    const get = await h.app.inject({ url: '/v1/policy', headers: read() });
    expect(get.json().version).toBe(1);
    expect(h.audit.list()[0]).toMatchObject({ status: 400, beforeVersion: 1, afterVersion: 1 });
  });

  it('unknown keys are refused (JSON body)', async () => {
    const res = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin(), payload: { mode: 'monitor', bogus: 1 } });
    expect(res.statusCode).toBe(400);
    expect(res.json().details[0].path).toBe('bogus');
  });

  it('If-Match: matching version passes, a stale one is 412 and changes nothing, * passes', async () => {
    const stale = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'if-match': '"7"', 'content-type': 'text/yaml' }), payload: BASE_POLICY });
    expect(stale.statusCode).toBe(412);
    expect(stale.json()).toMatchObject({ error: 'precondition-failed', details: { currentVersion: 1 } });
    expect(h.policy.current().version).toBe(1);
    const ok = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'if-match': '"1"', 'content-type': 'text/yaml' }), payload: BASE_POLICY });
    expect(ok.statusCode).toBe(200);
    const lost = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'if-match': '"1"', 'content-type': 'text/yaml' }), payload: BASE_POLICY });
    expect(lost.statusCode).toBe(412);
    const any = await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'if-match': '*', 'content-type': 'text/yaml' }), payload: BASE_POLICY });
    expect(any.statusCode).toBe(200);
    expect(any.headers.etag).toBe('"3"');
  });

  it('If-Match uses the strong comparison: a weak tag never matches, an unquoted version is no entity-tag (400)', async () => {
    const put = (ifMatch: string) =>
      h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'if-match': ifMatch, 'content-type': 'text/yaml' }), payload: BASE_POLICY });
    for (const weak of ['W/"1"', 'W/"1", W/"2"', '"01"', '"x", W/"1"']) {
      const res = await put(weak);
      expect(res.statusCode, weak).toBe(412);
      expect(res.json(), weak).toMatchObject({ error: 'precondition-failed', details: { currentVersion: 1 } });
    }
    for (const bad of ['1', '', '*, "1"', '"1', 'w/"1"', '"1"x', '"1 "', '1, "1"']) {
      const res = await put(bad);
      expect(res.statusCode, bad).toBe(400);
      expect(res.json(), bad).toMatchObject({ error: 'bad-request', details: [{ path: 'headers.if-match' }] });
    }
    expect(h.policy.current().version).toBe(1);
    const listed = await put('W/"1", "9", "1"');
    expect(listed.statusCode, listed.body).toBe(200);
    expect(listed.headers.etag).toBe('"2"');
    // A rollback takes no If-Match: the header is not read there (it restores by version number).
    const rb = await h.app.inject({ method: 'POST', url: '/v1/policy/rollback/1', headers: admin({ 'if-match': 'W/"2"' }) });
    expect(rb.statusCode, rb.body).toBe(200);
  });

  it('POST /v1/policy/validate reports validity without changing anything', async () => {
    const good = await h.app.inject({ method: 'POST', url: '/v1/policy/validate', headers: read(), payload: { mode: 'enforce' } });
    expect(good.statusCode).toBe(200);
    expect(good.json()).toMatchObject({ valid: true, errors: [] });
    const bad = await h.app.inject({
      method: 'POST',
      url: '/v1/policy/validate',
      headers: bearer(TOKENS.read, { 'content-type': 'text/yaml' }),
      payload: 'mode: sometimes\nroles: { dev: { allow: [ { host: "a..b" } ] } }\n',
    });
    expect(bad.statusCode).toBe(200);
    const body = bad.json();
    expect(body.valid).toBe(false);
    expect(body.errors.map((e: { path: string }) => e.path)).toEqual(expect.arrayContaining(['mode']));
    expect(h.policy.current().version).toBe(1);
    expect(h.audit.list()).toHaveLength(0);
  });

  it('POST /v1/policy/evaluate explains the matching rule, and the refusal', async () => {
    const allow = await h.app.inject({ method: 'POST', url: '/v1/policy/evaluate', headers: read(), payload: { dest: 'api.example.com:443' } });
    expect(allow.statusCode).toBe(200);
    expect(allow.json()).toMatchObject({
      version: 1,
      verdict: 'allow',
      reason: 'allowed',
      matchedRule: { role: 'developer', index: 0 },
      identity: { roles: ['developer'] },
      destination: { host: 'api.example.com', port: 443 },
    });
    const deny = await h.app.inject({ method: 'POST', url: '/v1/policy/evaluate', headers: read(), payload: { dest: 'evil.test:443' } });
    expect(deny.json()).toMatchObject({ verdict: 'would-block', reason: 'not-allowlisted', detector: 'policy.deny', matchedRule: null });
    // A source in the host inventory takes the ci role, which enforces.
    const ci = await h.app.inject({ method: 'POST', url: '/v1/policy/evaluate', headers: read(), payload: { dest: 'evil.test:443', source: '10.1.2.3' } });
    expect(ci.json()).toMatchObject({ verdict: 'block', mode: 'enforce', identity: { host: 'build-farm', roles: ['ci'] } });
    // resolver.hosts gives the address: loopback is a private range, refused whatever the mode.
    const ssrf = await h.app.inject({ method: 'POST', url: '/v1/policy/evaluate', headers: read(), payload: { dest: 'files.example.test:443' } });
    expect(ssrf.json()).toMatchObject({ verdict: 'block', reason: 'deny-range', destination: { ip: '127.0.0.1' } });
    const badDest = await h.app.inject({ method: 'POST', url: '/v1/policy/evaluate', headers: read(), payload: { dest: 'no-port' } });
    expect(badDest.statusCode).toBe(400);
    const missing = await h.app.inject({ method: 'POST', url: '/v1/policy/evaluate', headers: read(), payload: { user: 'x' } });
    expect(missing.statusCode).toBe(400);
    expect(missing.json()).toMatchObject({ error: 'bad-request', details: [{ path: 'body.dest' }] });
  });

  it('history lists versions with author and time; rollback restores one as a new version', async () => {
    const next = BASE_POLICY.replace('mode: monitor', 'mode: enforce');
    await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: admin({ 'content-type': 'text/yaml' }), payload: next });
    const hist = await h.app.inject({ url: '/v1/policy/history', headers: read() });
    expect(hist.statusCode).toBe(200);
    const versions = hist.json().versions;
    expect(hist.json().current).toBe(2);
    expect(versions.map((v: { version: number }) => v.version)).toEqual([2, 1]);
    expect(versions[0]).toMatchObject({ author: 'ops', current: true });
    expect(Date.parse(versions[0].time)).not.toBeNaN();
    const rb = await h.app.inject({ method: 'POST', url: '/v1/policy/rollback/1', headers: admin() });
    expect(rb.statusCode).toBe(200);
    expect(rb.json()).toMatchObject({ version: 3, mode: 'monitor', author: 'ops' });
    expect(h.policy.current().config.mode).toBe('monitor');
    const unknown = await h.app.inject({ method: 'POST', url: '/v1/policy/rollback/42', headers: admin() });
    expect(unknown.statusCode).toBe(404);
    const notNumber = await h.app.inject({ method: 'POST', url: '/v1/policy/rollback/latest', headers: admin() });
    expect(notNumber.statusCode).toBe(400);
    expect(h.audit.list().map((a) => [a.route, a.status])).toEqual([
      ['/v1/policy/rollback/:version', 400],
      ['/v1/policy/rollback/:version', 404],
      ['/v1/policy/rollback/:version', 200],
      ['/v1/policy', 200],
    ]);
  });

  it('mode: switch monitor ↔ enforce at run time, and back to the config with null', async () => {
    const get = await h.app.inject({ url: '/v1/mode', headers: read() });
    expect(get.json()).toEqual({ mode: 'monitor', configMode: 'monitor', override: null, roleModes: { ci: 'enforce' } });
    const set = await h.app.inject({ method: 'PUT', url: '/v1/mode', headers: admin(), payload: { mode: 'enforce' } });
    expect(set.statusCode).toBe(200);
    expect(set.json()).toMatchObject({ mode: 'enforce', override: 'enforce' });
    expect(h.policy.modeOverride()).toBe('enforce');
    // The switch changes verdicts of new connections at once.
    const ev = await h.app.inject({ method: 'POST', url: '/v1/policy/evaluate', headers: read(), payload: { dest: 'evil.test:443' } });
    expect(ev.json()).toMatchObject({ verdict: 'block', mode: 'enforce' });
    const bad = await h.app.inject({ method: 'PUT', url: '/v1/mode', headers: admin(), payload: { mode: 'panic' } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().details[0].path).toMatch(/^body/);
    const reset = await h.app.inject({ method: 'PUT', url: '/v1/mode', headers: admin(), payload: { mode: null } });
    expect(reset.json()).toMatchObject({ mode: 'monitor', override: null });
    const audit = h.audit.list();
    expect(audit[2]).toMatchObject({ route: '/v1/mode', status: 200, detail: 'mode monitor -> enforce' });
    expect(audit[0]).toMatchObject({ route: '/v1/mode', status: 200, detail: 'mode enforce -> monitor (config)' });
  });

  it('GET /v1/audit lists writes newest first (read scope)', async () => {
    await h.app.inject({ method: 'PUT', url: '/v1/mode', headers: admin(), payload: { mode: 'enforce' } });
    await h.app.inject({ method: 'PUT', url: '/v1/mode', headers: read(), payload: { mode: 'monitor' } });
    const res = await h.app.inject({ url: '/v1/audit?limit=10', headers: read() });
    expect(res.statusCode).toBe(200);
    const entries = res.json().entries;
    expect(entries).toHaveLength(2);
    expect(entries[0]).toMatchObject({ actor: 'soc', status: 403, method: 'PUT', sourceIp: '127.0.0.1' });
    expect(entries[1]).toMatchObject({ actor: 'ops', status: 200 });
  });
});
