import { describe, expect, it } from 'vitest';
import { missingNodeFlags, NODE_FLAGS, nodeFlagsWarning, v8RuntimeFlags } from '../../../gateway/node-flags.ts';

describe('node flags', () => {
  it('finds what is missing from the command line and NODE_OPTIONS', () => {
    expect(missingNodeFlags([], '')).toEqual([...NODE_FLAGS]);
    expect(missingNodeFlags(['--max-semi-space-size=16'], '')).toEqual([]);
    expect(missingNodeFlags([], '--max-old-space-size=4096 --max-semi-space-size=16')).toEqual([]);
    // Another value is the operator's choice, not a missing flag.
    expect(missingNodeFlags(['--max-semi-space-size=64'], '')).toEqual([]);
    expect(missingNodeFlags(['--max_semi_space_size=16'], '')).toEqual([]);
    // A different flag that merely starts alike does not count.
    expect(missingNodeFlags(['--max-semi-space-size-x=16'], '')).toEqual([...NODE_FLAGS]);
  });

  it('warns on node 24 and later only, and only when a flag is missing', () => {
    expect(nodeFlagsWarning('24.21.0', ['--max-semi-space-size=16'])).toContain('started without --max-semi-space-size=16');
    expect(nodeFlagsWarning('26.0.0', ['--max-semi-space-size=16'])).not.toBeNull();
    expect(nodeFlagsWarning('24.21.0', [])).toBeNull();
    expect(nodeFlagsWarning('22.23.3', ['--max-semi-space-size=16'])).toBeNull();
    expect(nodeFlagsWarning('20.20.2', ['--max-semi-space-size=16'])).toBeNull();
  });

  it('sets the tier-up count on node 22 and later only (node 20\'s V8 has no such flag)', () => {
    expect(v8RuntimeFlags('20.20.2', [])).toEqual(['--no-allocation-site-pretenuring']);
    expect(v8RuntimeFlags('22.23.3', [])).toEqual(['--no-allocation-site-pretenuring', '--invocation-count-for-turbofan=800']);
    expect(v8RuntimeFlags('24.21.0', [])).toEqual(['--no-allocation-site-pretenuring', '--invocation-count-for-turbofan=800']);
  });

  it('leaves a run-time flag the operator gave as given, with any value or negated', () => {
    expect(v8RuntimeFlags('24.21.0', ['--invocation-count-for-turbofan=3000'])).toEqual(['--no-allocation-site-pretenuring']);
    expect(v8RuntimeFlags('22.23.3', ['--invocation-count-for-turbofan=100'])).toEqual(['--no-allocation-site-pretenuring']);
    expect(v8RuntimeFlags('24.21.0', ['--allocation-site-pretenuring'])).toEqual(['--invocation-count-for-turbofan=800']);
    expect(v8RuntimeFlags('20.20.2', ['--no-allocation-site-pretenuring'])).toEqual([]);
  });
});
