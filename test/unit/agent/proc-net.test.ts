import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeProcAddress, encodeProcEndpoint, formatIpv6, parseProcNet, parseProcNetMatching, readProcNet } from '../../../agent/proc-net.ts';

const FIX = new URL('../../fixtures/proc/', import.meta.url).pathname;

describe('decodeProcAddress', () => {
  it.each([
    ['0100007F', true, '127.0.0.1'],
    ['7F000001', false, '127.0.0.1'],
    ['1102000A', true, '10.0.2.17'],
    ['00000000', true, '0.0.0.0'],
    ['00000000000000000000000001000000', true, '::1'],
    ['00000000000000000000000000000001', false, '::1'],
    ['0000000000000000FFFF00000100007F', true, '127.0.0.1'],
    ['B80D0120000000000000000001000000', true, '2001:db8::1'],
    ['000080FE00000000FF00FC00010000FE', true, 'fe80::fc:ff:fe00:1'],
    ['00000000000000000000000000000000', true, '::'],
  ])('%s (LE=%s) → %s', (hex, le, ip) => {
    expect(decodeProcAddress(hex, le)).toBe(ip);
  });

  it('rejects malformed input', () => {
    expect(decodeProcAddress('0100007', true)).toBeNull();
    expect(decodeProcAddress('ZZ00007F', true)).toBeNull();
    expect(decodeProcAddress('', true)).toBeNull();
  });

  it('formats IPv6 per RFC 5952 (longest zero run, not a single zero group)', () => {
    expect(formatIpv6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1])).toBe('2001:db8:0:1::1');
    expect(formatIpv6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])).toBe('2001:db8:0:1:1:1:1:1');
  });
});

describe('parseProcNet', () => {
  it('parses tcp: listener, established, TIME_WAIT; skips malformed lines', async () => {
    const rows = parseProcNet(await readFile(`${FIX}tcp`, 'latin1'), 'tcp', true);
    expect(rows).toHaveLength(4);
    expect(rows[1]).toEqual({
      proto: 'tcp',
      localIp: '127.0.0.1',
      localPort: 50000,
      remoteIp: '127.0.0.1',
      remotePort: 3128,
      state: 1,
      uid: 1000,
      inode: 4242,
    });
    expect(rows[2]).toMatchObject({ localIp: '10.0.2.17', localPort: 54321, remoteIp: '10.0.0.5', remotePort: 1080, uid: 1001 });
    expect(rows[0]).toMatchObject({ state: 10, localPort: 3128, inode: 196 });
    expect(rows[3]).toMatchObject({ state: 6, inode: 0 });
  });

  it('parses tcp6 with IPv4-mapped addresses unwrapped', async () => {
    const rows = parseProcNet(await readFile(`${FIX}tcp6`, 'latin1'), 'tcp', true);
    expect(rows.map((r) => [r.localIp, r.localPort, r.remoteIp, r.remotePort, r.inode])).toEqual([
      ['::1', 50001, '::1', 3128, 5151],
      ['127.0.0.1', 3128, '127.0.0.1', 50002, 5152],
      ['2001:db8::1', 443, '::', 0, 5153],
    ]);
  });

  it('parses udp: connected (st 01) and unconnected (st 07)', async () => {
    const rows = parseProcNet(await readFile(`${FIX}udp`, 'latin1'), 'udp', true);
    expect(rows).toEqual([
      { proto: 'udp', localIp: '127.0.0.1', localPort: 57584, remoteIp: '127.0.0.1', remotePort: 1080, state: 1, uid: 1000, inode: 6161 },
      { proto: 'udp', localIp: '0.0.0.0', localPort: 68, remoteIp: '0.0.0.0', remotePort: 0, state: 7, uid: 0, inode: 6162 },
    ]);
  });

  it('readProcNet reads a proc root and tolerates a missing table', async () => {
    const root = await mkdtemp(join(tmpdir(), 'egw-proc-'));
    try {
      await mkdir(join(root, 'net'));
      await copyFile(`${FIX}tcp`, join(root, 'net', 'tcp'));
      // No udp6 file: as on a host with IPv6 disabled.
      const rows = await readProcNet(['tcp', 'udp6'], root);
      expect(rows).toHaveLength(4);
      expect(rows.every((r) => r.proto === 'tcp')).toBe(true);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('reads the live tables of this machine', async () => {
    const rows = await readProcNet();
    expect(Array.isArray(rows)).toBe(true);
  });
});

describe('encodeProcEndpoint / parseProcNetMatching (the fast path)', () => {
  it.each([
    ['127.0.0.1', 3128, false, true, '0100007F:0C38'],
    ['127.0.0.1', 3128, true, true, '0000000000000000FFFF00000100007F:0C38'],
    ['127.0.0.1', 3128, false, false, '7F000001:0C38'],
    ['::1', 50001, true, true, '00000000000000000000000001000000:C351'],
    ['2001:db8::1', 443, true, true, 'B80D0120000000000000000001000000:01BB'],
    ['fe80::fc:ff:fe00:1', null, true, true, '000080FE00000000FF00FC00010000FE:'],
  ] as const)('%s:%s (v6 table %s, LE %s) → %s', (ip, port, v6, le, hex) => {
    expect(encodeProcEndpoint(ip, port, v6, le)).toBe(hex);
  });

  it('round-trips with the decoder and refuses IPv6 in a v4 table', () => {
    for (const ip of ['10.2.3.17', '::1', '2001:db8:0:1::1', 'fe80::1']) {
      const v6 = ip.includes(':');
      const hex = encodeProcEndpoint(ip, 1, v6, true)!.split(':')[0]!;
      expect(decodeProcAddress(hex, true)).toBe(ip);
    }
    expect(encodeProcEndpoint('::1', 1, false, true)).toBeNull();
    expect(encodeProcEndpoint('not-an-ip', 1, false, true)).toBeNull();
  });

  it('parses only the matching lines, the same entries the full parse gives', async () => {
    const text = await readFile(`${FIX}tcp`, 'latin1');
    const needle = `${encodeProcEndpoint('127.0.0.1', 50000, false, true)} ${encodeProcEndpoint('127.0.0.1', 3128, false, true)}`;
    const hits = parseProcNetMatching(text, 'tcp', [needle], true);
    expect(hits).toEqual([parseProcNet(text, 'tcp', true)[1]]);
    // A remote-endpoint needle hits every line that mentions it (listener excluded: its remote is 0).
    const remote = parseProcNetMatching(text, 'tcp', [` ${encodeProcEndpoint('127.0.0.1', 3128, false, true)} `], true);
    expect(remote.map((e) => e.inode)).toEqual([4242, 0]);
    expect(parseProcNetMatching(text, 'tcp', ['FFFFFFFF:FFFF'], true)).toEqual([]);
  });
});
