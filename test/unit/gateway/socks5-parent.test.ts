import { describe, expect, it } from 'vitest';
import { encodeParentConnect, encodeParentGreeting, encodeParentLogin, parentReplyCode, parentReplyLength } from '../../../gateway/upstream/socks5-parent.ts';

describe('socks5-parent encoders', () => {
  it('offers username/password only with a login', () => {
    expect([...encodeParentGreeting(null)]).toEqual([5, 1, 0]);
    expect([...encodeParentGreeting({ username: 'u', password: 'p' })]).toEqual([5, 2, 0, 2]);
  });
  it('writes an RFC 1929 login and refuses one longer than 255 bytes', () => {
    expect([...encodeParentLogin({ username: 'ab', password: 'c' })]).toEqual([1, 2, 0x61, 0x62, 1, 0x63]);
    expect(() => encodeParentLogin({ username: 'x'.repeat(256), password: '' })).toThrow(/255/);
  });
  it('asks for IP literals only', () => {
    expect([...encodeParentConnect('10.0.0.1', 443)]).toEqual([5, 1, 0, 1, 10, 0, 0, 1, 1, 0xbb]);
    expect(encodeParentConnect('2001:db8::1', 80).subarray(0, 4)).toEqual(Buffer.from([5, 1, 0, 4]));
  });
});

describe('parentReplyLength', () => {
  it.each([
    [[5, 0, 0, 1, 1, 2, 3, 4, 0, 80], 10],
    [[5, 0, 0, 1, 1, 2, 3, 4, 0, 80, 0x62, 0x79], 10],
    [[5, 0, 0, 1, 1, 2, 3, 4, 0], 0],
    [[5, 0, 0, 3, 3, 0x61, 0x62, 0x63, 0, 80], 10],
    [[5, 0, 0, 4, ...new Array(16).fill(0), 0, 80], 22],
    [[5, 0, 0, 9, 0, 0], -1],
    [[4, 0, 0, 1, 0, 0], -1],
  ])('%j → %d', (bytes, n) => {
    expect(parentReplyLength(Buffer.from(bytes))).toBe(n);
  });
});

describe('parentReplyCode', () => {
  it.each([
    [0x01, 'EGW_UPSTREAM_PROXY'],
    [0x02, 'EGW_UPSTREAM_PROXY'],
    [0x03, 'EGW_DIAL_UNREACHABLE'],
    [0x04, 'EGW_DIAL_UNREACHABLE'],
    [0x05, 'EGW_DIAL_REFUSED'],
    [0x06, 'EGW_DIAL_TIMEOUT'],
    [0x07, 'EGW_UPSTREAM_PROXY'],
    [0x08, 'EGW_UPSTREAM_PROXY'],
    [0x42, 'EGW_UPSTREAM_PROXY'],
  ])('0x%s → %s', (rep, code) => {
    expect(parentReplyCode(rep)).toBe(code);
  });
});
