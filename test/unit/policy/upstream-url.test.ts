import { describe, expect, it } from 'vitest';
import { parseParentUrl, urlForMessage } from '../../../policy/upstream-url.ts';

// Regression: dial() read the port from URL.port, which the WHATWG parser leaves empty when it is the
// scheme's default, so `upstream: http://parent:80` was dialled at parent:3128.
describe('parseParentUrl: the parent proxy a URL names', () => {
  it.each([
    ['http://parent.example.net:80', 'parent.example.net', 80],
    ['HTTP://parent.example.net:0080/', 'parent.example.net', 80],
    ['http://user:p%40ss@parent.example.net:80', 'parent.example.net', 80],
    ['http://[2001:db8::1]:80', '2001:db8::1', 80],
    ['http://parent.example.net', 'parent.example.net', 3128],
    ['http://parent.example.net:', 'parent.example.net', 3128],
    ['http://[2001:db8::1]', '2001:db8::1', 3128],
    ['http://parent.example.net:8080/x?y=:9#:7', 'parent.example.net', 8080],
    ['socks5://parent.example.net', 'parent.example.net', 1080],
    ['socks5h://user:pw@parent.example.net:80', 'parent.example.net', 80],
    ['socks5://parent.example.net:1081', 'parent.example.net', 1081],
  ])('%s is %s port %i', (url, host, port) => {
    expect(parseParentUrl(url)).toMatchObject({ host, port });
  });

  it('refuses port 0, schemes it cannot dial, and what is not a URL', () => {
    expect(parseParentUrl('socks5://parent.example.net:0')).toEqual({ error: 'port 0 is not a port a parent proxy listens on' });
    expect(parseParentUrl('https://parent.example.net:3129')).toEqual({ error: 'unsupported parent proxy scheme https:' });
    expect(parseParentUrl('parent:3128')).toMatchObject({ error: expect.stringMatching(/scheme|not a URL/) });
  });
});

// Regression: the credentials were decoded at each dial with decodeURIComponent, which throws on a
// `%` that starts no escape (`u:50%@parent`): validation took the URL, every flow through it got
// 502 `unreachable` ("URI malformed") and left its connection to the parent open.
describe('parseParentUrl: the parent login', () => {
  it('is decoded once, UTF-8 and percent-escapes included', () => {
    expect(parseParentUrl('http://child%2Dgw:p%40ss%3Aw0rd%25@parent:3128')).toMatchObject({ login: { username: 'child-gw', password: 'p@ss:w0rd%' } });
    expect(parseParentUrl('socks5://%C3%BCser:pw@parent')).toMatchObject({ login: { username: 'üser', password: 'pw' } });
    expect(parseParentUrl('socks5://parent')).toMatchObject({ login: null });
  });

  it('refuses a bare % and a SOCKS5 login past 255 bytes, without repeating the credentials', () => {
    const bad = parseParentUrl('http://u:50%@parent:3128');
    expect(bad).toEqual({ error: "the parent proxy's user name or password is not valid percent-encoding (write a literal % as %25)" });
    const long = parseParentUrl(`socks5://u:${'x'.repeat(256)}@parent`);
    expect(long).toEqual({ error: "a SOCKS5 parent's user name and password are at most 255 bytes each (RFC 1929)" });
    expect(parseParentUrl(`http://u:${'x'.repeat(256)}@parent`)).toMatchObject({ login: { username: 'u' } });
  });
});

describe('urlForMessage: an unparsable URL quoted in an error', () => {
  it.each([
    ['http://u:secret@bad host:3128', 'http://[credentials]@bad host:3128'],
    ['http://u:pa/ss@parent:3128', 'http://[credentials]@parent:3128'],
    ['u:secret@parent:3128', '[credentials]@parent:3128'],
    ['http://bad host:3128', 'http://bad host:3128'],
  ])('%s → %s', (text, shown) => {
    expect(urlForMessage(text)).toBe(shown);
  });
});
