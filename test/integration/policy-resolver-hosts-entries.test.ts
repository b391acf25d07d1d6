/**
 * A `resolver.hosts` entry that cannot do what it says is refused with its path: a name that is an
 * IP address (a destination written as an address is dialled as itself, never looked up, so the
 * entry was never read) and an answer with a zone id (dropped by normalisation: the address was
 * dialled unscoped). Before, both were taken without a word. Reproduced through the real admin and
 * proxy listeners: `PUT /v1/policy` with `"10.0.0.1": 127.0.0.1` answered 200 (version 2) and a
 * CONNECT to 10.0.0.1 was still judged as 10.0.0.1 (403 `deny-range`), not the 127.0.0.1 the entry
 * named; with `x.test: "fe80::1%eth0"` (allowRanges fe80::/10) it answered 200 and a CONNECT to
 * x.test was dialled at fe80::1 with no interface (502 `unreachable`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
beforeAll(async () => {
  gw = await startTestGateway({ mode: 'enforce', roles: { dev: { allow: [{ cidr: '127.0.0.0/8' }] } }, defaultRoles: ['dev'] });
});
afterAll(async () => {
  await gw?.stop();
});

const send = (method: string, path: string, body?: string): Promise<Response> =>
  fetch(`${gw.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'text/yaml' }, ...(body === undefined ? {} : { body }) });

function policyWith(hosts: string): string {
  return `mode: enforce
allowRanges: ["127.0.0.0/8", "fe80::/10"]
roles: { dev: { allow: [ { cidr: 127.0.0.0/8 }, { cidr: "fe80::/10" } ] } }
defaultRoles: [dev]
resolver: { hosts: { ${hosts} } }
flowLog: { path: null }
`;
}

describe('resolver.hosts entries that would never be used as written', () => {
  it.each([
    ['an IP address as the name', '"10.0.0.1": 127.0.0.1', 'resolver.hosts["10.0.0.1"]', /is an IP address, which is dialled as itself/],
    ['an IPv6 address as the name', '"[::1]": 127.0.0.1', 'resolver.hosts["[::1]"]', /is an IP address/],
    ['an answer with a zone id', 'x.test: "fe80::1%eth0"', 'resolver.hosts["x.test"]', /zone ids are not allowed/],
  ])('%s: PUT /v1/policy and validate answer 400 naming the entry; the policy stays', async (_what, hosts, path, message) => {
    const validate = (await (await send('POST', '/v1/policy/validate', policyWith(hosts))).json()) as { valid: boolean; errors: Array<{ path: string }> };
    expect(validate).toMatchObject({ valid: false, errors: [{ path }] });
    const put = await send('PUT', '/v1/policy', policyWith(hosts));
    expect(put.status).toBe(400);
    const body = (await put.json()) as { details: Array<{ path: string; message: string }> };
    expect(body.details).toEqual([{ path, message: expect.stringMatching(message) }]);
    expect(((await (await send('GET', '/v1/policy')).json()) as { version: number }).version).toBe(1);
  });

  it('an entry for a name with an address is taken', async () => {
    expect((await send('PUT', '/v1/policy', policyWith('x.test: 127.0.0.1, y.test: "fe80::1"'))).status).toBe(200);
  });
});
