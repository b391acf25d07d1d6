/** The parse memos of config text (policy/text-memo.ts): bounded in entries and in text length. */
import { describe, expect, it } from 'vitest';
import { TextMemo } from '../../../policy/text-memo.ts';

describe('TextMemo', () => {
  it('parses a text once, keeps no text over its length bound and empties itself when full', () => {
    let parses = 0;
    const parse = (t: string): number => {
      parses++;
      return t.length;
    };
    const memo = new TextMemo<number>('unit', 100, 8);
    expect(memo.get('short', parse)).toBe(5);
    expect(memo.get('short', parse)).toBe(5);
    expect(parses).toBe(1);
    // Too long to keep: parsed at each call, never held.
    expect(memo.get('much too long', parse)).toBe(13);
    expect(memo.get('much too long', parse)).toBe(13);
    expect(parses).toBe(3);
    expect(memo.stats()).toEqual({ name: 'unit', entries: 1, longestText: 5 });
    for (let i = 0; i < 1000; i++) {
      memo.get(`t${i}`, parse);
      expect(memo.stats().entries).toBeLessThanOrEqual(100);
    }
  });
});
