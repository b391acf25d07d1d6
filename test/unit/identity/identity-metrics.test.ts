import { describe, expect, it } from 'vitest';
import { createIdentityResolver } from '../../../gateway/identity/identity-resolver.ts';
import { GatewayStats } from '../../../gateway/stats.ts';
import { compilePolicy } from '../../../policy/compile.ts';
import { defaultConfig } from '../../../policy/config.ts';

describe('identity metrics (GatewayStats.attachIdentity)', () => {
  it('exports failure, spoof and throttle counters read at scrape time', async () => {
    const cfg = defaultConfig();
    cfg.identity.users = [{ name: 'alice', password: 'pw', roles: [] }];
    const snap = compilePolicy(cfg);
    const resolver = createIdentityResolver({ throttle: { freeFailures: 1 }, sleep: async () => {} });
    const stats = new GatewayStats();
    stats.attachIdentity(resolver);
    const before = await stats.text();
    expect(before).toContain('gw_identity_auth_failures_total{reason="bad-credentials"} 0');

    for (let i = 0; i < 3; i++) await resolver.resolve({ clientIp: '198.51.100.1', clientPort: 1, username: 'alice', password: 'no' }, snap);
    await resolver.resolve({ clientIp: '198.51.100.2', clientPort: 1, headers: { 'x-egress-user': 'root' } }, snap);
    const text = await stats.text();
    expect(text).toContain('gw_identity_auth_failures_total{reason="bad-credentials"} 3');
    expect(text).toContain('gw_identity_spoof_attempts_total 1');
    // freeFailures 1: the 2nd and 3rd attempts from 198.51.100.1 were delayed.
    expect(text).toContain('gw_identity_auth_throttled_total 2');
    expect(text).toContain('gw_identity_throttle_sources_active 1');
  });
});
