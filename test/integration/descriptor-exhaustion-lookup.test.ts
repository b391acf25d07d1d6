/**
 * A destination NAME looked up while `egressgate serve` has no descriptor left (`ulimit -n`):
 * getaddrinfo can open neither /etc/hosts nor a socket to the name servers and answers "not found"
 * (ENOTFOUND). That is the gateway's own failure: 503 `out-of-descriptors` (SOCKS5 0x01), recorded
 * block / `out-of-descriptors`, not remembered as a failed name, no failed connect for the scan
 * detector. Before, with an allowlist by address the name matched nothing: 403 `not-allowlisted`
 * with `X-Egress-Verdict: block` (a policy refusal, counted by the scan detector), and the failure
 * stayed in the negative cache, so the same CONNECT was refused 403 after the descriptors came back.
 */
import { lookup } from 'node:dns/promises';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import type { Served } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { readUntil } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';
import { connectFrom, fillDescriptors, NOFILE, openDescriptors, socksPort, serveUnderLimit } from '../helpers/descriptor-limit.ts';

const TOKEN = 'descriptor-exhaustion-lookup-token-0123';
/** A client of its own, so its records are told apart. */
const VICTIM = '127.0.0.2';
/** One more than the scan detector's default failedPortsOnOneHost (15). */
const PORTS = 16;

const fx = serveEchoFixture('egw-descriptors-lookup-');
const held: Socket[] = [];
/** `localhost` resolves to 127.0.0.1 through the OS resolver (/etc/hosts), as the gateway's lookups do. */
const hasLocalhost = skipNotice(
  await lookup('localhost', { all: true }).then(
    (a) => a.some((x) => x.address === '127.0.0.1'),
    () => false,
  ),
  'descriptor-exhaustion-lookup',
  'localhost does not resolve to 127.0.0.1 through the OS resolver (/etc/hosts)',
);

afterEach(() => {
  for (const s of held) s.destroy();
  held.length = 0;
});

/** A CONNECT from VICTIM to localhost:`port`; the whole answer until the gateway closes ('' = closed unanswered). */
async function connectAnswer(s: Served, port: number): Promise<string> {
  const c = await connectFrom(s.http.port, VICTIM);
  c.write(`CONNECT localhost:${port} HTTP/1.1\r\nHost: localhost:${port}\r\n\r\n`);
  return (await readToEnd(c)).data.toString('latin1');
}

/** Retries (bounded) while the connection is closed unanswered (libuv's accept of a full process closes it). */
async function answered(ask: () => Promise<string>): Promise<string> {
  for (let i = 0; i < 50; i++) {
    const a = await ask().catch(() => '');
    if (a !== '') return a;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('never answered');
}

async function alerts(s: Served): Promise<string[]> {
  const r = await fetch(`http://${s.admin}/v1/alerts`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(r.status).toBe(200);
  return ((await r.json()) as { alerts: Array<{ detector: string }> }).alerts.map((a) => a.detector);
}

describe.skipIf(!hasLocalhost)('a name looked up with every descriptor taken', () => {
  it('is 503 out-of-descriptors (SOCKS5 0x01), recorded so, not cached as a failed name, not a scan; served at once when descriptors are back', async () => {
    const flowLog = join(fx.dir, 'flows.jsonl');
    // Allowed by address only (loopbackServeConfig: cidr 127.0.0.0/8): a name is judged by what it resolves to.
    const s = await serveUnderLimit(fx.dir, flowLog, TOKEN, 'detection: { sampleIntervalMs: 50 }\n');
    fx.killAfterTest(s);

    const pid = s.child.pid as number;
    await fillDescriptors(s, held, NOFILE - 1);
    expect(openDescriptors(pid)).toBe(NOFILE - 1);

    // Ports after the echo's, none of them the gateway's own (a CONNECT to one is refused 403 self-dial).
    const own = new Set([s.http.port, socksPort(s), Number(s.admin.slice(s.admin.lastIndexOf(':') + 1))]);
    const ports: number[] = [fx.echo.port];
    for (let p = fx.echo.port + 1; ports.length < PORTS; p++) if (!own.has(p)) ports.push(p);
    for (const port of ports) {
      const a = await answered(() => connectAnswer(s, port));
      expect(a.split('\r\n')[0]).toBe('HTTP/1.1 503 Service Unavailable');
      expect(a.toLowerCase()).not.toContain('x-egress-verdict');
      expect(JSON.parse(a.slice(a.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: 'gateway out of file descriptors', reason: 'out-of-descriptors' });
    }
    const name = Buffer.from('localhost');
    const socksReply = await answered(async () => {
      const c = await connectFrom(socksPort(s), VICTIM);
      c.write(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3, name.length]), name, Buffer.from([fx.echo.port >> 8, fx.echo.port & 255])]));
      return (await readToEnd(c)).data.toString('hex');
    });
    expect(socksReply.slice(0, 8)).toBe('05000501'); // no-auth, then general failure (not 0x02 refused by ruleset)
    // Logged under the errno the lookup's probe saw: the process's own limit (ENFILE is the system's).
    const logged = s.stderr().split('\n').filter((l) => l.includes('"code":"EGW_OUT_OF_DESCRIPTORS"'));
    expect(logged.length).toBeGreaterThanOrEqual(1);
    for (const l of logged) expect(JSON.parse(l)).toMatchObject({ errno: 'EMFILE' });

    // The holders go: the same name is looked up again (no failure remembered) and the tunnel made.
    for (const c of held) c.destroy();
    held.length = 0;
    let head = '';
    let tunnel: Socket | null = null;
    for (let i = 0; i < 50 && !head.startsWith('HTTP/1.1 200 '); i++) {
      tunnel?.destroy();
      tunnel = await connectFrom(s.http.port, VICTIM).catch(() => null);
      if (tunnel === null) continue;
      tunnel.write(`CONNECT localhost:${fx.echo.port} HTTP/1.1\r\nHost: localhost:${fx.echo.port}\r\n\r\n`);
      head = (await readUntil(tunnel, '\r\n\r\n').catch(() => Buffer.alloc(0))).toString('latin1');
    }
    expect(head.split('\r\n')[0]).toBe('HTTP/1.1 200 Connection Established');
    (tunnel as Socket).write('back again');
    await readUntil(tunnel as Socket, 'back again');
    (tunnel as Socket).destroy();
    // Several detection sweeps (50 ms each) later: the failures at the limit were no port scan.
    for (let i = 0; i < 5; i++) {
      expect(await alerts(s)).not.toContain('an0081.scan');
      await new Promise((r) => setTimeout(r, 100));
    }

    s.child.kill('SIGTERM');
    await once(s.child, 'exit');
    const records = parseRecords(await readFile(flowLog, 'utf8')).filter((r) => r.client.ip === VICTIM);
    const refused = records.filter((r) => r.closeReason === 'out-of-descriptors');
    expect(refused.map((r) => r.protocol).sort()).toEqual([...Array(PORTS).fill('connect'), 'socks5']);
    for (const r of refused) expect(r).toMatchObject({ verdict: 'block', enforced: true, bytesOut: 0, bytesIn: 0, destination: { host: 'localhost', ip: null } });
    expect(records.filter((r) => r.closeReason === 'not-allowlisted' || r.closeReason === 'dns-failed')).toEqual([]);
    expect(records.filter((r) => r.closeReason === 'closed' && r.bytesOut === 10 && r.bytesIn === 10)).toHaveLength(1);
  });
});
