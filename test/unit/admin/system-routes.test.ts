import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildPac, pacProxyAddress } from '../../../admin/pac.ts';
import { defaultConfig } from '../../../policy/config.ts';
import { bearer, type Harness, makeHarness, TOKENS } from './harness.ts';

describe('health, readiness, metrics, PAC, OpenAPI, docs', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await makeHarness();
  });
  afterAll(async () => {
    await h.close();
  });

  it('/healthz is ok; /readyz is 503 until the port is ready', async () => {
    expect((await h.app.inject({ url: '/healthz' })).json()).toEqual({ status: 'ok' });
    h.ready.value = false;
    const notReady = await h.app.inject({ url: '/readyz' });
    expect(notReady.statusCode).toBe(503);
    expect(notReady.json()).toMatchObject({ error: 'not-ready' });
    h.ready.value = true;
    const ready = await h.app.inject({ url: '/readyz' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toEqual({ status: 'ready' });
  });

  it('/metrics is Prometheus text with every gateway metric, and follows the flow table', async () => {
    const flow = h.flows.open({
      protocol: 'connect',
      listener: 'http',
      client: { ip: '127.0.0.1', port: 5555 },
      identity: { user: null, host: null, roles: [], process: null },
      destination: { host: 'a.example.com', ip: null, port: 443 },
    });
    h.flows.decide(flow, { verdict: 'allow', reason: 'allowed', detector: null, mode: 'monitor', matchedRule: null, reasons: [] }, false);
    flow.bytesOut = 100;
    flow.bytesIn = 7;
    h.flows.sweep();
    const during = await h.app.inject({ url: '/metrics', headers: bearer(TOKENS.read) });
    expect(during.statusCode).toBe(200);
    expect(during.headers['content-type']).toMatch(/^text\/plain/);
    for (const name of [
      'gw_downstream_cx_total',
      'gw_downstream_cx_active',
      'gw_upstream_cx_connect_fail_total',
      'gw_flows_active',
      'gw_flow_bytes_total',
      'gw_flows_closed_total',
      'gw_policy_decisions_total',
      'gw_detector_alerts_total',
      'gw_sweep_duration_ms',
      'gw_config_reload_total',
    ]) {
      expect(during.body).toContain(`# TYPE ${name}`);
    }
    expect(during.body).toContain('gw_flows_active 1');
    expect(during.body).toContain('gw_flow_bytes_total{direction="out"} 100');
    expect(during.body).toContain('gw_policy_decisions_total{verdict="allow",reason="allowed"} 1');
    flow.bytesOut = 150;
    h.flows.close(flow, 'done');
    const after = (await h.app.inject({ url: '/metrics', headers: bearer(TOKENS.read) })).body;
    expect(after).toContain('gw_flows_active 0');
    expect(after).toContain('gw_flow_bytes_total{direction="out"} 150');
    expect(after).toContain('gw_flow_bytes_total{direction="in"} 7');
    // the verdict is counted once per flow, not once per sweep
    expect(after).toContain('gw_policy_decisions_total{verdict="allow",reason="allowed"} 1');
    // one per record, by its closeReason ('done' is none the gateway gives: other)
    expect(after).toContain(`gw_flows_closed_total{protocol="${flow.protocol}",close_reason="other"} 1`);
  });

  it('a failed PUT counts as a failed reload, a good one as a success', async () => {
    await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: bearer(TOKENS.admin), payload: { mode: 'bogus' } });
    await h.app.inject({ method: 'PUT', url: '/v1/policy', headers: bearer(TOKENS.admin), payload: h.port.getPolicy().config });
    const text = (await h.app.inject({ url: '/metrics', headers: bearer(TOKENS.read) })).body;
    expect(text).toContain('gw_config_reload_total{result="failure"} 1');
    expect(text).toContain('gw_config_reload_total{result="success"} 1');
  });

  it('/proxy.pac sends everything through the HTTP listener and lists the allowlists', async () => {
    const res = await h.app.inject({ url: '/proxy.pac' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/x-ns-proxy-autoconfig/);
    expect(res.body).toContain('function FindProxyForURL(url, host)');
    expect(res.body).toContain('return "PROXY 127.0.0.1:3128";');
    const code = res.body.split('\n').filter((l) => !l.startsWith('//'));
    expect(code.join('\n')).not.toContain('DIRECT');
    expect(res.body).toContain('//     *.example.com ports 443');
    expect(res.body).toContain('//   ci [enforce]:');
  });

  it('PAC helpers: unspecified bind addresses take the request host; no comment escapes its line', () => {
    expect(pacProxyAddress('0.0.0.0:3128', 'gw.corp')).toBe('gw.corp:3128');
    expect(pacProxyAddress('[::]:3128', 'gw.corp')).toBe('gw.corp:3128');
    expect(pacProxyAddress('[::1]:3128', 'gw.corp')).toBe('[::1]:3128');
    const c = defaultConfig();
    c.roles = { 'x\nfunction evil() {}': { allow: [] } };
    const pac = buildPac(c, 1, '127.0.0.1:3128');
    expect(pac.split('\n').filter((l) => l.includes('evil')).every((l) => l.startsWith('//'))).toBe(true);
  });

  it('/openapi.json documents every route with its scope and schemas (read token)', async () => {
    expect((await h.app.inject({ url: '/openapi.json' })).statusCode).toBe(401);
    const res = await h.app.inject({ url: '/openapi.json', headers: bearer(TOKENS.read) });
    expect(res.statusCode).toBe(200);
    const doc = res.json();
    expect(doc.openapi).toBe('3.1.0');
    const expected: Array<[string, string]> = [
      ['/healthz', 'get'],
      ['/readyz', 'get'],
      ['/metrics', 'get'],
      ['/v1/policy', 'get'],
      ['/v1/policy', 'put'],
      ['/v1/policy/validate', 'post'],
      ['/v1/policy/evaluate', 'post'],
      ['/v1/policy/history', 'get'],
      ['/v1/policy/rollback/{version}', 'post'],
      ['/v1/mode', 'get'],
      ['/v1/mode', 'put'],
      ['/v1/flows', 'get'],
      ['/v1/flows/{id}', 'get'],
      ['/v1/flows/{id}', 'delete'],
      ['/v1/alerts', 'get'],
      ['/v1/alerts/stream', 'get'],
      ['/v1/quarantines', 'get'],
      ['/v1/quarantines', 'delete'],
      ['/v1/quarantines/{key}', 'delete'],
      ['/v1/agents/reports', 'post'],
      ['/v1/agents', 'get'],
      ['/v1/audit', 'get'],
      ['/proxy.pac', 'get'],
    ];
    for (const [path, method] of expected) expect(doc.paths[path]?.[method], `${method} ${path}`).toBeDefined();
    expect(doc.paths['/v1/flows/{id}'].delete['x-scope']).toBe('admin');
    expect(doc.paths['/v1/flows/{id}'].delete.parameters[0]).toMatchObject({ name: 'id', in: 'path', required: true });
    expect(doc.paths['/v1/quarantines'].get['x-scope']).toBe('read');
    expect(doc.paths['/v1/quarantines/{key}'].delete['x-scope']).toBe('admin');
    expect(doc.paths['/v1/quarantines/{key}'].delete.parameters[0]).toMatchObject({ name: 'key', in: 'path', required: true });
    expect(doc.paths['/v1/quarantines'].delete.parameters[0]).toMatchObject({ name: 'key', in: 'query', required: true });
    expect(doc.paths['/v1/flows'].get.parameters.map((p: { name: string }) => p.name)).toEqual(
      expect.arrayContaining(['state', 'user', 'host', 'process', 'destination', 'verdict', 'limit', 'offset']),
    );
    expect(doc.paths['/v1/policy/evaluate'].post.requestBody.content['application/json'].schema.required).toEqual(['dest']);
    expect(doc.paths['/healthz'].get.security).toEqual([]);
    expect(doc.paths['/v1/policy'].put.security).toEqual([{ bearer: [] }]);
    expect(doc.paths['/v1/alerts/stream'].get.responses['200'].content['text/event-stream']).toBeDefined();
  });

  it('/docs is an HTML page listing the routes (read token)', async () => {
    expect((await h.app.inject({ url: '/docs' })).statusCode).toBe(401);
    const res = await h.app.inject({ url: '/docs', headers: bearer(TOKENS.read) });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/html/);
    expect(res.body).toContain('<code>/v1/flows/{id}</code>');
    expect(res.body).toContain('<code>DELETE</code>');
  });
});
