import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../../../policy/config.ts';
import { restartOnlyChanges } from '../../../gateway/restart-settings.ts';

describe('restartOnlyChanges', () => {
  it('names the settings read at start only that differ, and nothing for reloadable ones', () => {
    const a = defaultConfig();
    const b = defaultConfig();
    b.flowLog.interimSec = 5;
    b.mode = 'enforce';
    b.limits.drainGraceMs = 1;
    expect(restartOnlyChanges(a, b)).toEqual([]);
    b.flowLog.path = '/var/log/egressgate/flows.jsonl';
    b.listen.socks = '127.0.0.1:1081';
    b.state.path = '/var/lib/egressgate/state.json';
    expect(restartOnlyChanges(a, b)).toEqual(['listen', 'flowLog.path', 'state.path']);
  });
});
