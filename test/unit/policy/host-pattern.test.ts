import { describe, expect, it } from 'vitest';
import { compileHostSet, isIpLiteralLike, nameTextProblem, normalizeHost, parseHostPattern } from '../../../policy/host-pattern.ts';
import { parseHostPort } from '../../../policy/config-schema.ts';

describe('normalizeHost', () => {
  it.each([
    ['Example.COM', 'example.com'],
    ['example.com.', 'example.com'],
    ['bücher.de', 'xn--bcher-kva.de'],
    ['BÜCHER.de.', 'xn--bcher-kva.de'],
    ['xn--bcher-kva.de', 'xn--bcher-kva.de'],
    ['10.0.0.1', '10.0.0.1'],
    ['[2001:DB8::1]', '2001:db8::1'],
    ['2001:db8:0:0::1', '2001:db8::1'],
    ['_srv.example.com', '_srv.example.com'],
  ])('%s -> %s', (input, want) => {
    expect(normalizeHost(input)).toBe(want);
  });
  it.each(['', '.', 'a..b', '-a.com', 'a-.com', 'exa mple.com', 'a.123', `${'a'.repeat(64)}.com`, 'xn--zz.com', 'a.xn--a.de'])('%j is not a host', (input) => {
    expect(normalizeHost(input)).toBeNull();
  });
});

// domainToASCII reads its input as a URL host: it ended the name at "/", "?", "#" or "\\" and dropped
// tabs and line breaks inside it, so each of these came back as another, valid-looking name.
describe('normalizeHost: a text with a character no host name has is refused whole, never cut', () => {
  it.each([
    ['api.example.com/v1', 'api.example.com'],
    ['Nowhere/Zone-1.example', 'nowhere'],
    ['a.example?x', 'a.example'],
    ['a.example#f', 'a.example'],
    ['a\\b.example', 'a'],
    ['a\tb.example', 'ab.example'],
    ['a\nb.example', 'ab.example'],
    ['ex%41mple.com', 'example.com'],
  ])('%j (was %j)', (input) => {
    expect(normalizeHost(input)).toBeNull();
  });
  it.each(['user@a.example', 'a.example:443', 'a.example:http', 'a b.example', 'https://api.example.com', 'a.example;x', 'a,b.example', 'a.example\u3000x'])(
    '%j stays refused',
    (input) => {
      expect(normalizeHost(input)).toBeNull();
    },
  );
  // What IDNA maps (full-width forms, the ideographic full stop, ignorable characters) is what the
  // name means, for a destination (gateway/protocol/authority.ts) as for an entry; so is white space
  // around a name, and brackets around an IPv6 address.
  it.each([
    [' a.example ', 'a.example'],
    ['ＡＰＩ.example', 'api.example'],
    ['a.example\u3002com', 'a.example.com'],
    ['a.exa\u00admple', 'a.example'],
    ['[::1]', '::1'],
    ['fe80::1%eth0', 'fe80::1'],
  ])('%j is %j', (input, want) => {
    expect(normalizeHost(input)).toBe(want);
  });
});

describe('nameTextProblem', () => {
  it.each([
    ['https://api.example.com', /^a URL, not a host name/],
    ['api.example.com/v1', /^"\/" starts a path/],
    ['a.example?x', /^"\?" starts a URL's query or fragment/],
    ['a.example#f', /^"#" starts a URL's query or fragment/],
    ['user@a.example', /^"@" ends a URL's user name/],
    ['a.example:443', /^a port is no part of a host name/],
    ['[::1]:443', /^a port is no part of a host name/],
    ['a.example:http', /^":" is no part of a host name/],
    ['a\tb.example', /^white space inside a host name$/],
    ['a\\b.example', /^"\\" is no character of a host name$/],
    ['10.0.0.0/8', /^a CIDR, not a host name/],
    ['ex%41mple.com', /^"%" is no part of a host name/],
  ])('%j: %s', (input, want) => {
    expect(nameTextProblem(input)).toMatch(want);
  });
  it.each(['a.example', 'a..b', '-a.example'])('%j: none (no character says why)', (input) => {
    expect(nameTextProblem(input)).toBeNull();
  });
});

describe('parseHostPort (listen.*)', () => {
  it.each(['a.example/v1:80', 'a?b:80', 'a#b:80', 'a\\b:80', 'a\tb:80', 'a.example :80'])('%j is refused (the name was cut, or bound with its space)', (v) => {
    expect(parseHostPort(v)).toMatchObject({ error: expect.stringMatching(/is not an IP address or host name/) });
  });
  it.each([
    ['localhost:80', 'localhost'],
    ['[::1]:3128', '::1'],
    ['127.0.0.1:0', '127.0.0.1'],
  ])('%j is taken', (v, host) => {
    expect(parseHostPort(v)).toMatchObject({ host });
  });
});

describe('parseHostPattern', () => {
  it('accepts exact, wildcard and any', () => {
    expect(parseHostPattern('Git.Example.org.')).toEqual({ kind: 'exact', host: 'git.example.org' });
    expect(parseHostPattern('*.Bücher.de')).toEqual({ kind: 'wildcard', suffix: 'xn--bcher-kva.de' });
    expect(parseHostPattern('*')).toEqual({ kind: 'any' });
  });
  it.each(['*example.com', 'a.*.com', '*.*.com', '**.com', 'foo*', '*.', '*.10.0.0.1', 'a..b', 'fe80::1%eth0', '[fe80::1%25eth0]'])('%s is an error', (p) => {
    expect('error' in parseHostPattern(p)).toBe(true);
  });
  it.each([
    ['api.example.com/v1', 'bad host pattern "api.example.com/v1": "/" starts a path, which is no part of a host name: write the host alone'],
    ['*.a.example/x', 'bad host pattern "*.a.example/x": "a.example/x" is not a host name: "/" starts a path, which is no part of a host name: write the host alone'],
    ['https://api.example.com', 'bad host pattern "https://api.example.com": a URL, not a host name: write the host alone (no scheme, port or path)'],
    ['fe80::1%eth0', 'bad host pattern "fe80::1%eth0": zone ids are not allowed (no destination carries one)'],
  ])('%j: %s', (p, error) => {
    expect(parseHostPattern(p)).toEqual({ error });
  });
});

describe('HostPatternMap (label-aware)', () => {
  const set = compileHostSet(['*.example.com', 'exact.example.org', '*.xn--bcher-kva.de']);
  it.each([
    ['a.example.com', true],
    ['a.b.example.com', true],
    ['example.com', false],
    ['badexample.com', false],
    ['example.com.evil.net', false],
    ['exact.example.org', true],
    ['sub.exact.example.org', false],
    ['example.org', false],
    ['shop.xn--bcher-kva.de', true],
  ])('%s -> %s', (host, want) => {
    expect(set.matches(host)).toBe(want);
  });
  it('"*" matches anything', () => {
    expect(compileHostSet(['*']).matches('anything.at.all')).toBe(true);
  });
  it('does not walk wildcard suffixes of IP literals', () => {
    expect(isIpLiteralLike('10.0.0.1')).toBe(true);
    expect(isIpLiteralLike('::1')).toBe(true);
    expect(isIpLiteralLike('db.corp1')).toBe(false);
    expect(compileHostSet(['*.corp1']).matches('db.corp1')).toBe(true);
  });
});
