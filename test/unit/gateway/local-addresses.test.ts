/**
 * isLocalAddress (admission/self-dial.ts) lists this machine's addresses with os.networkInterfaces(), which
 * needs a netlink socket. The shipped systemd unit forbade those (RestrictAddressFamilies without
 * AF_NETLINK): the listing threw, the first request failed, and the half-built set cached after it
 * made every interface address "not local", so the gateway dialled its own listeners through them.
 * Now a listing that fails takes every address for a local one (the self-dial guard fails closed),
 * and the listing is made again after a minute.
 */
import { syncBuiltinESMExports } from 'node:module';
import os from 'node:os';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { isLocalAddress } from '../../../gateway/admission.ts';

const realList = os.networkInterfaces;
function listWith(fn: typeof os.networkInterfaces): void {
  os.networkInterfaces = fn;
  syncBuiltinESMExports();
}

afterAll(() => {
  listWith(realList);
  vi.useRealTimers();
});

describe('isLocalAddress when the interfaces cannot be listed', () => {
  it('takes every address for a local one, says so once, then lists again after a minute', async () => {
    vi.useFakeTimers({ now: Date.UTC(2026, 11, 5, 12), toFake: ['Date'] });
    const warned: string[] = [];
    const onWarning = (w: Error): void => {
      warned.push(w.message);
    };
    process.on('warning', onWarning);
    listWith(() => {
      throw new Error('socket: Address family not supported by protocol');
    });
    expect(() => isLocalAddress('192.0.2.77')).not.toThrow();
    expect(isLocalAddress('192.0.2.77')).toBe(true);
    expect(isLocalAddress('127.0.0.5')).toBe(true);
    await new Promise((r) => setImmediate(r));
    expect(warned.filter((m) => m.includes('cannot list this machine'))).toHaveLength(1);
    // Listable again (a fixed listing here): after the minute, only the machine's own addresses are local.
    listWith(() => ({ eth0: [{ address: '198.51.100.7', netmask: '255.255.255.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal: false, cidr: '198.51.100.7/24' }] }));
    expect(isLocalAddress('192.0.2.77')).toBe(true);
    vi.setSystemTime(Date.now() + 61_000);
    expect(isLocalAddress('192.0.2.77')).toBe(false);
    expect(isLocalAddress('198.51.100.7')).toBe(true);
    expect(isLocalAddress('::ffff:198.51.100.7')).toBe(true);
    process.off('warning', onWarning);
  });
});
