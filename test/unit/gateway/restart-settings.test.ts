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

  it('compares paths as the files they name, and against what is running', () => {
    const running = defaultConfig();
    running.flowLog.path = '/var/log/egressgate/flows.jsonl';
    const same = defaultConfig();
    same.flowLog.path = '/var/log/egressgate/./x/../flows.jsonl';
    expect(restartOnlyChanges(running, same, running)).toEqual([]);
    const relative = defaultConfig();
    relative.flowLog.path = `${'../'.repeat(process.cwd().split('/').length)}var/log/egressgate/flows.jsonl`;
    expect(restartOnlyChanges(running, relative, running)).toEqual([]);
    const moved = defaultConfig();
    moved.flowLog.path = '/var/log/egressgate/moved.jsonl';
    expect(restartOnlyChanges(running, moved, running)).toEqual(['flowLog.path']);
    // Back to the running path after a move: nothing waits for a restart.
    expect(restartOnlyChanges(moved, running, running)).toEqual([]);
    const stdout = defaultConfig();
    expect(restartOnlyChanges(running, stdout, running)).toEqual(['flowLog.path']);
  });

  it("the detectors' table sizes wait for a restart: their state is made at start", () => {
    const running = defaultConfig();
    const smaller = defaultConfig();
    smaller.detection.maxTrackedIdentities = 16;
    smaller.detection.maxTrackedDestinations = 16;
    smaller.detection.quarantineSec = 5;
    expect(restartOnlyChanges(running, smaller, running)).toEqual(['detection.maxTrackedIdentities', 'detection.maxTrackedDestinations']);
    expect(restartOnlyChanges(smaller, running, running)).toEqual([]);
  });

  it('tls waits for a restart only when turned on or off: its files follow every reload', () => {
    const off = defaultConfig();
    const on = defaultConfig();
    on.tls = { cert: '/etc/egressgate/cert.pem', key: '/etc/egressgate/key.pem' };
    const renamed = defaultConfig();
    renamed.tls = { cert: '/etc/egressgate/new/cert.pem', key: '/etc/egressgate/new/key.pem', ca: '/etc/egressgate/ca.pem', requestClientCert: true };
    expect(restartOnlyChanges(on, renamed, on)).toEqual([]);
    expect(restartOnlyChanges(on, off, on)).toEqual(['tls']);
    expect(restartOnlyChanges(off, on, off)).toEqual(['tls']);
    // Back on after turning it off: the listener made at start is still there.
    expect(restartOnlyChanges(off, renamed, on)).toEqual([]);
  });
});
