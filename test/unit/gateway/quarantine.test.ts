/** Quarantine lookups by identity key (gateway/detection/quarantine.ts) and alert grouping (alert-groups.ts). */
import { describe, expect, it } from 'vitest';
import { AlertGroups } from '../../../gateway/detection/alert-groups.ts';
import { identityKeyParts, Quarantine } from '../../../gateway/detection/quarantine.ts';

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
    q.put(stored, 2000, { atMs: 1000, detector: 'an0080.bulk-upload', alertId: null });
    expect(q.quarantinedUntil(asked, 1000)).toBe(isQuarantined ? 2000 : 0);
  });

  it('an expired entry is not a quarantine and goes', () => {
    const q = new Quarantine();
    q.put('ws|-|-', 2000, { atMs: 1000, detector: 'an0080.bulk-upload', alertId: null });
    expect(q.quarantinedUntil('ws|alice|uploader', 2000)).toBe(0);
    expect(q.entries.size).toBe(0);
  });
});

describe('Quarantine entries, release (DELETE /v1/quarantines/{key})', () => {
  it('a cause while one runs extends it and keeps its start; one after it has run starts anew', () => {
    const q = new Quarantine();
    q.put('ws|-|-', 2000, { atMs: 1000, detector: 'an0081.scan', alertId: 'al-1' });
    q.put('ws|-|-', 2500, { atMs: 1500, detector: 'an0080.bulk-upload', alertId: 'al-2' });
    expect(q.entries.get('ws|-|-')).toEqual({ sinceMs: 1000, untilMs: 2500, detector: 'an0080.bulk-upload', alertId: 'al-2' });
    q.put('ws|-|-', 4000, { atMs: 3000, detector: 'an0081.scan', alertId: null });
    expect(q.entries.get('ws|-|-')).toEqual({ sinceMs: 3000, untilMs: 4000, detector: 'an0081.scan', alertId: null });
  });

  it('release ends the key\'s own entry only; an expired one is no release', () => {
    const q = new Quarantine();
    const cause = { atMs: 1000, detector: 'an0081.scan', alertId: null };
    q.put('ws|alice|uploader', 2000, cause);
    q.put('ws|-|-', 2000, cause);
    expect(q.release('ws|alice|uploader', 1500)?.untilMs).toBe(2000);
    expect(q.release('ws|alice|uploader', 1500)).toBeNull();
    // The host's entry still covers alice's uploader: it is released by its own key.
    expect(q.quarantinedUntil('ws|alice|uploader', 1500)).toBe(2000);
    expect(q.release('ws|-|-', 2000)).toBeNull();
    expect(q.entries.size).toBe(0);
  });

  it('live lists unexpired entries and prunes the rest', () => {
    const q = new Quarantine();
    q.put('a|-|-', 2000, { atMs: 1000, detector: 'd', alertId: null });
    q.put('b|-|-', 3000, { atMs: 1000, detector: 'd', alertId: null });
    expect(q.live(2000).map(([k]) => k)).toEqual(['b|-|-']);
    expect([...q.entries.keys()]).toEqual(['b|-|-']);
  });

  // Regression: an expired entry went only when its key was looked up again or listed, so
  // identities quarantined once and never seen again piled up (enforce and monitor mode alike).
  it('put drops expired entries as they pile up: at most twice the live ones (1,024 at least)', () => {
    const q = new Quarantine();
    for (let i = 0; i < 10_000; i++) {
      q.put(`10.0.${i >> 8}.${i & 0xff}|-|-`, i * 10 + 50, { atMs: i * 10, detector: 'd', alertId: null });
      expect(q.entries.size).toBeLessThanOrEqual(1024);
    }
    // The 5 live at the last put (each lasts 50 ms, one per 10 ms) are all still there.
    expect(q.live(9999 * 10).length).toBe(5);
    const many = new Quarantine();
    for (let i = 0; i < 3000; i++) many.put(`k${i}|-|-`, 1_000_000, { atMs: i, detector: 'd', alertId: null });
    expect(many.entries.size).toBe(3000);
  });

  it.each([
    ['10.2.3.17|alice|uploader', { host: '10.2.3.17', user: 'alice', process: 'uploader' }],
    ['10.2.3.17|-|-', { host: '10.2.3.17', user: null, process: null }],
    ['2001:db8::7|-|curl', { host: '2001:db8::7', user: null, process: 'curl' }],
  ])('identityKeyParts(%s)', (key, parts) => {
    expect(identityKeyParts(key)).toEqual(parts);
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

  it('keeps the last alert id; forgetIdentity drops that identity\'s groups only', () => {
    const g = new AlertGroups();
    g.shouldRaise('an0081.scan|ws|-|-', 'block/high', 0, 1000, 'al-1');
    g.shouldRaise('an0080.split-upload|ws|-|-|example.net', 'block/high', 0, 1000, 'al-2');
    g.shouldRaise('an0081.scan|ws|-|-x', 'block/high', 0, 1000, 'al-3');
    g.shouldRaise('an0081.scan|ws2|-|-', 'block/high', 0, 1000, 'al-4');
    expect(g.shouldRaise('an0081.scan|ws|-|-', 'block/high', 10, 1000, 'al-5')).toBe(false);
    expect(g.lastAlertId('an0081.scan|ws|-|-')).toBe('al-1');
    g.forgetIdentity('ws|-|-');
    expect(g.size).toBe(2);
    expect(g.lastAlertId('an0081.scan|ws|-|-x')).toBe('al-3');
    expect(g.shouldRaise('an0081.scan|ws|-|-', 'block/high', 20, 1000, 'al-6')).toBe(true);
  });
});
