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
    ['http://parent.example.net:8080/', 'parent.example.net', 8080],
    ['socks5h://Parent.Example.net', 'Parent.Example.net', 1080],
    ['http://bücher.example:3128', 'xn--bcher-kva.example', 3128],
    ['http://u:a%5Cb@parent.example.net:80', 'parent.example.net', 80],
    ['socks5://u:a b@parent.example.net:80', 'parent.example.net', 80],
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
// Regression: the WHATWG parser reads what an operator did not mean, and the URL was taken: the path
// dropped, `\\` read as `/` (host `parent`), a tab dropped, `http:/parent:8080` dialled at
// parent:3128 (the port was looked for after a "//" the text does not have), a socks5 host left
// percent-encoded (`p%C3%A4.example`, which no resolver knows), `2130706433` a name or 127.0.0.1.
describe('parseParentUrl: a URL whose text is not what the parser reads is refused', () => {
  it.each([
    ['http://parent.example.net:8080/x?y=:9#:7', /^a parent proxy URL is scheme:\/\/host:port: a path, query or fragment/],
    ['http://parent.example.net:8080/v1', /a path, query or fragment after it would not be used/],
    ['socks5://parent.example.net:1080?x', /a path, query or fragment after it would not be used/],
    ['http://parent.example.net:8080#x', /a path, query or fragment after it would not be used/],
    ['http:/parent.example.net:8080', /^write the URL as http:\/\/host:port/],
    ['http:parent.example.net:8080', /^write the URL as http:\/\/host:port/],
    ['http://parent\\evil.example:8080', /^"\\" inside an http URL, which the URL parser reads as "\/"/],
    ['http://u:p\\w@parent.example:8080', /^"http:\/\/\[credentials\]@parent.example:8080" is not a URL$/],
    ['http://par\tent.example:3128', /^a tab or line break inside the URL/],
    ['socks5h://pä.example:1080', /^the URL's host "pä.example" is read as "p%C3%A4.example" in a socks5h URL: write it as xn--p-0fa.example$/],
    ['socks5://a,b:1080', /^"a,b" is not a host name or IP address: "," is no character/],
    ['socks5://a%41.example:1080', /^"a%41.example" is not a host name or IP address: "%"/],
    ['http://a%41.example:3128', /^"a%41.example" is not a host name or IP address: "%"/],
    ['socks5://2130706433:1080', /^"2130706433" is not a host name or IP address$/],
    ['http://2130706433:3128', /^"2130706433" is not a host name or IP address$/],
    ['http://127.1:3128', /^"127.1" is not a host name or IP address$/],
  ])('%j: %s', (url, error) => {
    expect(parseParentUrl(url)).toMatchObject({ error: expect.stringMatching(error) });
  });
  it('never repeats the credentials', () => {
    const r = parseParentUrl('http://user:s3cret@parent.example:3128/x');
    expect('error' in r && !r.error.includes('s3cret')).toBe(true);
    const r2 = parseParentUrl('socks5://user:s3cret@a,b:1080');
    expect('error' in r2 && !r2.error.includes('s3cret')).toBe(true);
  });
});

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
