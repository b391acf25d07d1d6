import { describe, expect, it } from 'vitest';
import { parseParentUrl } from '../../../policy/upstream-url.ts';

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
