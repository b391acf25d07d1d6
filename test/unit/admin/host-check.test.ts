import { describe, expect, it } from 'vitest';
import { adminExposureWarning, HostCheck, hostHeaderName } from '../../../admin/host-check.ts';

describe('HostCheck', () => {
  it('without admin.allowedHosts: any name on a non-loopback arrival (PAC by its served name), loopback names only on a loopback one', () => {
    const check = new HostCheck(() => []);
    expect(check.accepts('gw.corp.example:9180', '10.0.0.5')).toBe(true);
    expect(check.accepts('gw.corp.example:9180', '127.0.0.1')).toBe(false);
    expect(check.accepts('gw.corp.example:9180', '::1')).toBe(false);
    expect(check.accepts('gw.corp.example:9180', '::ffff:127.0.0.1')).toBe(false);
    expect(check.accepts('localhost:9180', '127.0.0.1')).toBe(true);
    expect(check.accepts('10.0.0.5:9180', '127.0.0.1')).toBe(true);
    expect(check.accepts('[fe80::1]:9180', '127.0.0.1')).toBe(true);
    expect(check.accepts(undefined, '127.0.0.1')).toBe(true);
  });

  it('with admin.allowedHosts: only those names besides loopback names and IP literals, wherever the connection arrived', () => {
    const check = new HostCheck(() => ['gw.corp.example']);
    expect(check.accepts('GW.corp.example.:9180', '10.0.0.5')).toBe(true);
    expect(check.accepts('other.example:9180', '10.0.0.5')).toBe(false);
    expect(check.accepts('10.0.0.5:9180', '10.0.0.5')).toBe(true);
    expect(new HostCheck(() => ['*']).accepts('anything.example', '127.0.0.1')).toBe(true);
  });

  it('refuses malformed values', () => {
    const check = new HostCheck(() => ['*']);
    expect(check.accepts('a b:80', '10.0.0.5')).toBe(false);
    expect(check.accepts('host:port', '10.0.0.5')).toBe(false);
    expect(check.accepts('[::1', '10.0.0.5')).toBe(false);
    // A name cut at "/" or "\\" was judged as what stood before it: localhost, or an allowed name.
    expect(check.accepts('gw.example/x', '10.0.0.5')).toBe(false);
    expect(new HostCheck(() => []).accepts('localhost/x:9180', '127.0.0.1')).toBe(false);
    expect(new HostCheck(() => []).accepts('localhost\\.evil.example', '127.0.0.1')).toBe(false);
    expect(new HostCheck(() => ['gw.example']).accepts('gw.example#x', '10.0.0.5')).toBe(false);
    expect(hostHeaderName('[::1]:9180')).toBe('::1');
    expect(hostHeaderName('example.com')).toBe('example.com');
  });
});

describe('adminExposureWarning', () => {
  it('is null on loopback, a warning on a wildcard or network address, naming allowedHosts only when empty', () => {
    expect(adminExposureWarning('127.0.0.1:9090', [])).toBeNull();
    expect(adminExposureWarning('[::1]:9090', [])).toBeNull();
    expect(adminExposureWarning('0.0.0.0:9090', [])).toMatch(/listens on 0\.0\.0\.0:9090, not a loopback address.*allowedHosts is empty/);
    expect(adminExposureWarning('[::]:9090', ['gw.example'])).toBe('the admin API listens on [::]:9090, not a loopback address: it is reachable from other hosts (token required)');
    expect(adminExposureWarning('10.1.2.3:9090', ['*'])).toMatch(/^the admin API listens on 10\.1\.2\.3:9090/);
  });
});
