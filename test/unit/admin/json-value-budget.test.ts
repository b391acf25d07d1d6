import { describe, expect, it } from 'vitest';
import { exceedsJsonValues } from '../../../admin/json-value-budget.ts';

describe('exceedsJsonValues', () => {
  it('counts {, [ and , outside strings, up to the budget', () => {
    // {, [, {, ",", {  and the comma between host and reports: 6.
    const text = '{"host":"ws","reports":[{},{}]}';
    expect(exceedsJsonValues(text, 5)).toBe(true);
    expect(exceedsJsonValues(text, 6)).toBe(false);
  });
  it('does not count what is inside strings, escaped quotes and backslashes included', () => {
    expect(exceedsJsonValues('{"a":"{[,{[,\\"{[,\\\\"}', 1)).toBe(false);
    expect(exceedsJsonValues('["\\\\",1,2]', 2)).toBe(true);
    expect(exceedsJsonValues('["\\\\",1,2]', 3)).toBe(false);
  });
  it('answers false for text with an unterminated string (JSON.parse refuses it)', () => {
    expect(exceedsJsonValues('[1,"abc,{,{,{', 2)).toBe(false);
  });
  it('starts over on every call', () => {
    expect(exceedsJsonValues('[{},{},{}]', 2)).toBe(true);
    expect(exceedsJsonValues('[]', 2)).toBe(false);
    expect(exceedsJsonValues('"x"', 0)).toBe(false);
  });
});
