/**
 * A request body is UTF-8 or refused (RFC 8259 §8.1: JSON exchanged between systems MUST be UTF-8),
 * through the real admin listener, on every route that takes one: a Content-Type naming another
 * charset is 415 `unsupported-media-type` in the API's error shape, before the body is read, and
 * changes nothing. Before, `charset=iso-8859-1` was read as UTF-8 (a PUT whose allowed host has a
 * latin-1 `é` was 400 `invalid-policy` about "caf\uFFFD.example.test", an ASCII `PUT /v1/mode` was
 * taken) and `charset=utf-16` was 400 "not valid JSON".
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runningConfig, startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
});

async function send(method: string, path: string, contentType: string, body: Buffer): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${gw.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': contentType }, body });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function policyVersion(): Promise<number> {
  const res = await fetch(`${gw.adminUrl}/v1/policy`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
  return ((await res.json()) as { version: number }).version;
}

describe('admin API: a request body in another charset', () => {
  it('is 415 on every route that takes a body, and the policy is unchanged', async () => {
    const config = await runningConfig(gw);
    const policy = JSON.stringify({ ...config, roles: { ...(config['roles'] as object), cafe: { allow: [{ host: 'café.example.test' }] } } });
    const bodies: Array<[string, string, string]> = [
      ['PUT', '/v1/policy', policy],
      ['POST', '/v1/policy/validate', policy],
      ['POST', '/v1/policy/evaluate', JSON.stringify({ dest: '127.0.0.1:443' })],
      ['PUT', '/v1/mode', JSON.stringify({ mode: 'enforce' })],
      ['POST', '/v1/agents/reports', JSON.stringify({ reports: [] })],
    ];
    for (const [method, path, text] of bodies) {
      for (const [contentType, encoding] of [
        ['application/json; charset=iso-8859-1', 'latin1'],
        ['application/json; charset=utf-16', 'utf16le'],
        ['application/json;charset="UTF-16LE"', 'utf16le'],
        ['application/yaml; charset=windows-1252', 'latin1'],
      ] as const) {
        const got = await send(method, path, contentType, Buffer.from(text, encoding));
        expect({ method, path, contentType, status: got.status, error: got.body['error'] }).toEqual({
          method,
          path,
          contentType,
          status: 415,
          error: 'unsupported-media-type',
        });
        expect(String(got.body['message'])).toMatch(/must be UTF-8/);
      }
    }
    expect(await policyVersion()).toBe(1);
    expect(JSON.parse((await (await fetch(`${gw.adminUrl}/v1/mode`, { headers: { authorization: `Bearer ${gw.adminToken}` } })).text())).override).toBeNull();
  });

  it('takes UTF-8 and US-ASCII, named or not, as before', async () => {
    const config = await runningConfig(gw);
    const policy = JSON.stringify({ ...config, roles: { ...(config['roles'] as object), cafe: { allow: [{ host: 'café.example.test' }] } } });
    for (const contentType of ['application/json', 'application/json; charset=utf-8', 'application/json; charset="UTF-8"', 'application/json; charset=us-ascii']) {
      const got = await send('POST', '/v1/policy/validate', contentType, Buffer.from(contentType.includes('ascii') ? JSON.stringify(config) : policy, 'utf8'));
      expect({ contentType, status: got.status, valid: got.body['valid'] }).toEqual({ contentType, status: 200, valid: true });
    }
    const put = await send('PUT', '/v1/policy', 'application/json; charset=utf-8', Buffer.from(policy, 'utf8'));
    expect(put.status).toBe(200);
    expect(JSON.stringify((await runningConfig(gw))['roles'])).toMatch(/café\.example\.test|xn--caf-dma\.example\.test/);
  });

  it('needs a token before the charset is looked at', async () => {
    const res = await fetch(`${gw.adminUrl}/v1/policy/validate`, { method: 'POST', headers: { 'content-type': 'application/json; charset=utf-16' }, body: '{}' });
    await res.arrayBuffer();
    expect(res.status).toBe(401);
  });
});
