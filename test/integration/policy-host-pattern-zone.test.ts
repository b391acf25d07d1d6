/**
 * An allow entry naming an IPv6 address with a zone id (`host: "fe80::1%eth0"`) is refused with its
 * path, as a CIDR with one is. Before, the zone was dropped without a word: `check`, start-up and
 * `PUT /v1/policy` took the entry as `fe80::1` on no interface in particular (matchedRule still
 * `host=fe80::1%eth0`), a rule that can never mean what it says, since no destination carries a zone
 * (the data plane refuses `[fe80::1%25eth0]`). Reproduced through the real admin listener: the PUT
 * answered 200 (version 2) and a CONNECT to `[fe80::1]` was admitted and dialled (502 on a host with
 * no such neighbour) where the running policy refused it 403.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpConnect } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
beforeAll(async () => {
  gw = await startTestGateway({
    mode: 'enforce',
    allowRanges: ['127.0.0.0/8', 'fe80::/10'],
    roles: { dev: { allow: [{ host: 'allowed.test' }] } },
    defaultRoles: ['dev'],
  });
});
afterAll(async () => {
  await gw?.stop();
});

const POLICY = `mode: enforce
allowRanges: ["fe80::/10"]
roles: { dev: { allow: [ { host: "allowed.test" }, { host: "fe80::1%eth0", ports: [443] } ] } }
defaultRoles: [dev]
flowLog: { path: null }
`;

describe('a host pattern with a zone id', () => {
  it('PUT /v1/policy and validate: 400 naming roles.dev.allow[1].host; [fe80::1] stays refused', async () => {
    const send = (method: string, path: string, body?: string): Promise<Response> =>
      fetch(`${gw.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'text/yaml' }, ...(body === undefined ? {} : { body }) });
    const validate = (await (await send('POST', '/v1/policy/validate', POLICY)).json()) as { valid: boolean; errors: Array<{ path: string }> };
    expect(validate.valid).toBe(false);
    expect(validate.errors.map((e) => e.path)).toEqual(['roles.dev.allow[1].host']);

    const put = await send('PUT', '/v1/policy', POLICY);
    expect(put.status).toBe(400);
    const body = (await put.json()) as { details: Array<{ path: string; message: string }> };
    expect(body.details).toEqual([{ path: 'roles.dev.allow[1].host', message: expect.stringMatching(/zone ids are not allowed/) }]);
    expect(((await (await send('GET', '/v1/policy')).json()) as { version: number }).version).toBe(1);

    const answer = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, '[fe80::1]:443');
    answer.socket.destroy();
    expect(answer.status).toBe(403);
    expect(JSON.parse(answer.body)).toMatchObject({ error: 'egress denied', reason: 'not-allowlisted' });
    // The entry without its zone is what it meant to be; it is taken.
    expect((await send('PUT', '/v1/policy', POLICY.replace('%eth0', ''))).status).toBe(200);
  });
});
