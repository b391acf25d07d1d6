/**
 * Limits that a reload changes for new connections (SPEC §2 SIGHUP / PUT /v1/policy): the largest
 * request head (`limits.maxHeaderBytes`, 431 past it) and the origin connect timeout of the
 * absolute-URI path, which undici fixes per Agent (OriginAgents makes new ones).
 */
import { newViaName } from '../../gateway/via.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OriginAgents } from '../../gateway/listeners/http-forward.ts';
import { type LocalGateway, type Origin, rawExchange, startLocalGateway, startOrigin } from './http-harness.ts';

let gw: LocalGateway;
let origin: Origin;

beforeAll(async () => {
  origin = await startOrigin();
  gw = await startLocalGateway({ mode: 'enforce' });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

const POLICY = (maxHeaderBytes: number): string => `mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
flowLog: { path: null }
limits: { maxHeaderBytes: ${maxHeaderBytes} }
`;

describe('limits reloaded for new connections', () => {
  it('maxHeaderBytes: a 6 KB head passes at 16 KiB, gets 431 on the very next connection after a reload to 4 KiB', async () => {
    const o = `127.0.0.1:${origin.port}`;
    const request = `GET http://${o}/size/10 HTTP/1.1\r\nHost: ${o}\r\nX-Pad: ${'p'.repeat(6000)}\r\nConnection: close\r\n\r\n`;
    expect(gw.policy.reload(POLICY(16_384), { author: 'test', source: 'api' }).ok).toBe(true);
    const before = await rawExchange(gw.httpPort, request);
    expect(before.response.slice(9, 12)).toBe('200');
    expect(gw.policy.reload(POLICY(4096), { author: 'test', source: 'api' }).ok).toBe(true);
    const after = await rawExchange(gw.httpPort, request);
    expect(after.response.slice(9, 12)).toBe('431');
    expect(gw.policy.reload(POLICY(16_384), { author: 'test', source: 'api' }).ok).toBe(true);
    const again = await rawExchange(gw.httpPort, request);
    expect(again.response.slice(9, 12)).toBe('200');
  });

  it('the origin connect timeout: a changed value gets new undici Agents, an unchanged one keeps the pool', async () => {
    const agents = new OriginAgents(1000, newViaName().value);
    const first = agents.for(null);
    expect(agents.for(null, 1000)).toBe(first);
    const second = agents.for(null, 2500);
    expect(second).not.toBe(first);
    expect(agents.for(null)).toBe(second);
    await agents.destroy();
  });
});
