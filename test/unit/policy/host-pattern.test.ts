import { describe, expect, it } from 'vitest';
import { compileHostSet, isIpLiteralLike, normalizeHost, parseHostPattern } from '../../../policy/host-pattern.ts';

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

describe('parseHostPattern', () => {
  it('accepts exact, wildcard and any', () => {
    expect(parseHostPattern('Git.Example.org.')).toEqual({ kind: 'exact', host: 'git.example.org' });
    expect(parseHostPattern('*.Bücher.de')).toEqual({ kind: 'wildcard', suffix: 'xn--bcher-kva.de' });
    expect(parseHostPattern('*')).toEqual({ kind: 'any' });
  });
  it.each(['*example.com', 'a.*.com', '*.*.com', '**.com', 'foo*', '*.', '*.10.0.0.1', 'a..b', 'fe80::1%eth0', '[fe80::1%25eth0]'])('%s is an error', (p) => {
    expect('error' in parseHostPattern(p)).toBe(true);
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
