/**
 * An identity header from an untrusted source is a spoof attempt, logged (spec-notes "… from any
 * other source the identity headers are ignored (a spoof attempt, logged)") — also when the request
 * is then refused 407 because `identity.requireAuth` finds no credentials. Before, that request
 * counted in gw_identity_spoof_attempts_total but left no log line: the warn was written only for
 * admitted requests, so the likeliest spoofer (no credentials, naming itself) was the one the log
 * never showed. Real gateway, raw clients on the absolute-URI path and CONNECT.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';

const SPOOF_LOG = 'identity header from untrusted source ignored';

describe('an identity header from an untrusted source, refused 407 by requireAuth', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway({
      mode: 'enforce',
      identity: { requireAuth: true, users: [{ name: 'alice', password: 'pw-alice-0123', roles: ['any'] }], headers: { trustedSources: ['127.0.0.2/32'] } },
    });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it.each([
    ['an absolute-URI GET', 'GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Egress-User: mallory\r\n\r\n'],
    ['CONNECT', 'CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Egress-User: mallory\r\n\r\n'],
  ])('%s: 407, its record, and the spoof attempt logged', async (_kind, request) => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const answer = readUntil(s, '\r\n\r\n');
    s.write(request);
    const text = (await answer).toString('latin1');
    s.destroy();
    expect(text).toMatch(/^HTTP\/1\.1 407 /);
    const flowId = /"flowId":"([^"]+)"/.exec(text)?.[1];
    const record = await gw.waitForClosed((r) => r.id === flowId);
    expect(record).toMatchObject({ verdict: 'block', reason: 'auth-required' });
    expect(record.identity.user).toBeNull();
    const lines = gw.logs.filter((l) => l.msg === SPOOF_LOG);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.at(-1)).toMatchObject({ client: '127.0.0.1' });
    expect(String(lines.at(-1)?.['header'])).toContain('x-egress-user="mallory"');
  });

  it('the log lines match the counter', async () => {
    const m = /^gw_identity_spoof_attempts_total (\d+)$/m.exec((await adminGet(gw, '/metrics')).text);
    expect(Number(m?.[1])).toBe(gw.logs.filter((l) => l.msg === SPOOF_LOG).length);
  });
});
