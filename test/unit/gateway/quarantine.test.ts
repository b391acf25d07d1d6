/** Quarantine lookups by identity key (gateway/detection/quarantine.ts) and alert grouping (alert-groups.ts). */
import { describe, expect, it } from 'vitest';
import { AlertGroups } from '../../../gateway/detection/alert-groups.ts';
import { Quarantine } from '../../../gateway/detection/quarantine.ts';

describe('Quarantine.quarantinedUntil', () => {
  const cases: Array<[stored: string, asked: string, isQuarantined: boolean]> = [
    ['ws|alice|uploader', 'ws|alice|uploader', true],
    // A named process quarantines that process only.
    ['ws|alice|uploader', 'ws|alice|editor', false],
    ['ws|alice|uploader', 'ws|-|-', false],
    ['ws|alice|uploader', 'ws|alice|-', false],
    // What was known at the kill covers what turns out more specific.
    ['ws|-|-', 'ws|alice|uploader', true],
    ['ws|-|-', 'ws|-|uploader', true],
    ['ws|alice|-', 'ws|alice|uploader', true],
    ['ws|alice|-', 'ws|bob|uploader', false],
    ['ws|-|uploader', 'ws|alice|uploader', true],
    ['ws|-|uploader', 'ws|alice|editor', false],
    // Never another host.
    ['ws|-|-', 'ws2|alice|uploader', false],
    ['::ffff:10.0.0.1|-|-', '::ffff:10.0.0.1|alice|curl', true],
  ];
  it.each(cases)('stored %s, asked %s → %s', (stored, asked, isQuarantined) => {
    const q = new Quarantine();
    q.put(stored, 2000);
    expect(q.quarantinedUntil(asked, 1000)).toBe(isQuarantined ? 2000 : 0);
  });

  it('an expired entry is not a quarantine and goes', () => {
    const q = new Quarantine();
    q.put('ws|-|-', 2000);
    expect(q.quarantinedUntil('ws|alice|uploader', 2000)).toBe(0);
    expect(q.entries.size).toBe(0);
  });
});

describe('AlertGroups.shouldRaise', () => {
  it('a repeat is quiet within the window, raised past it or when its signature changes', () => {
    const g = new AlertGroups();
    expect(g.shouldRaise('k', 'block/medium', 0, 1000)).toBe(true);
    expect(g.shouldRaise('k', 'block/medium', 999, 1000)).toBe(false);
    expect(g.shouldRaise('k', 'block/high', 999, 1000)).toBe(true);
    expect(g.shouldRaise('k', 'block/high', 1998, 1000)).toBe(false);
    expect(g.shouldRaise('k', 'block/high', 1999, 1000)).toBe(true);
  });

  it('past its bound the oldest group goes first', () => {
    const g = new AlertGroups(2);
    g.shouldRaise('a', 's', 0, 1000);
    g.shouldRaise('b', 's', 1, 1000);
    g.shouldRaise('a', 's', 1000, 1000); // a is now the newest
    g.shouldRaise('c', 's', 1001, 1000); // b goes
    expect(g.size).toBe(2);
    expect(g.shouldRaise('a', 's', 1002, 1000)).toBe(false);
    expect(g.shouldRaise('b', 's', 1002, 1000)).toBe(true);
  });
});
