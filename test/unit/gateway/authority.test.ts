import { domainToASCII } from 'node:url';
import { describe, expect, it } from 'vitest';
import { formatAuthority, normaliseHost, parseAuthority, parsePort } from '../../../gateway/protocol/authority.ts';

describe('parseAuthority', () => {
  const ok: Array<[string, number | null, string, number, boolean]> = [
    ['example.com:443', null, 'example.com', 443, false],
    ['Example.COM:443', null, 'example.com', 443, false],
    ['example.com.:80', null, 'example.com', 80, false],
    ['bücher.de:443', null, 'xn--bcher-kva.de', 443, false],
    ['xn--bcher-kva.de:443', null, 'xn--bcher-kva.de', 443, false],
    ['my_host.internal:22', null, 'my_host.internal', 22, false],
    ['localhost:8080', null, 'localhost', 8080, false],
    ['127.0.0.1:1', null, '127.0.0.1', 1, true],
    ['0x7f.1:80', null, '127.0.0.1', 80, true],
    ['2130706433:80', null, '127.0.0.1', 80, true],
    ['0177.0.0.1:80', null, '127.0.0.1', 80, true],
    ['[::1]:443', null, '::1', 443, true],
    ['[0:0:0:0:0:0:0:1]:443', null, '::1', 443, true],
    ['[::FFFF:127.0.0.1]:443', null, '::ffff:127.0.0.1', 443, true],
    ['[::ffff:7f00:1]:443', null, '::ffff:127.0.0.1', 443, true],
    ['[0:0:0:0:0:ffff:7f00:1]:443', null, '::ffff:127.0.0.1', 443, true],
    ['[::ffff:1:7f00:1]:443', null, '::ffff:1:7f00:1', 443, true],
    ['[2001:DB8::1]:65535', null, '2001:db8::1', 65535, true],
    ['example.com', 80, 'example.com', 80, false],
    ['[::1]', 80, '::1', 80, true],
    // An empty port is the scheme's default (absolute-URI); CONNECT still needs one (below).
    ['example.com:', 80, 'example.com', 80, false],
    ['[::1]:', 80, '::1', 80, true],
  ];
  it.each(ok)('%s (default %s) -> %s:%s', (text, def, host, port, isIp) => {
    expect(parseAuthority(text, def)).toEqual({ host, port, isIp });
  });

  const bad: Array<[string, number | null]> = [
    ['example.com', null], // CONNECT needs a port
    ['example.com:', null],
    ['[::1]:', null],
    [':', 80],
    ['example.com:0', null],
    ['example.com:65536', null],
    ['example.com:+80', null],
    ['example.com:0x50', null],
    ['example.com:80 ', null],
    [':443', null],
    ['', 80],
    ['::1:443', null], // unbracketed IPv6
    ['[::1', null],
    ['[::1]443', null],
    ['[example.com]:443', null],
    ['[fe80::1%eth0]:443', null],
    ['user@example.com:443', null],
    ['exa%41mple.com:443', null],
    ['example.com/x:443', null],
    ['a b.com:443', null],
    ['*.example.com:443', null],
    ['a..b:443', null],
    ['.a:443', null],
    ['-a.com:443', null],
    ['256.1.1.1:443', null],
    ['1.2.3.4.5:443', null],
    ['example.123:443', null],
    [`${'a'.repeat(64)}.com:443`, null],
    [`${'abcdefghi.'.repeat(26)}com:443`, null],
    ['ex\u0000ample.com:443', null],
  ];
  it.each(bad)('refuses %j (default %s)', (text, def) => {
    expect(parseAuthority(text, def)).toBeNull();
  });
});

describe('normaliseHost / parsePort / formatAuthority', () => {
  it('normalises bracketed and bare IPv6 alike', () => {
    expect(normaliseHost('[::1]')).toEqual({ host: '::1', isIp: true });
    expect(normaliseHost('::1')).toEqual({ host: '::1', isIp: true });
  });
  it('parses ports strictly', () => {
    expect(parsePort('443')).toBe(443);
    expect(parsePort('00443')).toBe(443);
    expect(parsePort('100000')).toBeNull();
    expect(parsePort('-1')).toBeNull();
  });
  it('brackets IPv6 only', () => {
    expect(formatAuthority('::1', 443)).toBe('[::1]:443');
    expect(formatAuthority('example.com', 80)).toBe('example.com:80');
  });
  it('takes its fast paths only where domainToASCII would hand the name back unchanged', () => {
    // Names a fast path accepts must come out exactly as the full normaliser (domainToASCII) would
    // have them; anything it would change or refuse must not be accepted as is.
    const parts = ['a', 'z9', 'xn--bcher-kva', 'xn--zz', '0x7f', '1', '08', 'ab--c', '-a', 'a-', 'my_host', 'A', 'ü', '', 'com'];
    let checked = 0;
    for (const a of parts) {
      for (const b of parts) {
        for (const c of ['com', '1', '0x1', 'xn--p1ai', 'Com', 'c0m', '9z']) {
          const name = [a, b, c].filter((p) => p !== '').join('.');
          const got = normaliseHost(name);
          const ascii = domainToASCII(name);
          if (got && !got.isIp && got.host === name) {
            expect(ascii, name).toBe(name);
            checked++;
          }
          if (ascii === '' || ascii !== ascii.toLowerCase()) expect(got?.host === name && !got.isIp, name).toBe(false);
        }
      }
    }
    expect(checked).toBeGreaterThan(100);
    expect(normaliseHost('0x7f.0.0.1')).toEqual({ host: '127.0.0.1', isIp: true });
    expect(normaliseHost('1.2.3.04')).toEqual({ host: '1.2.3.4', isIp: true });
    // Invalid punycode is refused on every node (node 20 and 22 in domainToASCII; node 24 passes it
    // through there, and hostToAscii refuses it); valid punycode and IDNs are kept.
    for (const bad of ['xn--zz.com', 'a.xn--a.com', 'XN--ZZ.example', 'xn--.com']) expect(normaliseHost(bad), bad).toBeNull();
    expect(normaliseHost('xn--bcher-kva.example')).toEqual({ host: 'xn--bcher-kva.example', isIp: false });
    expect(normaliseHost('bücher.example')).toEqual({ host: 'xn--bcher-kva.example', isIp: false });
  });
});
