/**
 * Regression: a failed dial's text ended with node's own error message, whose endpoint is not
 * bracketed (`connect ECONNREFUSED ::1:39195`), where everything else the gateway writes is
 * `[::1]:39195` (policy/address.ts formatAuthority): the `CONNECT dial failed` and `origin request
 * failed` lines' `err` and the `socks5 refused` line's reason. `egressgate serve` as a process, each
 * of its three listeners' clients sent to a dead port on ::1, the lines read from its stderr.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedPort } from '../helpers/closed-port.ts';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loggedLines, spawnServe } from '../helpers/serve-process.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { readBytes, readToEnd } from './socks5-harness.ts';

const hasIpv6Loopback = await ipv6LoopbackAvailable();

async function open(port: number, host = '127.0.0.1'): Promise<Socket> {
  const c = connect({ host, port });
  c.on('error', () => undefined);
  await once(c, 'connect');
  return c;
}

describe.skipIf(!skipNotice(hasIpv6Loopback, 'dial-failure-ipv6-text', 'needs IPv6 loopback (::1)'))('a failed dial to an IPv6 address: its text brackets the endpoint', () => {
  let dir: string;
  let child: ChildProcess | null = null;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-dial-ipv6-text-'));
  });
  afterAll(async () => {
    await killIfRunning(child);
    await rm(dir, { recursive: true, force: true });
  });

  it('CONNECT, absolute-URI and SOCKS5 to [::1]:dead: ECONNREFUSED [::1]:port, never ::1:port', async () => {
    const dead = await closedPort('::1');
    const config = join(dir, 'serve.yaml');
    await writeFile(
      config,
      `
mode: enforce
allowRanges: [127.0.0.0/8, "::1/128"]
roles: { any: { allow: [ { cidr: "::1/128", ports: [${dead}] } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(join(dir, 'flows.jsonl'))} }
`,
    );
    const s = await spawnServe(config);
    child = s.child;

    const tunnel = await open(s.http.port);
    tunnel.write(`CONNECT [::1]:${dead} HTTP/1.1\r\nHost: [::1]:${dead}\r\n\r\n`);
    expect((await readToEnd(tunnel)).data.toString('latin1')).toMatch(/^HTTP\/1\.1 502 /);

    const plain = await open(s.http.port);
    plain.write(`GET http://[::1]:${dead}/ HTTP/1.1\r\nHost: [::1]:${dead}\r\nConnection: close\r\n\r\n`);
    expect((await readToEnd(plain)).data.toString('latin1')).toMatch(/^HTTP\/1\.1 502 /);

    const socks = await open(Number(s.socks.slice(s.socks.lastIndexOf(':') + 1)));
    socks.write(Buffer.from([5, 1, 0]));
    expect([...(await readBytes(socks, 2))]).toEqual([5, 0]);
    const addr = Buffer.alloc(16);
    addr[15] = 1;
    socks.write(Buffer.concat([Buffer.from([5, 1, 0, 4]), addr, Buffer.from([dead >> 8, dead & 0xff])]));
    expect((await readBytes(socks, 2))[1]).toBe(5); // connection refused
    socks.destroy();

    await until('the three lines', () => loggedLines(s, 'CONNECT dial failed').length + loggedLines(s, 'origin request failed').length + loggedLines(s, 'socks5 refused').length >= 3, 10_000);
    const texts = [loggedLines(s, 'CONNECT dial failed')[0]?.['err'], loggedLines(s, 'origin request failed')[0]?.['err'], loggedLines(s, 'socks5 refused')[0]?.['reason']].map(String);
    for (const text of texts) {
      expect(text).toContain(`ECONNREFUSED [::1]:${dead}`);
      // Every endpoint written is bracketed: no `::1:port` outside brackets.
      expect(text.replace(/\[::1\]/g, '')).not.toContain('::1');
    }
  }, 30_000);
});
